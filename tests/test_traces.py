"""Trace recorder (through the engine) on a tiny digits run: file layout, delta sign, server
step, uplink hook, accuracy checked against an independent evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedpress.data import load_dataset
from fedpress.fl.client import LocalTrainer, TrainSpec, derive_seed
from fedpress.models import build_model
from fedpress.traces import (
    TraceConfig,
    client_partitions,
    load_delta,
    main_record,
    record_traces,
    trace_file,
)

CFG = TraceConfig(dataset="digits", model="cnn", clients=2, rounds=2, samples_per_client=64,
                  batch_size=32, test_samples=100, threads=1, seed=7)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trace")
    return out, record_traces(CFG, out, progress=False)


def _float_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(CFG.seed)
    return {k: v for k, v in build_model("cnn", 1, 10, 8).state_dict().items() if v.is_floating_point()}


def test_layout_names_shapes_dtypes(run: tuple[Path, dict]) -> None:
    out, trace = run
    ref = _float_state()
    for c in range(2):
        for r in (1, 2):
            path = out / f"client_{c}" / f"round_{r}.safetensors"
            assert path == trace_file(out, c, r) and path.is_file()
            delta = load_delta(out, c, r)
            assert set(delta) == set(ref)  # float state only: integer buffers stay local
            for key, t in ref.items():
                assert delta[key].shape == tuple(t.shape) and delta[key].dtype == np.float32, key
    assert not (out / "client_2").exists() and not trace_file(out, 0, 3).exists()
    assert (out / "events.jsonl").is_file()  # recorded by the engine's own event log


def test_trace_json_accuracy_matches_an_independent_evaluation(run: tuple[Path, dict]) -> None:
    out, trace = run
    saved = json.loads((out / "trace.json").read_text())
    assert saved == json.loads(json.dumps(trace))
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert saved["final_accuracy"] == saved["rounds"][-1]["test_accuracy"]
    assert saved["config"]["dataset"] == "digits" and saved["num_parameters"] > 50_000
    assert saved["client_samples"] == [64, 64] and saved["dataset"]["test_samples"] == 100
    # evaluate final.safetensors by hand: plain torch, first 100 test images
    test = load_dataset("digits", "test", limit=100)
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 8)
    final = load_file(str(out / "final.safetensors"))
    state = model.state_dict()
    state.update({k: torch.from_numpy(v) for k, v in final.items()})
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(test.x.copy()))
    y = torch.from_numpy(test.y.copy())
    acc = int((logits.argmax(1) == y).sum()) / len(y)
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert saved["final_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert saved["rounds"][-1]["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_delta_is_before_minus_after(run: tuple[Path, dict]) -> None:
    """Replay client 1 of round 1 with the local trainer and compare bit for bit."""
    out, _ = run
    train = load_dataset("digits")
    idx = client_partitions(CFG, train.y)[1]
    initial = load_file(str(out / "initial.safetensors"))
    ref = _float_state()
    assert all(np.array_equal(initial[k], v.numpy()) for k, v in ref.items())
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(CFG.seed)
        spec = TrainSpec(CFG.lr, CFG.momentum, CFG.weight_decay, CFG.batch_size, CFG.local_epochs)
        trainer = LocalTrainer(build_model("cnn", 1, 10, 8), torch.from_numpy(train.x.copy()),
                               torch.from_numpy(train.y.copy()), spec)
        delta, _, _ = trainer.train(initial, idx, derive_seed(CFG.seed, 1, 0))
        after = {k: v.detach().numpy().copy() for k, v in trainer.model.state_dict().items()}
    finally:
        torch.set_num_threads(old)
    saved = load_delta(out, 1, 1)
    key = "features.2.0.weight"  # the 5x5 conv
    np.testing.assert_array_equal(saved[key], initial[key] - after[key])
    assert all(np.array_equal(saved[k], -v) for k, v in delta.items())


def test_server_applies_mean_of_deltas(run: tuple[Path, dict]) -> None:
    out, _ = run
    w = load_file(str(out / "initial.safetensors"))
    final = load_file(str(out / "final.safetensors"))
    for key in w:
        expect = w[key].astype(np.float64)
        for r in (1, 2):
            expect = expect - (load_delta(out, 0, r)[key].astype(np.float64)
                               + load_delta(out, 1, r)[key]) / 2
        np.testing.assert_allclose(final[key], expect, atol=1e-5, err_msg=key)


def test_uplink_called_and_used(tmp_path: Path) -> None:
    calls = []

    def zero_uplink(client: int, rnd: int, delta: dict[str, np.ndarray]) -> dict:
        calls.append((client, rnd))
        return {k: np.zeros_like(v) for k, v in delta.items()}

    cfg = replace(CFG, rounds=2, samples_per_client=32)
    record_traces(cfg, tmp_path, uplink=zero_uplink, progress=False)
    assert sorted(calls) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    initial = load_file(str(tmp_path / "initial.safetensors"))
    final = load_file(str(tmp_path / "final.safetensors"))
    assert all(np.array_equal(initial[k], final[k]) for k in initial)  # server saw zeros
    assert np.abs(load_delta(tmp_path, 0, 2)["head.weight"]).max() > 0  # raw delta saved

    with pytest.raises(ValueError, match="same keys"):
        record_traces(cfg, tmp_path / "bad", uplink=lambda c, r, d: {}, progress=False)


def test_config_validation(tmp_path: Path) -> None:
    for bad in ({"dataset": "imagenet"}, {"model": "vgg"}, {"partition": "x"},
                {"clients": 0}, {"samples_per_client": 0}, {"lr": 0.0}, {"rounds": 0}):
        with pytest.raises(ValueError):
            record_traces(replace(CFG, **bad), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # validated before writing anything


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_record(["--out", str(tmp_path / "x"), "--dataset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedpress record-traces: error:") and "\n" not in err
    assert main_record(["--out", str(tmp_path), "--dataset", "mnist", "--root",
                        str(tmp_path / "empty")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main_record(["--help"]) == 0
    assert main_record(["--dataset", "digits"]) == 2  # --out missing: argparse usage error
    capsys.readouterr()
    assert "default: 500" in _help_text() and TraceConfig().samples_per_client == 500
    argv = ["--out", str(tmp_path / "ok"), "--dataset", "digits", "--model", "mlp", "--clients", "2", "--rounds",
            "1", "--samples-per-client", "32", "--test-samples", "50", "--no-progress",
            "--partition", "dirichlet", "--alpha", "0.3"]
    assert main_record(argv) == 0
    trace = json.loads((tmp_path / "ok" / "trace.json").read_text())
    assert trace["config"]["partition"] == "dirichlet" and trace["config"]["alpha"] == 0.3
    assert "final test accuracy" in capsys.readouterr().out


def _help_text() -> str:
    from fedpress.traces import _parser

    return _parser().format_help()
