"""The engine's one door to the codec layer (``fedpress.codec.stream``).

Every payload the engine moves goes through :func:`make_encoder` / :func:`make_decoder`, so the
wiring to the codec streams lives here and nowhere else. Codec names:

* ``none`` (alias ``raw``): uncompressed self-describing packing (``rawpack.py``);
* ``lossless``: ``Policy.lossless()``; falls back to ``none`` while the stream layer is absent;
* any other name: ``Policy.default(codec=name, mode=mode, eb=eb)`` (``grad``, ``sz3``, ...).

Decoders accept both raw packs and stream payloads, one decoder per stream id (stateful codecs
keep per-stream state: decode *every* payload of a stream in order, even ones the server drops).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedpress.codec.errors import CodecError

from . import rawpack
from .types import Tensors

RAW_NAMES = ("none", "raw")


@dataclass(frozen=True)
class CodecSpec:
    """Which codec a link uses: ``name`` plus the error bound of lossy codecs."""

    name: str = "none"
    mode: str = "rel"
    eb: float = 1e-2

    @property
    def is_raw(self) -> bool:
        return self.name in RAW_NAMES


class TensorEncoder(Protocol):
    def encode(self, tensors: Tensors) -> bytes: ...


class TensorDecoder(Protocol):
    def decode(self, payload: bytes) -> Tensors: ...


@dataclass
class EncodeStats:
    raw_bytes: int
    encoded_bytes: int
    seconds: float


def _stream_api() -> tuple[Any, Any, Any] | None:
    try:
        from fedpress.codec.routing import Policy
        from fedpress.codec.stream import StreamDecoder, StreamEncoder
    except ImportError:
        return None
    return Policy, StreamEncoder, StreamDecoder


def codec_layer_available() -> bool:
    return _stream_api() is not None


class _RawEncoder:
    def encode(self, tensors: Tensors) -> bytes:
        return rawpack.pack(tensors)


class AutoDecoder:
    """Decodes raw packs directly and stream payloads with one lazily built ``StreamDecoder``."""

    def __init__(self) -> None:
        self._stream: Any = None

    def decode(self, payload: bytes) -> Tensors:
        if payload[: len(rawpack.MAGIC)] == rawpack.MAGIC:
            return rawpack.unpack(payload)
        if self._stream is None:
            api = _stream_api()
            if api is None:
                raise CodecError("payload is not a raw pack and fedpress.codec.stream is missing")
            self._stream = api[2]()
        return self._stream.decode(payload)


def make_encoder(spec: CodecSpec | None, stream_id: str) -> TensorEncoder:
    """A stateful encoder for one stream (``"c{client}/up"`` or ``"c{client}/down"``)."""
    if spec is None or spec.is_raw:
        return _RawEncoder()
    api = _stream_api()
    if api is None:
        if spec.name == "lossless":
            return _RawEncoder()
        raise CodecError(
            f"codec {spec.name!r} needs fedpress.codec.stream, which is not available; "
            "use codec.name=none or lossless"
        )
    policy_cls, encoder_cls, _ = api
    if spec.name == "lossless":
        policy = policy_cls.lossless()
    else:
        policy = policy_cls.default(codec=spec.name, mode=spec.mode, eb=spec.eb)
    return encoder_cls(policy, stream_id=stream_id)


def make_decoder(spec: CodecSpec | None = None) -> TensorDecoder:
    """A decoder for one stream id; ``spec`` is unused (payloads describe themselves)."""
    return AutoDecoder()


def encode_update(encoder: TensorEncoder, tensors: Tensors) -> tuple[bytes, EncodeStats]:
    """Encode and measure: raw bytes in, encoded bytes out, wall seconds."""
    raw = sum(int(np.asarray(v).nbytes) for v in tensors.values())
    t0 = time.perf_counter()
    payload = encoder.encode(tensors)
    return payload, EncodeStats(raw, len(payload), time.perf_counter() - t0)


def decode_update(decoder: TensorDecoder, payload: bytes) -> tuple[Tensors, float]:
    """Decode and measure wall seconds; raises ``CodecError`` on a bad payload."""
    t0 = time.perf_counter()
    tensors = decoder.decode(payload)
    return tensors, time.perf_counter() - t0
