"""Error-bound specification shared by every error-bounded codec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import CodecError

BoundMode = Literal["abs", "rel"]


@dataclass(frozen=True)
class ErrorBound:
    """A pointwise bound ``|x - x_hat| <= abs_bound(x)`` on every element.

    ``rel`` is relative to the tensor's value range ``max(x) - min(x)`` (SZ3's REL mode), ``abs``
    is an absolute value. A constant tensor under ``rel`` has a bound of 0 and is coded exactly.
    """

    mode: BoundMode = "rel"
    value: float = 1e-2

    def __post_init__(self) -> None:
        if self.mode not in ("abs", "rel"):
            raise CodecError(f"error-bound mode must be 'abs' or 'rel', got {self.mode!r}")
        if not np.isfinite(self.value) or self.value <= 0:
            raise CodecError(f"error bound must be a finite positive number, got {self.value!r}")
        if self.mode == "rel" and self.value >= 1:
            raise CodecError(f"a relative error bound must be below 1, got {self.value!r}")

    def absolute(self, x: np.ndarray) -> float:
        """The absolute bound this spec gives for tensor ``x``."""
        if self.mode == "abs":
            return float(self.value)
        if x.size == 0:
            return 0.0
        return float(self.value) * (float(np.max(x)) - float(np.min(x)))
