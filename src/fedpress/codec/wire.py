"""The wire format: one self-describing, versioned payload for a set of named tensors.

Layout (little endian)::

    b"FPZ" 0x00 | u16 version | u16 flags | u32 header length | u32 crc32(header) | header | frames

Flag bit 0: the header is zstd-compressed (kept only when smaller: tensor names repeat their
prefixes, and at loose bounds an uncompressed header is ~10% of a payload).

The header is msgpack (data only, never pickle) and compact, because at loose bounds a
payload is a few kB: ``{"s": stream info (id, sequence number, state fingerprint, keyframe),
"m": meta, "c": [[codec name, params], ...] (each distinct codec once), "t": [[name, dtype, shape,
codec index, frame length, crc32], ...]}``; frame offsets follow from the lengths. Decoding needs nothing but these bytes; anything truncated, corrupted, of another version
or malformed is refused with a ``PayloadError`` that says what was wrong.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

from .errors import PayloadError
from .frame import zstd_compress, zstd_decompress

MAGIC = b"FPZ\x00"
FLAG_ZSTD_HEADER = 1
VERSION = 1
_PREFIX = struct.Struct("<4sHHII")
_MAX_HEADER = 64 * 1024 * 1024
#: largest tensor a payload may declare (2**34 elements); decoders apply a byte budget too.
MAX_ELEMENTS = 2**34
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
          "uint8", "bool")


@dataclass
class TensorEntry:
    name: str
    dtype: str  # the dtype the receiver gets back (bfloat16 included)
    shape: tuple[int, ...]
    codec: str
    params: dict[str, Any]
    offset: int = 0
    length: int = 0
    crc32: int = 0


@dataclass
class Envelope:
    """Header fields + frames; ``pack``/``unpack`` are the only (de)serialisers."""

    tensors: list[TensorEntry]
    frames: list[bytes]
    stream: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def pack(self) -> bytes:
        codecs: list[list] = []
        index: dict[str, int] = {}
        entries = []
        for entry, frame in zip(self.tensors, self.frames, strict=True):
            key = repr((entry.codec, sorted(entry.params.items())))
            if key not in index:
                index[key] = len(codecs)
                codecs.append([entry.codec, entry.params])
            entries.append([entry.name, entry.dtype, list(entry.shape), index[key], len(frame),
                            zlib.crc32(frame)])
        header = msgpack.packb(
            {"s": self.stream, "m": self.meta, "c": codecs, "t": entries}, use_bin_type=True
        )
        flags = 0
        packed = zstd_compress(header)
        if len(packed) < len(header):
            header, flags = packed, FLAG_ZSTD_HEADER
        prefix = _PREFIX.pack(MAGIC, VERSION, flags, len(header), zlib.crc32(header))
        return b"".join([prefix, header, *self.frames])


def unpack(payload: bytes) -> Envelope:
    """Parse and verify a payload; frames are returned as zero-copy slices."""
    data = memoryview(payload)
    if len(data) < _PREFIX.size:
        raise PayloadError(f"payload is {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, flags, hlen, hcrc = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise PayloadError("not a fedpress payload (bad magic bytes)")
    if version != VERSION:
        raise PayloadError(f"payload format version {version} is not supported (this is {VERSION})")
    if flags & ~FLAG_ZSTD_HEADER:
        raise PayloadError(f"payload prefix has unknown flag bits set ({flags:#x}): corrupted")
    if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise PayloadError("payload is truncated inside its header")
    hbytes = bytes(data[_PREFIX.size : _PREFIX.size + hlen])
    if zlib.crc32(hbytes) != hcrc:
        raise PayloadError("payload header is corrupted (checksum mismatch)")
    if flags & FLAG_ZSTD_HEADER:
        hbytes = _inflate_header(hbytes)
    try:
        header = msgpack.unpackb(hbytes, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types on malformed data
        raise PayloadError(f"payload header is malformed ({exc})") from None
    tensors = _validate_header(header)
    body = data[_PREFIX.size + hlen :]
    expected = sum(t.length for t in tensors)
    if len(body) < expected:
        raise PayloadError(f"payload is truncated: {len(body)} of {expected} frame bytes present")
    if len(body) > expected:
        raise PayloadError(f"payload has {len(body) - expected} unexpected trailing bytes")
    frames = []
    for t in tensors:
        frame = bytes(body[t.offset : t.offset + t.length])
        if zlib.crc32(frame) != t.crc32:
            raise PayloadError(f"tensor {t.name!r} is corrupted (checksum mismatch)")
        frames.append(frame)
    return Envelope(tensors, frames, header.get("s"), header.get("m") or {})


def _inflate_header(data: bytes) -> bytes:
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"payload header is malformed ({exc})") from None
    if not 0 <= size <= _MAX_HEADER:
        raise PayloadError("payload header declares an invalid size")
    return zstd_decompress(data, size)


def _validate_header(header: Any) -> list[TensorEntry]:
    if not isinstance(header, dict) or not isinstance(header.get("t"), list):
        raise PayloadError("payload header has no tensor list")
    codecs = header.get("c")
    if not isinstance(codecs, list) or not all(
        isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], dict)
        for c in codecs
    ):
        raise PayloadError("payload codec table is malformed")
    if not isinstance(header.get("m", {}), dict):
        raise PayloadError("payload meta is malformed")
    stream = header.get("s")
    if stream is not None and not (
        isinstance(stream, dict)
        and isinstance(stream.get("id"), str)
        and isinstance(stream.get("seq"), int)
        and isinstance(stream.get("fingerprint"), str)
    ):
        raise PayloadError("payload stream information is malformed")
    out, names, offset = [], set(), 0
    for i, t in enumerate(header["t"]):
        try:
            name, dtype, shape, ci, length, crc = t
            entry = TensorEntry(
                name=name, dtype=dtype, shape=tuple(shape), codec=codecs[ci][0],
                params=codecs[ci][1], offset=offset, length=length, crc32=crc,
            )
        except (ValueError, TypeError, IndexError):
            raise PayloadError(f"tensor entry {i} of the header is malformed") from None
        ok = (
            isinstance(entry.name, str) and entry.dtype in DTYPES
            and all(isinstance(d, int) and 0 <= d < 2**40 for d in entry.shape)
            and math.prod(entry.shape) <= MAX_ELEMENTS
            and isinstance(entry.length, int) and entry.length >= 0 and isinstance(entry.crc32, int)
        )
        if not ok:
            raise PayloadError(f"tensor entry {i} ({entry.name!r}) of the header is invalid")
        if entry.name in names:
            raise PayloadError(f"tensor {entry.name!r} appears twice in the payload")
        names.add(entry.name)
        offset += entry.length
        out.append(entry)
    return out
