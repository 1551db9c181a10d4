"""Streams: encode a dict of named tensors into one payload, with per-layer codec state.

A stream is one direction of one client (e.g. ``"client3/up"``). Stateful codecs keep a state per
layer *name*. Every payload names the stream, a sequence number and a fingerprint of the state it
was encoded against; the decoder refuses a gap, a replay or a mismatch with ``StreamStateError``
and keeps its state, and the sender restarts from a keyframe (``reset``). Encoding and decoding
are atomic: state changes only when the whole payload went through.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import LayerState, get_codec, native
from .errors import CodecError, NonFiniteError, PayloadError, StreamStateError
from .limits import DEFAULT_LIMITS, PayloadLimits
from .routing import Policy
from .wire import Envelope, TensorEntry, unpack

_EMPTY_FINGERPRINT = "0" * 16


@dataclass(frozen=True)
class TaggedArray:
    """A numpy array standing for a tensor of another dtype (bfloat16 widened to float32
    exactly), for callers that have no torch; the wire entry records ``dtype``."""

    values: np.ndarray
    dtype: str


def to_numpy(x: Any) -> tuple[np.ndarray, str]:
    """(array for the codecs, dtype name to restore); torch tensors and bfloat16 included.

    Non-native byte orders (``'>f4'``) are converted here, once, so no codec sees them.
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        t = x.detach().cpu()
        name = str(t.dtype).removeprefix("torch.")
        if name == "bfloat16":
            return t.float().numpy(), "bfloat16"  # exact widening
        return t.numpy(), name
    if isinstance(x, TaggedArray):
        return native(np.asarray(x.values)), x.dtype
    a = native(np.asarray(x))
    return a, a.dtype.name


@dataclass
class EncodeStats:
    raw_bytes: int = 0
    encoded_bytes: int = 0
    seconds: float = 0.0
    per_tensor: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.raw_bytes / max(self.encoded_bytes, 1)


def fingerprint(states: Mapping[str, LayerState]) -> str:
    """Hash of all layer states; equal on both sides exactly when their states are equal."""
    if not states:
        return _EMPTY_FINGERPRINT
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(states):
        st = states[name]
        h.update(name.encode())
        h.update(repr((st.get("round"), st.get("shape"))).encode())
        for key in ("prev", "memory"):
            a = st.get(key)
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class StreamEncoder:
    """Sender side of a stream."""

    def __init__(
        self, policy: Policy, stream_id: str = "default", keyframe_interval: int | None = None
    ) -> None:
        if keyframe_interval is not None and keyframe_interval < 1:
            raise CodecError("keyframe_interval must be a positive number of payloads")
        self.policy = policy
        self.stream_id = stream_id
        self.keyframe_interval = keyframe_interval
        self.seq = 0
        self.states: dict[str, LayerState] = {}
        self._since_keyframe = 0
        self.last_stats = EncodeStats()

    def reset(self) -> None:
        """Forget all state: the next payload is a keyframe."""
        self.states = {}
        self._since_keyframe = 0

    def encode(self, tensors: Mapping[str, Any], meta: dict[str, Any] | None = None) -> bytes:
        if self.keyframe_interval and self._since_keyframe >= self.keyframe_interval:
            self.reset()
        keyframe = not self.states
        fp = fingerprint(self.states)
        new_states = dict(self.states)
        entries, frames = [], []
        stats = EncodeStats()
        t0 = time.perf_counter()
        for name, value in tensors.items():
            x, dtype_name = to_numpy(value)
            codec = self.policy.route(name, x)
            if codec.lossy and x.size and not np.isfinite(x).all():
                if self.policy.nonfinite == "error":
                    raise NonFiniteError(
                        f"tensor {name!r} holds NaN/Inf and is routed to lossy codec {codec.name!r}"
                    )
                warnings.warn(f"tensor {name!r} holds NaN/Inf: sent losslessly", stacklevel=2)
                codec = get_codec("zstd")
            state = None
            if codec.stateful:
                state = dict(new_states.get(name, {}))
            t = time.perf_counter()
            frame = codec.encode(x, state)
            if codec.stateful:
                new_states[name] = state
            else:
                new_states.pop(name, None)
            entries.append(TensorEntry(name, dtype_name, tuple(x.shape), codec.name, codec.params()))
            frames.append(frame)
            stats.per_tensor[name] = {
                "codec": codec.name, "raw": x.nbytes, "encoded": len(frame),
                "seconds": time.perf_counter() - t,
            }
            stats.raw_bytes += x.nbytes
        stream = {"id": self.stream_id, "seq": self.seq, "fingerprint": fp, "keyframe": keyframe}
        payload = Envelope(entries, frames, stream, meta or {}).pack()
        stats.encoded_bytes = len(payload)
        stats.seconds = time.perf_counter() - t0
        self.states = new_states  # commit only after the whole payload was built
        self.seq += 1
        self._since_keyframe += 1
        self.last_stats = stats
        return payload

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this encoder (checkpointing)."""
        return {
            "stream_id": self.stream_id, "seq": self.seq, "since_keyframe": self._since_keyframe,
            "states": {k: dict(v) for k, v in self.states.items()},
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self.stream_id = sd["stream_id"]
        self.seq = int(sd["seq"])
        self._since_keyframe = int(sd["since_keyframe"])
        self.states = {k: dict(v) for k, v in sd["states"].items()}


#: default cap on one decoded tensor (kept for callers; ``PayloadLimits`` holds the limits).
MAX_TENSOR_BYTES = DEFAULT_LIMITS.max_tensor_bytes


class StreamDecoder:
    """Receiver side of a stream; refuses payloads that do not continue its state.

    Parameters
    ----------
    stream_id
        The stream this decoder serves (``None``: take the first payload's).
    accept
        Codec names this receiver accepts; a payload naming any other codec is refused before
        any frame is read (``None``: every registered codec).
    limits
        Payload-level limits checked before any frame is decoded (``None``: the defaults).
    max_tensor_bytes
        Shorthand for ``limits.max_tensor_bytes`` (older callers).
    """

    def __init__(
        self,
        stream_id: str | None = None,
        *,
        accept: Collection[str] | None = None,
        limits: PayloadLimits | None = None,
        max_tensor_bytes: int | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.accept = None if accept is None else frozenset(accept)
        limits = limits or DEFAULT_LIMITS
        if max_tensor_bytes is not None:
            limits = limits.replace(max_tensor_bytes=max_tensor_bytes)
        self.limits = limits
        self.expected_seq: int | None = None
        self.states: dict[str, LayerState] = {}
        self.last_meta: dict[str, Any] = {}
        self.last_dtypes: dict[str, str] = {}
        self.last_lossy: set[str] = set()

    @property
    def max_tensor_bytes(self) -> int:
        return self.limits.max_tensor_bytes

    def decode(self, payload: bytes) -> dict[str, np.ndarray]:
        """Check the payload against the limits and the allow-list, then decode it."""
        return self.decode_envelope(unpack(payload, self.limits, self.accept))

    def decode_envelope(self, env: Envelope) -> dict[str, np.ndarray]:
        """Decode an unpacked payload (the wire layer has checked the limits)."""
        if self.accept is not None:
            for entry in env.tensors:
                if entry.codec not in self.accept:
                    raise PayloadError(f"tensor {entry.name!r}: codec {entry.codec!r} is not accepted")
        states = self._check_stream(env)
        new_states = dict(states)
        out: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        lossy: set[str] = set()
        codecs: dict[tuple[str, int], Any] = {}  # entries share their codec table's params dict
        for entry, frame in zip(env.tensors, env.frames, strict=True):
            key = (entry.codec, id(entry.params))
            codec = codecs.get(key)
            if codec is None:
                try:
                    codec = codecs[key] = get_codec(entry.codec, **entry.params)
                except CodecError as exc:
                    raise PayloadError(f"tensor {entry.name!r}: {exc}") from None
            compute_dtype = np.dtype("float32" if entry.dtype == "bfloat16" else entry.dtype)
            if entry.nbytes > self.limits.max_tensor_bytes:
                raise PayloadError(
                    f"tensor {entry.name!r} declares {entry.nbytes} bytes, over this decoder's "
                    f"limit of {self.limits.max_tensor_bytes} (max_tensor_bytes)"
                )
            state = dict(new_states.get(entry.name, {})) if codec.stateful else None
            try:
                x = codec.decode(frame, entry.shape, compute_dtype, state)
            except StreamStateError as exc:
                raise StreamStateError(f"tensor {entry.name!r}: {exc}") from None
            except PayloadError as exc:
                raise PayloadError(f"tensor {entry.name!r}: {exc}") from None
            except MemoryError:
                raise PayloadError(f"tensor {entry.name!r}: too large to decode here") from None
            if codec.stateful:
                new_states[entry.name] = state
            else:
                new_states.pop(entry.name, None)
            out[entry.name] = x
            dtypes[entry.name] = entry.dtype
            if codec.lossy:
                lossy.add(entry.name)
        self.states = new_states
        if env.stream is not None:
            self.expected_seq = env.stream["seq"] + 1
        self.last_meta = env.meta
        self.last_dtypes = dtypes
        self.last_lossy = lossy
        return out

    def _check_stream(self, env: Envelope) -> dict[str, LayerState]:
        s = env.stream
        if s is None:
            return {}
        if self.stream_id is not None and s["id"] != self.stream_id:
            raise StreamStateError(f"payload of stream {s['id']!r} sent to decoder of {self.stream_id!r}")
        if s.get("keyframe"):
            # an old keyframe would roll stateful layers back; stateless ones have nothing to lose
            if self.states and self.expected_seq is not None and s["seq"] < self.expected_seq:
                raise StreamStateError(
                    f"stream {s['id']!r}: keyframe {s['seq']} is older than the stream's position "
                    f"{self.expected_seq} (a replay)"
                )
            return {}
        if self.expected_seq is not None and s["seq"] != self.expected_seq:
            raise StreamStateError(
                f"stream {s['id']!r}: expected sequence {self.expected_seq}, got {s['seq']} "
                "(a payload was lost or replayed); the sender must restart from a keyframe"
            )
        if s["fingerprint"] != fingerprint(self.states):
            raise StreamStateError(
                f"stream {s['id']!r}: payload {s['seq']} was encoded against a state this decoder "
                "does not hold; the sender must restart from a keyframe"
            )
        return self.states


class DecoderHub:
    """One ``StreamDecoder`` per stream id, created on first contact (server side).

    ``accept`` and ``limits`` apply to every stream, and are checked before the payload is
    routed to its stream's decoder.
    """

    def __init__(
        self,
        *,
        accept: Collection[str] | None = None,
        limits: PayloadLimits | None = None,
    ) -> None:
        self.accept = None if accept is None else frozenset(accept)
        self.limits = limits or DEFAULT_LIMITS
        self.decoders: dict[str, StreamDecoder] = {}

    def decode(self, payload: bytes) -> tuple[str, dict[str, np.ndarray]]:
        env = unpack(payload, self.limits, self.accept)
        sid = env.stream["id"] if env.stream else "default"
        dec = self.decoders.get(sid)
        if dec is None:
            dec = self.decoders[sid] = StreamDecoder(sid, accept=self.accept, limits=self.limits)
        return sid, dec.decode_envelope(env)
