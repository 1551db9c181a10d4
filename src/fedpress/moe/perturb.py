"""Perturb chosen experts of a resident MoE: the paper's noise, bounded noise, a real codec.

Modes, for a relative strength ``p`` and each expert tensor ``theta``:

* ``gauss``: ``theta + N(0, (p * mean|theta|)^2)`` (the paper's simulated compression error);
* ``uniform``: ``theta + U(-b, b)`` with the bound ``b = p * mean|theta|``;
* ``codec``: a real round trip through an error-bounded codec at the absolute bound ``b``
  (the same payload path as the offloading runtime: ``encode_expert`` / ``decode_expert``).

Selectors pick (layer, expert) pairs from activation counts (``stats.RouterRecorder``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .layout import MoeLayer, layer_group
from .weight_codec import CodecSpec, decode_expert, encode_expert

MODES = ("gauss", "uniform", "codec")


def select(selector: str, layers: list[MoeLayer], counts: dict[int, np.ndarray],
           layer: int | None = None, group: str | None = None, k: int = 4) -> list[tuple[int, int]]:
    """Experts picked by ``selector``.

    ``one`` (the least-activated used expert of ``layer``: one ordinary expert), ``top1`` (the
    most-activated of ``layer``), ``topk`` (the ``k`` most-activated of ``layer``), ``layer``
    (all experts of ``layer``), ``group_top1`` (the most-activated expert of every layer of
    ``group``: shallow/middle/deep).
    """
    by_index = {x.index: x for x in layers}
    if selector == "group_top1":
        if group not in ("shallow", "middle", "deep"):
            raise ValueError(f"group_top1 needs group shallow|middle|deep, got {group!r}")
        return [(x.index, int(np.argmax(counts[x.index]))) for p, x in enumerate(layers)
                if layer_group(p, len(layers)) == group]
    if layer not in by_index:
        raise ValueError(f"layer {layer} is not an MoE layer")
    c = counts[layer]
    order = np.argsort(-c, kind="stable")
    if selector == "one":
        used = [int(e) for e in order if c[e] > 0]
        return [(layer, used[-1] if used else int(order[-1]))]
    if selector == "top1":
        return [(layer, int(order[0]))]
    if selector == "topk":
        return [(layer, int(e)) for e in order[:k]]
    if selector == "layer":
        return [(layer, e) for e in range(by_index[layer].num_experts)]
    raise ValueError(f"unknown selector {selector!r}; choose one, top1, topk, layer, group_top1")


def perturbed_tensors(tensors: dict[str, np.ndarray], mode: str, p: float, rng: np.random.Generator,
                      codec: str = "fixedrate") -> dict[str, np.ndarray]:
    """The perturbed copy of one expert's tensors (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown perturbation mode {mode!r}; choose {', '.join(MODES)}")
    out = {}
    if mode == "codec":
        spec = CodecSpec.parse(codec)
        for name, x in tensors.items():
            b = float(p * np.abs(x).mean())
            s = CodecSpec(spec.name, {**dict(spec.params), "mode": "abs", "eb": b})
            dec, _ = decode_expert(encode_expert({name: x}, s))
            out[name] = dec[name].numpy()
        return out
    for name, x in tensors.items():
        b = float(p * np.abs(x).mean())
        noise = rng.normal(0, b, x.shape) if mode == "gauss" else rng.uniform(-b, b, x.shape)
        out[name] = (x + noise).astype(np.float32)
    return out


@contextmanager
def perturbed(layers: list[MoeLayer], keys: list[tuple[int, int]], mode: str, p: float,
              seed: int = 0, codec: str = "fixedrate") -> Iterator[dict[str, Any]]:
    """Apply a perturbation in place for the ``with`` block, then restore the exact weights."""
    by_index = {x.index: x for x in layers}
    rng = np.random.default_rng(seed)
    saved = {}
    info: dict[str, Any] = {"experts": len(keys), "max_abs_err": 0.0, "rel_l2": 0.0}
    num = den = 0.0
    try:
        for layer, e in keys:
            orig = by_index[layer].expert_tensors(e)
            saved[(layer, e)] = orig
            new = perturbed_tensors(orig, mode, p, rng, codec)
            for k, x in orig.items():
                d = new[k].astype(np.float64) - x
                info["max_abs_err"] = max(info["max_abs_err"], float(np.abs(d).max()))
                num += float((d**2).sum())
                den += float((x.astype(np.float64) ** 2).sum())
            by_index[layer].set_expert(e, new)
        info["rel_l2"] = (num / den) ** 0.5 if den else 0.0
        yield info
    finally:
        for (layer, e), orig in saved.items():
            by_index[layer].set_expert(e, orig)
