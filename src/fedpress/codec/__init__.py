"""The codec layer: error-bounded codecs, routing, streams and the wire format."""

from . import builtin as _builtin  # noqa: F401  (the built-in codecs register themselves)
from .base import Codec, available_codecs, get_codec, register_codec
from .bound import ErrorBound
from .errors import CodecError, NonFiniteError, PayloadError, StreamStateError
from .limits import PayloadLimits
from .wire import TensorEntry, read_manifest

__all__ = [
    "Codec",
    "CodecError",
    "ErrorBound",
    "NonFiniteError",
    "PayloadError",
    "PayloadLimits",
    "StreamStateError",
    "TensorEntry",
    "available_codecs",
    "get_codec",
    "read_manifest",
    "register_codec",
]
