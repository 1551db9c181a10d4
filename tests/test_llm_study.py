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
    assert cells[:4] == ["length", "0.1", "2", "2.000"] and cells[6] == "4.000"


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("reasoning_gym")
    path = run_study(CFG, ["study.skews=[iid,length]", "study.alphas=[0.1]", "eval.local_task=false",
                           f"run.out_dir={tmp_path}"], out_dir=tmp_path / "s", progress=False)
    res = json.loads(path.read_text())
    assert res["runs_done"] == 2 and (tmp_path / "s" / "study.png").is_file()
