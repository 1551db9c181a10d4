"""Streaming aggregation: weighted running sums whose memory does not grow with the cohort."""

from __future__ import annotations

from typing import Any

import numpy as np

from .types import Tensors


class RunningSum:
    """``sum_i w_i x_i`` and ``sum_i w_i`` accumulated in float64, one update at a time.

    float64 keeps the result independent of arrival order to far below float32 resolution, so
    rules that are mathematically equal (FedBuff with K = cohort vs FedAvg) agree bit for bit
    once cast back to float32.
    """

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] | None = None
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: Tensors, weight: float = 1.0) -> None:
        w = float(weight)
        if self._sum is None:
            self._sum = {k: np.asarray(v, dtype=np.float64) * w for k, v in tensors.items()}
        else:
            if tensors.keys() != self._sum.keys():
                missing = sorted(set(self._sum) ^ set(tensors))
                raise ValueError(f"update tensors differ from the running sum's: {missing[:5]}")
            for k, v in tensors.items():
                acc = self._sum[k]
                acc += np.asarray(v, dtype=np.float64) * w
        self.total_weight += w
        self.count += 1

    def sum(self) -> dict[str, np.ndarray]:
        if self._sum is None:
            raise ValueError("running sum is empty")
        return self._sum

    def mean(self, denominator: float | None = None) -> dict[str, np.ndarray]:
        """``sum / denominator`` (default: the total weight), float64."""
        den = self.total_weight if denominator is None else float(denominator)
        if den == 0:
            raise ValueError("cannot average with a zero total weight")
        return {k: v / den for k, v in self.sum().items()}

    def state_dict(self) -> dict[str, Any]:
        """The float64 sums and counters (checkpointing)."""
        sums = None if self._sum is None else {k: v.copy() for k, v in self._sum.items()}
        return {"sum": sums, "total_weight": self.total_weight, "count": self.count}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        s = sd["sum"]
        self._sum = None if s is None else {k: np.array(v, np.float64, copy=True) for k, v in s.items()}
        self.total_weight = float(sd["total_weight"])
        self.count = int(sd["count"])

    def reset(self) -> None:
        self._sum = None
        self.total_weight = 0.0
        self.count = 0


def cast_like(values: dict[str, np.ndarray], like: Tensors) -> Tensors:
    """Cast each entry to the dtype of the matching entry in ``like``."""
    return {k: np.asarray(v).astype(like[k].dtype, copy=False) for k, v in values.items()}
