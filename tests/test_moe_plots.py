"""The MoE study's p-sweep plot: drawn from study JSON alone, every draw kept."""

from __future__ import annotations

from pathlib import Path

from fedpress.moe.plots import plot_p_sweep


def cond(layer: int, mode: str, p: float, acc: float) -> dict:
    return {"selector": "layer", "layer": layer, "mode": mode, "p": p, "acc_format": acc, "acc_content": acc}


def study(conditions: list[dict]) -> dict:
    return {"baseline": {"acc_format": 0.6, "acc_content": 0.6, "per_task": {"add1": {"n_items": 38}}},
            "groups": {"0": "shallow", "14": "middle"}, "conditions": conditions}


def test_p_sweep_plots_layers_swept_over_p_and_merges_repeated_draws(tmp_path: Path) -> None:
    res = study([cond(0, "gauss", 0.8, 0.4), cond(14, "codec", 0.8, 0.5)])
    assert plot_p_sweep(res, tmp_path) == []  # no layer at two strengths yet
    repeats = [study([cond(14, "codec", 0.1, 0.6), cond(14, "codec", 0.8, 0.55)])]  # a second p, a second draw
    paths = plot_p_sweep(res, tmp_path, repeats)
    assert paths == [tmp_path / "study_p_sweep.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_p_sweep_draws_nothing_without_a_layer_at_two_strengths(tmp_path: Path) -> None:
    res = study([cond(0, "gauss", 0.8, 0.4), cond(0, "codec", 0.8, 0.5),
                 {**cond(14, "gauss", 0.1, 0.6), "selector": "top1"}, {**cond(14, "gauss", 0.8, 0.4), "selector": "top1"}])
    assert plot_p_sweep(res, tmp_path) == []
    assert not (tmp_path / "study_p_sweep.png").exists()
