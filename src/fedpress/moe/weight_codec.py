"""Encode one expert's tensors as one self-describing, checksummed payload, and decode it.

Why the wire format: a stored expert must be rebuilt from its bytes alone (codec names and
parameters in the header) and a flipped bit must be caught, not used. ``fedpress.codec.wire``
already gives both (CRC32 of the header and of every frame), so an expert is one ``Envelope``
whose frames come from any codec of the codec layer. The ``fixedrate`` frames are decoded on the
compute device (``fixedrate.decode_torch``: a fused numba pass on a CPU, torch ops elsewhere); the
others by their numpy decoders on the host, then copied.

The payload is read in place (a view into the store's bytes or memory map, no ``bytes`` copy);
the CRC32s are verified on every load. A frame that a decoder could return as a view (``raw``)
is copied out once by ``from_le_bytes``, since the store's memory is read-only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpress.codec.base import available_codecs, get_codec
from fedpress.codec.errors import CodecError, PayloadError
from fedpress.codec.wire import Envelope, TensorEntry, unpack

from . import fixedrate  # noqa: F401  (registers the ``fixedrate`` codec)
from .fixedrate import decode_torch


@dataclass(frozen=True)
class CodecSpec:
    """A codec name and its parameters, e.g. ``fixedrate:eb=0.01`` or ``raw``."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | CodecSpec) -> CodecSpec:
        """Parse ``name[:k=v,...]`` or ``{"name": ..., **params}``; validate by building the codec."""
        if isinstance(spec, CodecSpec):
            out = spec
        elif isinstance(spec, str):
            name, _, rest = spec.partition(":")
            params: dict[str, Any] = {}
            for item in filter(None, rest.split(",")):
                key, eq, value = item.partition("=")
                if not eq:
                    raise CodecError(f"codec parameter {item!r} in {spec!r} is not key=value")
                params[key.strip()] = _value(value.strip())
            out = cls(name.strip(), params)
        elif isinstance(spec, Mapping):
            d = dict(spec)
            out = cls(str(d.pop("name", "")), d)
        else:
            raise CodecError(f"a codec is given as 'name:k=v' or a mapping, got {spec!r}")
        if out.name not in available_codecs():
            raise CodecError(
                f"unknown codec {out.name!r}; available: {', '.join(sorted(available_codecs()))}"
            )
        out.codec()  # raises CodecError on bad parameters
        return out

    def codec(self):
        return get_codec(self.name, **dict(self.params))

    @property
    def bounded(self) -> bool:
        """True when the codec promises ``|x - x_hat| <= bound`` on every element."""
        return bool(self.codec().pointwise_bound)

    @property
    def lossless(self) -> bool:
        return not self.codec().lossy

    def __str__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}:{args}" if args else self.name


def _value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def encode_expert(
    tensors: Mapping[str, np.ndarray], spec: CodecSpec, meta: Mapping[str, Any] | None = None
) -> bytes:
    """One payload for one expert: every tensor through ``spec``'s codec."""
    codec = spec.codec()
    entries, frames = [], []
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr, dtype=np.float32)
        frames.append(codec.encode(a))
        entries.append(TensorEntry(name, "float32", tuple(a.shape), spec.name, codec.params()))
    return Envelope(entries, frames, meta=dict(meta or {})).pack()


@dataclass
class DecodeTiming:
    """Where a decode spent its time (seconds) and how many bytes went to the device."""

    decode_s: float = 0.0
    copy_s: float = 0.0
    device_bytes: int = 0


def decode_expert(
    payload: bytes | memoryview, device: Any = "cpu", expect: Mapping[str, Any] | None = None,
    fused: bool | None = None,
) -> tuple[dict[str, Any], DecodeTiming]:
    """Verify checksums (and that the meta matches ``expect``), rebuild the tensors on ``device``.

    ``fused`` picks the fixedrate decoder (None: the fused kernel on a CPU, torch elsewhere;
    False: torch ops, which benchmarks and tests use to compare the two). Raises
    ``PayloadError`` on a corrupted payload or one that names another expert.
    """
    import torch

    t0 = time.perf_counter()
    env = unpack(payload)  # reads a memoryview in place; every CRC is still checked here
    for key, value in (expect or {}).items():
        if env.meta.get(key) != value:
            raise PayloadError(f"payload is for {key} {env.meta.get(key)!r}, expected {value!r}")
    out: dict[str, Any] = {}
    timing = DecodeTiming()
    dev = torch.device(device)
    for entry, frame in zip(env.tensors, env.frames, strict=True):
        if entry.codec == "fixedrate":
            t = decode_torch(frame, entry.shape, dev, fused)  # unpacks on the device
            timing.device_bytes += len(frame)
        else:
            arr = get_codec(entry.codec, **entry.params).decode(frame, entry.shape, np.float32)
            t1 = time.perf_counter()
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if dev.type != "cpu":
                t = t.to(dev)
            timing.copy_s += time.perf_counter() - t1
            timing.device_bytes += arr.nbytes
        out[entry.name] = t
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    timing.decode_s = time.perf_counter() - t0 - timing.copy_s
    return out, timing
