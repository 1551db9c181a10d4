"""`fedpress moe`: bad input gets one clear line before any weights are loaded."""

from __future__ import annotations

import pytest
import transformers

from fedpress.cli import main


@pytest.fixture()
def moe_dir(tmp_path):
    """A directory with only a Qwen2-MoE config.json: passing checks must not need weights."""
    cfg = transformers.Qwen2MoeConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8,
                                      num_hidden_layers=2, num_attention_heads=4)
    cfg.save_pretrained(tmp_path)
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["moe", *argv])
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("args,message", [
    (["offload.budget=1B"], "smaller than one decoded expert"),
    (["offload.budget=5%"], "smaller than one expert"),
    (["offload.codec=nope"], "unknown codec 'nope'"),
    (["offload.codec=fixedrate:eb=0.000001"], "cannot hold"),
    (["offload.codec=fixedrate:eb=0.01,bits=3"], "cannot hold"),
    (["offload.policy=mru"], "offload.policy"),
    (["offload.nope=1"], "unknown key"),
])
def test_bad_input_is_one_line(capsys, moe_dir, args, message) -> None:
    rc, err = run(capsys, "generate", f"model={moe_dir}", *args)
    assert rc == 1 and message in err and len(err.splitlines()) == 1, err


def test_dense_model_is_refused(capsys, tmp_path) -> None:
    transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    rc, err = run(capsys, "generate", f"model={tmp_path}")
    assert rc == 1 and "not a mixture-of-experts" in err and len(err.splitlines()) == 1


def test_valid_input_passes_the_checks_without_weights(moe_dir) -> None:
    from fedpress.moe.checks import preflight

    info = preflight(moe_dir, {"default": "fixedrate:eb=0.01", "deep": "raw"}, "25%")
    assert info == {"expert_bytes": 3 * 64 * 32 * 4, "total_experts": 16, "slots": 4}
