"""The engine's one door to the codec layer (``fedpress.codec.stream``).

Every payload the engine moves goes through :func:`make_encoder` / :func:`make_decoder`, so the
wiring to the codec streams lives here and nowhere else. Codec names:

* ``none`` (alias ``raw``): every tensor through the ``raw`` codec (uncompressed, same format);
* ``lossless``: ``Policy.lossless()`` (zstd);
* any other name: ``Policy.default(codec=name, mode=mode, eb=eb)`` (``grad``, ``sz3``, ...).

One decoder per stream id (stateful codecs keep per-stream state: decode *every* payload of a
stream in order, even ones the server drops).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder, StreamEncoder

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


def make_encoder(spec: CodecSpec | None, stream_id: str) -> TensorEncoder:
    """A stateful encoder for one stream (``"c{client}/up"`` or ``"c{client}/down"``)."""
    if spec is None or spec.is_raw:
        policy = Policy.uniform("raw")
    elif spec.name == "lossless":
        policy = Policy.lossless()
    else:
        policy = Policy.default(codec=spec.name, mode=spec.mode, eb=spec.eb)
    return StreamEncoder(policy, stream_id=stream_id)


def make_decoder(spec: CodecSpec | None = None) -> TensorDecoder:
    """A decoder for one stream id; ``spec`` is unused (payloads describe themselves)."""
    return StreamDecoder()


def pack_raw(tensors: Tensors) -> bytes:
    """An uncompressed payload in the one wire format (tests, models sent without a stream)."""
    return StreamEncoder(Policy.uniform("raw"), stream_id="raw").encode(tensors)


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
