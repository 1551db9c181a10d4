"""The study grid and table (cheap, default) and a tiny end-to-end study (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpress.llm.config import load_llm_config
from fedpress.llm.study import run_study, study_grid, study_table

CFG = Path(__file__).resolve().parents[1] / "configs" / "llm_tiny.yaml"


def test_grid_runs_iid_once_per_seed():
    cfg = load_llm_config(CFG, ["study.skews=[iid,length,quality]", "study.alphas=[0.1,10]", "study.seeds=[0,1]"])
    grid = study_grid(cfg)
    assert len(grid) == 2 * (1 + 2 + 2)
    assert sum(1 for g in grid if g[0] == "iid") == 2


def test_table_averages_seeds():
    rows = [{"skew": "length", "alpha": 0.1, "seed": s, "global_loss": v, "local_loss": 2 * v}
            for s, v in ((0, 1.0), (1, 3.0))]
    table = study_table(rows)
    line = next(ln for ln in table.splitlines() if ln.startswith("| length"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["length", "0.1", "2", "2.000"] and cells[7] == "4.000"


def test_table_shows_gains_over_the_base_model_on_the_same_text():
    rows = [{"skew": "quality", "alpha": 0.1, "seed": 0, "global_loss": 3.0, "base_loss": 3.5,
             "local_loss": 4.0, "base_local_loss": 4.25}]
    head, _, line = study_table(rows).splitlines()[:3]
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = dict(zip(cols, (c.strip() for c in line.strip("|").split("|")), strict=True))
    assert cells["global_gain"] == "0.500" and cells["local_gain"] == "0.250"


def test_local_base_loss_is_the_base_models_loss_on_each_clients_heldout(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import numpy as np
    import torch

    from fedpress.llm.simulation import prepare_llm
    from fedpress.llm.study import local_base_loss

    cfg = load_llm_config(CFG, ["data.skew=length", "data.alpha=0.1"])
    inp = prepare_llm(cfg)
    got = local_base_loss(cfg, inp)
    # independent: peft's own switch-off of the adapter, one sequence at a time, plain log-softmax
    per_client = []
    with inp.model.disable_adapter(), torch.no_grad():
        for held in inp.heldout:
            if not len(held):
                continue
            total, count = 0.0, 0
            for i in held:
                ids = torch.as_tensor(np.asarray(inp.corpus.ids[i], dtype=np.int64))[None]
                logp = torch.log_softmax(inp.model(input_ids=ids).logits.float()[0, :-1], -1)
                start = max(int(inp.corpus.loss_start[i]), 1)
                tgt = ids[0, start:]
                total -= float(logp[start - 1 :].gather(1, tgt[:, None]).sum())
                count += len(tgt)
            per_client.append(total / count)
    assert per_client and got == pytest.approx(float(np.mean(per_client)), rel=1e-4)


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("reasoning_gym")
    path = run_study(CFG, ["study.skews=[iid,length]", "study.alphas=[0.1]", "eval.local_task=false",
                           f"run.out_dir={tmp_path}"], out_dir=tmp_path / "s", progress=False)
    res = json.loads(path.read_text())
    assert res["runs_done"] == 2 and (tmp_path / "s" / "study.png").is_file()


def _part(tmp_path: Path, name: str, seed: int, overrides: list[str]) -> Path:
    cfg = load_llm_config(CFG, overrides)
    rows = [{"skew": "iid", "alpha": 0.1, "seed": seed, "global_loss": 3.0 + seed, "base_loss": 4.0,
             "local_loss": 5.0, "base_local_loss": 5.5, "wall_s": 1.0}]
    path = tmp_path / name / "study.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"command": f"part {seed}", "wall_s": 1.0, "runs_planned": 1, "machine": {},
                                "config": cfg.model_dump(mode="json"), "rows": rows}))
    return path


def test_merge_joins_parts_of_one_config_and_refuses_another(tmp_path):
    from fedpress.llm.study import merge_studies

    a = _part(tmp_path, "a", 0, ["study.seeds=[0]"])
    b = _part(tmp_path, "b", 1, ["study.seeds=[1]"])
    out = merge_studies(CFG, [], [a, b], tmp_path / "merged")
    res = json.loads(out.read_text())
    assert [r["seed"] for r in res["rows"]] == [0, 1] and res["runs_planned"] == 2
    line = next(ln for ln in (tmp_path / "merged" / "study.md").read_text().splitlines() if ln.startswith("| iid"))
    assert "| 2 | 3.500 | 0.500 |" in line  # two seeds: mean loss 3.5, gain 0.5 over the base
    other = _part(tmp_path, "c", 2, ["train.lr=0.5"])
    with pytest.raises(ValueError, match="another config.*train"):
        merge_studies(CFG, [], [a, other], tmp_path / "bad")
