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
from typing import Any, Protocol

import numpy as np

from fedpress.codec.errors import PayloadError
from fedpress.codec.limits import DEFAULT_LIMITS, PayloadLimits
from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder, StreamEncoder
from fedpress.codec.wire import TensorEntry, read_manifest

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


def policy_for(spec: CodecSpec | None) -> Policy:
    """The routing policy a link's codec spec stands for."""
    if spec is None or spec.is_raw:
        return Policy.uniform("raw")
    if spec.name == "lossless":
        return Policy.lossless()
    return Policy.default(codec=spec.name, mode=spec.mode, eb=spec.eb)


def accepted_codecs(spec: CodecSpec | None) -> frozenset[str]:
    """Codec names a receiver of this link accepts: exactly those its policy can route to
    (a server takes the codecs its config names, nothing else)."""
    return frozenset(rule.codec for rule in policy_for(spec).rules)


def make_encoder(spec: CodecSpec | None, stream_id: str) -> StreamEncoder:
    """A stateful encoder for one stream (``"c{client}/up"`` or ``"c{client}/down"``)."""
    return StreamEncoder(policy_for(spec), stream_id=stream_id)


def make_decoder(
    spec: CodecSpec | None = None,
    *,
    accept: frozenset[str] | None = None,
    limits: PayloadLimits | None = None,
) -> StreamDecoder:
    """A decoder for one stream. Payloads describe themselves; ``accept`` (default: the codecs
    ``spec`` routes to, or any when no spec is given) and ``limits`` bound what it takes."""
    if accept is None and spec is not None:
        accept = accepted_codecs(spec)
    return StreamDecoder(accept=accept, limits=limits)


def model_limits(params: Tensors) -> PayloadLimits:
    """Payload limits that fit exactly one update of this model (what a server expects):
    its tensor count, element total and byte sizes (as float32 or wider)."""
    sizes = [int(np.asarray(v).size) * max(np.asarray(v).dtype.itemsize, 4) for v in params.values()]
    return DEFAULT_LIMITS.replace(
        max_tensors=max(len(params), 1),
        max_total_elements=max(sum(int(np.asarray(v).size) for v in params.values()), 1),
        max_total_bytes=max(sum(sizes), 1),
        max_tensor_bytes=max(max(sizes, default=1), 1),
    )


def check_manifest(
    entries: list[TensorEntry], params: Tensors, accept: frozenset[str] | None
) -> None:
    """Refuse a payload before any frame is decoded: codecs outside ``accept``, tensor names,
    shapes or dtypes that differ from the model's (``PayloadError``)."""
    names = [e.name for e in entries]
    if set(names) != params.keys() or len(names) != len(params):
        diff = sorted(set(names) ^ set(params))
        raise PayloadError(f"payload tensor names differ from the model's: {diff[:5]}")
    for e in entries:
        if accept is not None and e.codec not in accept:
            raise PayloadError(
                f"tensor {e.name!r}: codec {e.codec!r} is not accepted here "
                f"(accepted: {', '.join(sorted(accept))})"
            )
        want = params[e.name]
        if tuple(e.shape) != tuple(want.shape):
            raise PayloadError(f"tensor {e.name!r}: shape {tuple(e.shape)} != model shape {want.shape}")
        if e.dtype != want.dtype.name:
            raise PayloadError(f"tensor {e.name!r}: dtype {e.dtype} != model dtype {want.dtype.name}")


def decode_checked(
    decoder: StreamDecoder, payload: bytes, params: Tensors, accept: frozenset[str] | None
) -> tuple[Tensors, float]:
    """Read the manifest under the decoder's limits, check it against the model and
    ``accept``, and only then decode; measures wall seconds. Raises ``CodecError`` (the
    decoder's state is untouched on refusal)."""
    t0 = time.perf_counter()
    entries = read_manifest(payload, decoder.limits, accept)
    check_manifest(entries, params, accept)
    tensors = decoder.decode(payload)
    return tensors, time.perf_counter() - t0


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


def decoder_state(decoder: StreamDecoder) -> dict[str, Any]:
    """A stream decoder's resumable state (checkpointing): position and per-layer states."""
    return {
        "expected_seq": -1 if decoder.expected_seq is None else int(decoder.expected_seq),
        "states": {k: dict(v) for k, v in decoder.states.items()},
    }


def load_decoder_state(decoder: StreamDecoder, sd: dict[str, Any]) -> None:
    """Inverse of :func:`decoder_state`."""
    seq = int(sd["expected_seq"])
    decoder.expected_seq = None if seq < 0 else seq
    decoder.states = {k: dict(v) for k, v in sd["states"].items()}
