"""Expert-activation statistics per layer: counts, utilisation, entropy, Gini.

Why: the study perturbs "the most-activated expert" and compares layers; how unevenly a layer
uses its experts (entropy, Gini) is part of the explanation the paper gives for sensitivity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .layout import MoeLayer


class RouterRecorder:
    """Counts, per MoE layer, how often the router picks each expert (forward hooks)."""

    def __init__(self, layers: list[MoeLayer]) -> None:
        self.layers = layers
        self.counts = {x.index: np.zeros(x.num_experts, dtype=np.int64) for x in layers}
        self._hooks: list[Any] = []

    def __enter__(self) -> RouterRecorder:
        for x in self.layers:
            self._hooks.append(x.router.register_forward_hook(self._hook(x.index)))
        return self

    def _hook(self, index: int):
        def fn(module: Any, args: Any, out: Any) -> None:
            idx = next(t for t in (out if isinstance(out, tuple) else (out,)) if not torch.is_floating_point(t))
            np.add.at(self.counts[index], idx.reshape(-1).cpu().numpy(), 1)
        return fn

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal, ->1: one takes all)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def entropy_bits(counts: np.ndarray) -> float:
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum() if p.sum() else p[:0]
    return float(-(p * np.log2(p)).sum())


def layer_stats(counts: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """Per layer: counts, utilisation (share of experts ever used), entropy (bits), Gini, top expert."""
    out = []
    for layer, c in counts.items():
        out.append({
            "layer": layer, "counts": c.tolist(), "utilisation": float((c > 0).mean()),
            "entropy_bits": entropy_bits(c), "max_entropy_bits": float(np.log2(len(c))),
            "gini": gini(c), "top_expert": int(np.argmax(c)),
        })
    return out
