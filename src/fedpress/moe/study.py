"""The error-sensitivity study: perturb chosen experts, score the model, per layer group.

Why on top of the runtime's codec path: the paper simulated compression with Gaussian noise;
here each condition is run with that noise, with uniform noise inside the same bound, and with
a real codec round trip at that bound (``perturb.py``), on the same items, so the figures say
whether the noise model predicts what real compressed experts do.

Conditions run in priority order and the JSON is rewritten after each one, so a run stopped
by its time limit keeps everything it finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import StudySection
from .layout import MoeLayer, find_moe_layers, layer_group
from .perturb import perturbed, select
from .stats import RouterRecorder, layer_stats


def study_layers(layers: list[MoeLayer], chosen: list[int] | None) -> list[int]:
    """Representative MoE layers: first, quarter, middle, three quarters, last (or ``chosen``)."""
    idx = [x.index for x in layers]
    if chosen:
        bad = [i for i in chosen if i not in idx]
        if bad:
            raise ValueError(f"study.layers {bad} are not MoE layers (those are {idx[0]}..{idx[-1]})")
        return list(chosen)
    n = len(idx)
    return sorted({idx[round(f * (n - 1))] for f in (0, 0.25, 0.5, 0.75, 1)})


def plan_conditions(cfg: StudySection, layers: list[MoeLayer]) -> list[dict[str, Any]]:
    """The conditions, most informative first (the paper's headline: whole layers at the top p)."""
    if cfg.conditions:
        return [parse_condition(c) for c in cfg.conditions]
    chosen = study_layers(layers, cfg.layers)
    top = max(cfg.ps)
    out: list[dict[str, Any]] = []

    def add(selector: str, mode: str, p: float, layer: int | None = None, group: str | None = None):
        if selector in cfg.selectors and mode in cfg.modes:
            c = {"selector": selector, "mode": mode, "p": p, "layer": layer, "group": group}
            if c not in out:
                out.append(c)

    for mode in ("gauss", "codec", "uniform"):
        for li in chosen:
            add("layer", mode, top, layer=li)
    for li in chosen:
        add("top1", "gauss", top, layer=li)
    for g in ("shallow", "middle", "deep"):
        add("group_top1", "gauss", top, group=g)
    mid = chosen[len(chosen) // 2]
    for p in sorted(cfg.ps):
        if p != top:
            for mode in ("gauss", "codec"):
                add("layer", mode, p, layer=mid)
    for li in (chosen[0], mid, chosen[-1]):
        add("topk", "gauss", top, layer=li)
        add("one", "gauss", top, layer=li)
    for li in chosen:
        add("top1", "codec", top, layer=li)
    for g in ("shallow", "middle", "deep"):
        add("group_top1", "codec", top, group=g)
    return out


def parse_condition(text: str) -> dict[str, Any]:
    """``selector:layer-or-group:mode:p`` -> a condition dict (``ValueError`` if malformed)."""
    try:
        selector, where, mode, p = text.split(":")
        group = where if where in ("shallow", "middle", "deep") else None
        return {"selector": selector, "mode": mode, "p": float(p),
                "layer": None if group else int(where), "group": group}
    except ValueError:
        raise ValueError(f"study condition {text!r} is not selector:layer-or-group:mode:p") from None


def run_study(model: Any, tok: Any, cfg: StudySection, evaluate: Callable[[Any], dict[str, float]],
              out_json: Path, meta: dict[str, Any], max_minutes: float | None = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Baseline + activation statistics, then every planned condition (until ``max_minutes``)."""
    layers = find_moe_layers(model)
    t0 = time.perf_counter()
    with RouterRecorder(layers) as rec:
        base = evaluate(model)
    result: dict[str, Any] = {
        **meta, "baseline": base, "layer_stats": layer_stats(rec.counts),
        "groups": {x.index: layer_group(p, len(layers)) for p, x in enumerate(layers)},
        "conditions": [], "planned": plan_conditions(cfg, layers),
    }
    progress(f"baseline: format {base['acc_format']:.2f} content {base['acc_content']:.2f} "
             f"({time.perf_counter() - t0:.0f} s)")
    _write(out_json, result)
    for i, cond in enumerate(result["planned"]):
        if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            progress(f"time limit: {len(result['planned']) - i} condition(s) not run")
            break
        keys = select(cond["selector"], layers, rec.counts, cond["layer"], cond["group"], cfg.topk)
        t1 = time.perf_counter()
        with perturbed(layers, keys, cond["mode"], cond["p"], seed=cfg.seed + i, codec=cfg.codec) as info:
            score = evaluate(model)
        row = {**cond, **info, **score, "seconds": time.perf_counter() - t1}
        result["conditions"].append(row)
        _write(out_json, result)
        where = cond["layer"] if cond["layer"] is not None else cond["group"]
        progress(f"[{i + 1}/{len(result['planned'])}] {cond['selector']} {where} {cond['mode']} "
                 f"p={cond['p']}: format {score['acc_format']:.2f} content {score['acc_content']:.2f}")
    result["seconds"] = time.perf_counter() - t0
    _write(out_json, result)
    return result


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
