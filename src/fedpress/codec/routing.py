"""Routing policy: ordered rules pick a codec per named tensor.

Why rules and not one codec: an update mixes large conv/linear weights (where lossy coding pays)
with biases, norm layers and integer buffers, which are small, sensitive, or not floats at all.
The first matching rule wins; the last rule of a policy should match everything.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import Codec, get_codec
from .errors import CodecError

_NORM_HINTS = ("norm", "bn", "running_mean", "running_var", "ln_", "layernorm")


def tensor_role(name: str, x: np.ndarray) -> str:
    """A coarse role from name and shape: weight, bias, norm, buffer or other."""
    lower = name.lower()
    if x.dtype.kind not in "f" and x.dtype.name != "bfloat16":
        return "buffer"
    if any(h in lower for h in _NORM_HINTS):
        return "norm"
    if lower.endswith("bias"):
        return "bias"
    if x.ndim >= 2:
        return "weight"
    return "other"


@dataclass
class Rule:
    """Match conditions (all must hold; ``None`` = any) and the codec to use."""

    codec: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # fnmatch pattern on the tensor name
    roles: tuple[str, ...] | None = None
    min_size: int | None = None
    max_size: int | None = None
    float_only: bool = False

    def matches(self, name: str, x: np.ndarray, role: str) -> bool:
        if self.name is not None and not fnmatch.fnmatchcase(name, self.name):
            return False
        if self.roles is not None and role not in self.roles:
            return False
        if self.min_size is not None and x.size < self.min_size:
            return False
        if self.max_size is not None and x.size > self.max_size:
            return False
        return not (self.float_only and x.dtype.kind != "f")


@dataclass
class Policy:
    """Ordered rules plus what to do with NaN/Inf headed for a lossy codec."""

    rules: list[Rule]
    #: "error" (alias "refuse"): NaN/Inf headed for a lossy codec raise ``NonFiniteError``;
    #: "lossless": such a tensor is sent exactly, with a warning.
    nonfinite: str = "error"

    def __post_init__(self) -> None:
        if self.nonfinite == "refuse":
            self.nonfinite = "error"
        if self.nonfinite not in ("error", "lossless"):
            raise CodecError("policy.nonfinite must be 'refuse' (or 'error') or 'lossless'")
        if not self.rules:
            raise CodecError("a routing policy needs at least one rule")
        self._cache: dict[tuple[str, str], Codec] = {}
        for rule in self.rules:  # fail early on unknown codecs or parameters
            self._codec(rule)

    def _codec(self, rule: Rule) -> Codec:
        key = (rule.codec, repr(sorted(rule.params.items())))
        if key not in self._cache:
            self._cache[key] = get_codec(rule.codec, **rule.params)
        return self._cache[key]

    def codec_names(self) -> frozenset[str]:
        """Every codec this policy can put in a payload: what a receiver should ``accept``.

        ``zstd`` is included when NaN/Inf may be sent losslessly.
        """
        names = {rule.codec for rule in self.rules}
        if self.nonfinite == "lossless":
            names.add("zstd")
        return frozenset(names)

    def route(self, name: str, x: np.ndarray) -> Codec:
        role = tensor_role(name, x)
        for rule in self.rules:
            if rule.matches(name, x, role):
                return self._codec(rule)
        raise CodecError(f"no routing rule matches tensor {name!r} ({x.dtype}, {x.shape})")

    @classmethod
    def default(
        cls,
        codec: str = "grad",
        mode: str = "rel",
        eb: float = 1e-2,
        small: int = 1024,
        nonfinite: str = "error",
        **params: Any,
    ) -> Policy:
        """Lossy ``codec`` for large float weights; small tensors, biases, norms, ints lossless."""
        lossy_params = dict(params)
        if get_codec(codec, **params).lossy and _takes_bound(codec):
            lossy_params.update(mode=mode, eb=eb)
        return cls(
            [
                Rule("zstd", roles=("buffer", "norm", "bias")),
                Rule("zstd", max_size=small),
                Rule(codec, lossy_params, float_only=True),
                Rule("zstd"),
            ],
            nonfinite=nonfinite,
        )

    @classmethod
    def lossless(cls) -> Policy:
        return cls([Rule("zstd")])

    @classmethod
    def uniform(cls, codec: str, **params: Any) -> Policy:
        """Every float tensor through one codec (benchmarks), other dtypes lossless."""
        return cls([Rule(codec, dict(params), float_only=True), Rule("zstd")])


def _takes_bound(codec: str) -> bool:
    from .base import available_codecs, codec_parameters

    return {"mode", "eb"} <= set(codec_parameters(available_codecs()[codec]))
