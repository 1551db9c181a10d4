"""The codec interface and its registry.

A codec turns one array into one frame of bytes and back. Codecs are small and, apart from
stateful ones, hold no state between calls: the wire format (``wire.py``) records each frame's
codec name and parameters so the decoder rebuilds the same codec from the bytes alone. Stateful
codecs receive a per-layer ``LayerState`` owned by a stream (``stream.py``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .bound import ErrorBound
from .errors import CodecError, NonFiniteError

#: dtypes a codec sees; bfloat16 is widened to float32 before the codec layer (exact).
SUPPORTED_DTYPES = ("float32", "float64", "float16")

LayerState = dict[str, Any]


class Codec(ABC):
    """One-array codec. Subclasses set ``name`` and implement ``encode`` and ``decode``."""

    name: ClassVar[str] = ""
    #: True when the reconstruction can differ from the input.
    lossy: ClassVar[bool] = True
    #: True when encode/decode read and update a ``LayerState``.
    stateful: ClassVar[bool] = False
    #: True when the codec promises ``|x - x_hat| <= bound`` on every element.
    pointwise_bound: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """Parameters that rebuild this codec (``get_codec(name, **params)``); go in the header."""
        return {}

    @abstractmethod
    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        """Encode ``x`` (any shape, a dtype in ``SUPPORTED_DTYPES``) into one frame."""

    @abstractmethod
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        """Rebuild the array from ``frame``; raise ``PayloadError`` on malformed bytes."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class BoundedCodec(Codec):
    """A lossy codec with a pointwise error bound given as ``mode`` (abs|rel) and ``eb``."""

    pointwise_bound = True

    def __init__(self, mode: str = "rel", eb: float = 1e-2) -> None:
        self.bound = ErrorBound(mode, float(eb))  # validates

    def params(self) -> dict[str, Any]:
        return {"mode": self.bound.mode, "eb": self.bound.value}


def check_finite(x: np.ndarray, what: str = "tensor") -> None:
    """Refuse NaN/Inf before a lossy path: they have no meaningful error bound."""
    if x.size and not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise NonFiniteError(f"{what} holds {bad} NaN/Inf value(s); a lossy codec cannot bound them")


def check_dtype(x: np.ndarray) -> None:
    if x.dtype.name not in SUPPORTED_DTYPES:
        raise CodecError(f"unsupported dtype {x.dtype.name}; codecs take {', '.join(SUPPORTED_DTYPES)}")


_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec available by its ``name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no codec name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"codec name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_codec(name: str, **params: Any) -> Codec:
    """Build a registered codec; unknown names and parameters get a clear error."""
    _load_builtin_codecs()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    allowed = codec_parameters(cls)
    unknown = set(params) - set(allowed)
    if unknown:
        raise CodecError(
            f"codec {name!r} takes no parameter(s) {sorted(unknown)}; it takes {sorted(allowed)}"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"bad parameters for codec {name!r}: {exc}") from None


def codec_parameters(cls: type[Codec]) -> dict[str, Any]:
    """The constructor parameters of a codec class with their defaults."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def available_codecs() -> dict[str, type[Codec]]:
    _load_builtin_codecs()
    return dict(sorted(_REGISTRY.items()))


_loaded = False


def _load_builtin_codecs() -> None:
    """Import the built-in codec modules once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import builtin  # noqa: F401
