"""The wire format: one self-describing, versioned payload for a set of named tensors.

Layout (little endian)::

    b"FPZ" 0x00 | u16 version | u16 flags | u32 header length | u32 crc32(header) | header | frames

Flag bit 0: the header is zstd-compressed (kept only when smaller: tensor names repeat their
prefixes, and at loose bounds an uncompressed header is ~10% of a payload).

The header is msgpack (data only, never pickle) and compact, because at loose bounds a payload is
a few kB: ``{"s": stream info (id, sequence number, state fingerprint, keyframe), "m": meta,
"c": [[codec name, params], ...] (each distinct codec once), "t": [[name, dtype, shape, codec
index, frame length, crc32], ...]}``; frame offsets follow from the lengths.

Receiving is strict and bounded: the header is decoded into a typed schema (``msgspec`` Structs,
wrong types refused), checked against ``PayloadLimits`` (tensor count, declared elements and
bytes, header, meta size and depth) and, optionally, against an allow-list of codec names, all
before a frame is read. ``read_manifest`` stops there, so a server can check names and shapes
against its model before it decodes anything.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgpack
import msgspec

from .errors import PayloadError
from .frame import inflate_capped, zstd_compress
from .limits import DEFAULT_LIMITS, PayloadLimits

MAGIC = b"FPZ\x00"
FLAG_ZSTD_HEADER = 1
VERSION = 1
_PREFIX = struct.Struct("<4sHHII")
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
          "uint8", "bool")
#: bytes per element the decoder computes in (bfloat16 decodes through float32).
COMPUTE_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 4, "int64": 8,
                    "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
#: largest single dimension a header may declare.
MAX_DIM = 2**40

# ------------------------------------------------------------------ typed header schema
_Dim = Annotated[int, msgspec.Meta(ge=0, lt=MAX_DIM)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
ParamValue = bool | int | float | str | None


class _Stream(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    seq: _Count
    fingerprint: str
    keyframe: bool = False


class _CodecRef(msgspec.Struct, array_like=True):
    name: str
    params: dict[str, ParamValue]


class _Entry(msgspec.Struct, array_like=True):
    name: str
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: list[_Dim]
    codec: _Count
    length: _Count
    crc32: Annotated[int, msgspec.Meta(ge=0, lt=2**32)]


class _Header(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    s: _Stream | None = None
    m: msgspec.Raw = msgspec.Raw(b"\x80")  # checked for size and depth before it is decoded
    c: list[_CodecRef]
    t: list[_Entry]


_HEADER_DECODER = msgspec.msgpack.Decoder(_Header)
_META_DECODER = msgspec.msgpack.Decoder(dict[str, Any])


@dataclass
class TensorEntry:
    """One tensor as the header declares it (``offset`` is into the frame area)."""

    name: str
    dtype: str  # the dtype the receiver gets back (bfloat16 included)
    shape: tuple[int, ...]
    codec: str
    params: dict[str, Any]
    offset: int = 0
    length: int = 0
    crc32: int = 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded tensor in the dtype the decoder computes in."""
        return self.size * COMPUTE_ITEMSIZE[self.dtype]


@dataclass
class Envelope:
    """Header fields + frames; ``pack``/``unpack`` are the only (de)serialisers."""

    tensors: list[TensorEntry]
    frames: list[bytes | memoryview]  # received frames are views into the payload
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


@dataclass
class Manifest:
    """What a payload declares, checked against the limits; no frame has been read."""

    tensors: list[TensorEntry]
    stream: dict[str, Any] | None
    meta: dict[str, Any]
    body_offset: int


def read_manifest(
    payload: bytes,
    limits: PayloadLimits | None = None,
    accept: Collection[str] | None = None,
) -> list[TensorEntry]:
    """Names, dtypes, shapes and codecs of a payload, cheaply and under ``limits``.

    A receiver checks these against its model *before* decoding. Raises ``PayloadError`` (one
    line) on anything malformed, over a limit, or naming a codec outside ``accept``.
    """
    return parse_manifest(payload, limits, accept).tensors


def parse_manifest(
    payload: bytes,
    limits: PayloadLimits | None = None,
    accept: Collection[str] | None = None,
) -> Manifest:
    """The verified header of a payload (prefix, checksum, schema, limits, allow-list)."""
    limits = limits or DEFAULT_LIMITS
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
    if hlen > limits.max_header_bytes:
        raise PayloadError(
            f"payload header is {hlen} bytes, over the limit of {limits.max_header_bytes} "
            "(max_header_bytes)"
        )
    if _PREFIX.size + hlen > len(data):
        raise PayloadError("payload is truncated inside its header")
    hbytes = bytes(data[_PREFIX.size : _PREFIX.size + hlen])
    if zlib.crc32(hbytes) != hcrc:
        raise PayloadError("payload header is corrupted (checksum mismatch)")
    if flags & FLAG_ZSTD_HEADER:
        hbytes = inflate_capped(hbytes, limits.max_inflated_header_bytes, "payload header")
    elif hlen > limits.max_inflated_header_bytes:
        raise PayloadError(f"payload header is {hlen} bytes, over max_inflated_header_bytes")
    try:
        header = _HEADER_DECODER.decode(hbytes)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"payload header is invalid ({exc})") from None
    except (msgspec.DecodeError, RecursionError, MemoryError) as exc:
        raise PayloadError(f"payload header is malformed ({exc})") from None
    tensors = _entries(header, limits, accept)
    meta = _meta(header.m, limits)
    stream = None
    if header.s is not None:
        stream = {"id": header.s.id, "seq": header.s.seq, "fingerprint": header.s.fingerprint,
                  "keyframe": header.s.keyframe}
    return Manifest(tensors, stream, meta, _PREFIX.size + hlen)


def unpack(
    payload: bytes,
    limits: PayloadLimits | None = None,
    accept: Collection[str] | None = None,
) -> Envelope:
    """Parse and verify a payload: the manifest first, then each frame's length and CRC."""
    man = parse_manifest(payload, limits, accept)
    body = memoryview(payload)[man.body_offset :]
    expected = sum(t.length for t in man.tensors)
    if len(body) < expected:
        raise PayloadError(f"payload is truncated: {len(body)} of {expected} frame bytes present")
    if len(body) > expected:
        raise PayloadError(f"payload has {len(body) - expected} unexpected trailing bytes")
    frames = []
    for t in man.tensors:
        frame = body[t.offset : t.offset + t.length]  # a view: frames are not copied
        if zlib.crc32(frame) != t.crc32:
            raise PayloadError(f"tensor {t.name!r} is corrupted (checksum mismatch)")
        frames.append(frame)
    return Envelope(man.tensors, frames, man.stream, man.meta)


def _entries(
    header: _Header, limits: PayloadLimits, accept: Collection[str] | None
) -> list[TensorEntry]:
    if len(header.t) > limits.max_tensors:
        raise PayloadError(
            f"payload declares {len(header.t)} tensors, over the limit of {limits.max_tensors} "
            "(max_tensors)"
        )
    if accept is not None:
        for ref in header.c:
            if ref.name not in accept:
                raise PayloadError(
                    f"payload uses codec {ref.name!r}, which this receiver does not accept "
                    f"(accepted: {', '.join(sorted(accept)) or 'none'})"
                )
    out, names, offset = [], set(), 0
    total_elements = total_bytes = 0
    for i, t in enumerate(header.t):
        if t.codec >= len(header.c):
            raise PayloadError(f"tensor entry {i} ({t.name!r}) names codec {t.codec}, not in the table")
        ref = header.c[t.codec]
        entry = TensorEntry(t.name, t.dtype, tuple(t.shape), ref.name, ref.params, offset,
                            t.length, t.crc32)
        if entry.name in names:
            raise PayloadError(f"tensor {entry.name!r} appears twice in the payload")
        names.add(entry.name)
        nbytes = entry.nbytes
        if nbytes > limits.max_tensor_bytes:
            raise PayloadError(
                f"tensor {entry.name!r} declares {nbytes} bytes, over the limit of "
                f"{limits.max_tensor_bytes} (max_tensor_bytes)"
            )
        total_elements += entry.size
        total_bytes += nbytes
        if total_elements > limits.max_total_elements:
            raise PayloadError(
                f"payload declares more than {limits.max_total_elements} elements in all "
                "(max_total_elements)"
            )
        if total_bytes > limits.max_total_bytes:
            raise PayloadError(
                f"payload declares more than {limits.max_total_bytes} output bytes in all "
                "(max_total_bytes)"
            )
        offset += entry.length
        out.append(entry)
    return out


def _meta(raw: msgspec.Raw, limits: PayloadLimits) -> dict[str, Any]:
    if len(raw) > limits.max_meta_bytes:
        raise PayloadError(
            f"payload meta is {len(raw)} bytes, over the limit of {limits.max_meta_bytes} "
            "(max_meta_bytes)"
        )
    try:
        meta = _META_DECODER.decode(raw)
    except msgspec.ValidationError:
        raise PayloadError("payload meta is not a map with string keys") from None
    except (msgspec.DecodeError, RecursionError, MemoryError) as exc:
        raise PayloadError(f"payload meta is malformed ({exc})") from None
    if _depth(meta) > limits.max_meta_depth:
        raise PayloadError(
            f"payload meta is nested deeper than {limits.max_meta_depth} levels (max_meta_depth)"
        )
    return meta


def _depth(value: Any) -> int:
    """Nesting depth of maps and lists, computed without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in v)
    return deepest
