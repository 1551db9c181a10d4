"""Adapter-aware aggregation around any engine strategy, with the per-round aggregation error.

The engine's strategies average what travels. For LoRA that is the ``fedavg`` rule (A and B
averaged separately) or, with A frozen, the exact ``frozen_a`` rule. :class:`AdapterStrategy`
wraps a strategy to (1) log ``||mean_i(s B_i A_i) - s B A||_F`` (``s`` = LoRA scale) for every
published version, over the updates accepted since the previous one, and (2) for the ``svd``
and ``stack`` rules replace the new global factors by the truncated SVD of the exact mean
product (stacking is exact; the global adapter keeps the configured rank, so what is published
is the best rank-r factorisation of the stack). ``svd``/``stack`` need synchronous rounds
(``fedavg``); for asynchronous rules the logged error is over the updates of one buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedpress.fl.context import ServerContext
from fedpress.fl.strategies import Strategy
from fedpress.fl.types import Tensors, Update, add_delta

from .aggregation import product_error, svd_refactor
from .lora import module_pairs


class AdapterStrategy(Strategy):
    """Delegates scheduling to ``inner``; adds the product error and the svd/stack rules."""

    needs_base_model = True

    def __init__(self, inner: Strategy, rule: str, scale: float, rank: int,
                 fixed: Tensors | None = None) -> None:
        if rule in ("svd", "stack") and inner.name != "fedavg":
            raise ValueError(f"adapter aggregation {rule!r} needs strategy fedavg, got {inner.name!r}")
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.rule = rule
        self.scale = scale
        self.rank = rank
        self.fixed = dict(fixed or {})  # frozen A factors (not in the travelling tensors)
        self._buf: list[tuple[Tensors, float]] = []
        self.last: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> AdapterStrategy:
        raise TypeError("AdapterStrategy wraps a built strategy; see fedpress.llm.simulation")

    def select(self, ctx: ServerContext, arrived: int | None) -> list[int]:
        return self.inner.select(ctx, arrived)

    def ready(self, ctx: ServerContext) -> bool:
        return self.inner.ready(ctx)

    def deadline(self, ctx: ServerContext) -> float | None:
        return self.inner.deadline(ctx)

    def on_reject(self, client_id: int, ctx: ServerContext) -> None:
        self.inner.on_reject(client_id, ctx)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "adapter_aggregation": self.rule, "lora_rank": self.rank}

    def state_dict(self) -> dict[str, Any]:
        """The inner rule's state plus the buffered absolute adapters and the error history
        (so a server restarted from a checkpoint keeps both)."""
        return {"inner": self.inner.state_dict(), "buf": [[t, w] for t, w in self._buf],
                "last": dict(self.last), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.inner.load_state_dict(sd["inner"])
        self._buf = [(dict(t), float(w)) for t, w in sd["buf"]]
        self.last = dict(sd["last"])
        self.history = [dict(h) for h in sd["history"]]

    def accept(self, update: Update, ctx: ServerContext) -> bool:
        ok = self.inner.accept(update, ctx)
        if ok:
            absolute = add_delta(ctx.versions.get(update.base_version), update.tensors)
            self._buf.append(({**self.fixed, **absolute}, float(update.num_samples)))
        return ok

    def _factors(self, tensors: Tensors, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        return tensors[a], self.scale * np.asarray(tensors[b], np.float64)

    def apply(self, ctx: ServerContext) -> Tensors:
        new = self.inner.apply(ctx)
        buf, self._buf = self._buf, []
        if not buf:
            return new
        weights = [w for _, w in buf]
        merged = {**self.fixed, **new}
        err2 = ref2 = 0.0
        for _, a, b in module_pairs(list(merged)):
            As = [t[a] for t, _ in buf]
            Bs = [self.scale * np.asarray(t[b], np.float64) for t, _ in buf]
            if self.rule in ("svd", "stack"):
                A2, B2 = svd_refactor(As, Bs, weights, self.rank)
                new[a] = A2.astype(new[a].dtype)
                new[b] = (B2 / self.scale).astype(new[b].dtype)
                merged[a], merged[b] = new[a], new[b]
            A, B = self._factors(merged, a, b)
            err2 += product_error(As, Bs, weights, A, B) ** 2
            ref2 += product_error(As, Bs, weights, np.zeros_like(A), np.zeros_like(B)) ** 2
        self.last = {
            "agg_error": float(np.sqrt(err2)),
            "agg_rel_error": float(np.sqrt(err2 / ref2)) if ref2 > 0 else 0.0,
        }
        self.history.append({"version": ctx.state.version + 1, **self.last})
        return new
