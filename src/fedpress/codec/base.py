"""The codec interface and its registry.

A codec turns one array into one frame of bytes and back. Codecs are small and, apart from
stateful ones, hold no state between calls: the wire format (``wire.py``) records each frame's
codec name and parameters so the decoder rebuilds the same codec from the bytes alone. Stateful
codecs receive a per-layer ``LayerState`` owned by a stream (``stream.py``).

The registry lives here but this module imports no concrete codec: the codec modules import
``base`` and register themselves, and the package ``__init__`` imports them all through
``builtin.py``, so the import graph has no cycle and any import of ``fedpress.codec.*`` sees a
full registry.
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
    #: False when an instance carries state of its own (e.g. a random stream) and so must not be
    #: shared through ``get_codec``'s instance cache.
    shareable: ClassVar[bool] = True

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


def native(x: np.ndarray) -> np.ndarray:
    """``x`` in the host's byte order (big-endian input is converted once, at the encoder entry).

    Codecs compute on native arrays; a ``'>f4'`` tensor handled as if native breaks the bound.
    """
    x = np.asarray(x)
    if x.dtype.isnative:
        return x
    return x.astype(x.dtype.newbyteorder("="))


def native_dtype(dtype: Any) -> np.dtype:
    """The native-byte-order version of ``dtype`` (decoders return native arrays)."""
    return np.dtype(dtype).newbyteorder("=")


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


#: (name, frozen params) -> shared codec instance; bounded so forged headers cannot grow it.
_INSTANCES: dict[tuple, Codec] = {}
_MAX_INSTANCES = 512
_PARAMETERS: dict[type[Codec], dict[str, Any]] = {}


def get_codec(name: str, **params: Any) -> Codec:
    """A registered codec (unknown names and parameters get a clear error).

    Instances are cached per (name, parameters), so decoding a payload of many tensors builds
    each codec once (no signature inspection per tensor). Codecs with ``shareable = False``
    are built fresh every time.
    """
    key = _freeze(name, params)
    if key is not None:
        codec = _INSTANCES.get(key)
        if codec is not None:
            return codec
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
        codec = cls(**params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"bad parameters for codec {name!r}: {exc}") from None
    if key is not None and cls.shareable:
        if len(_INSTANCES) >= _MAX_INSTANCES:
            _INSTANCES.clear()
        _INSTANCES[key] = codec
    return codec


def _freeze(name: str, params: dict[str, Any]) -> tuple | None:
    """A hashable key; the value's type is part of it (``True`` and ``1`` build different codecs)."""
    try:
        key = (name, tuple(sorted((k, type(v), v) for k, v in params.items())))
        hash(key)
    except TypeError:
        return None
    return key


def codec_parameters(cls: type[Codec]) -> dict[str, Any]:
    """The constructor parameters of a codec class with their defaults (inspected once)."""
    cached = _PARAMETERS.get(cls)
    if cached is None:
        sig = inspect.signature(cls.__init__)
        cached = {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        _PARAMETERS[cls] = cached
    return dict(cached)


def available_codecs() -> dict[str, type[Codec]]:
    """Every registered codec by name (the package ``__init__`` has registered the built-ins)."""
    return dict(sorted(_REGISTRY.items()))
