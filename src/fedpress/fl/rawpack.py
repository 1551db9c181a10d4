"""Uncompressed, self-describing packing of named arrays (the ``none`` codec of the engine).

Layout: magic ``FPRW1``, a 4-byte little-endian header length, a msgpack header
``[[name, dtype, shape], ...]`` and the arrays' C-order bytes back to back. No pickle: a
malformed payload raises ``PayloadError``, never executes anything.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np

from fedpress.codec.errors import PayloadError

MAGIC = b"FPRW1"
_ALLOWED = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}


def pack(tensors: dict[str, np.ndarray]) -> bytes:
    header = []
    frames = []
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in _ALLOWED:
            raise PayloadError(f"tensor {name!r}: dtype {a.dtype.name} cannot be packed")
        header.append([name, a.dtype.name, list(a.shape)])
        frames.append(a.tobytes())
    head = msgpack.packb(header, use_bin_type=True)
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *frames])


def unpack(payload: bytes) -> dict[str, np.ndarray]:
    mv = memoryview(payload)
    if bytes(mv[: len(MAGIC)]) != MAGIC or len(mv) < len(MAGIC) + 4:
        raise PayloadError("not a raw tensor payload (bad magic or truncated)")
    (hlen,) = struct.unpack_from("<I", mv, len(MAGIC))
    start = len(MAGIC) + 4
    if start + hlen > len(mv):
        raise PayloadError("raw tensor payload truncated inside its header")
    try:
        header = msgpack.unpackb(bytes(mv[start : start + hlen]), raw=False)
    except Exception as exc:  # msgpack raises several types on garbage
        raise PayloadError(f"raw tensor payload header is malformed: {exc}") from None
    off = start + hlen
    out: dict[str, np.ndarray] = {}
    try:
        for name, dtype, shape in header:
            if dtype not in _ALLOWED:
                raise PayloadError(f"tensor {name!r}: dtype {dtype!r} not allowed")
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            nbytes = count * dt.itemsize
            if count < 0 or off + nbytes > len(mv):
                raise PayloadError(f"raw tensor payload truncated in tensor {name!r}")
            out[str(name)] = np.frombuffer(mv[off : off + nbytes], dtype=dt).reshape(shape).copy()
            off += nbytes
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(f"raw tensor payload header is malformed: {exc}") from None
    if off != len(mv):
        raise PayloadError(f"raw tensor payload has {len(mv) - off} trailing bytes")
    return out
