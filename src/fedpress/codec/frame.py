"""Little binary helpers for a codec's own frame layout, with length checks on every read."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import zstandard

from .errors import PayloadError


class FrameWriter:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def pack(self, fmt: str, *values: object) -> None:
        self._parts.append(struct.pack("<" + fmt, *values))

    def section(self, data: bytes) -> None:
        """A length-prefixed byte section."""
        self.pack("I", len(data))
        self._parts.append(bytes(data))

    def checked_section(self, data: bytes) -> None:
        """A section with its own crc32, for frames that may be decoded outside a payload."""
        self.pack("I", zlib.crc32(data))
        self.section(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class FrameReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self._pos + size > len(self._data):
            raise PayloadError("frame is truncated")
        out = struct.unpack_from("<" + fmt, self._data, self._pos)
        self._pos += size
        return out

    def section(self) -> memoryview:
        """The next length-prefixed section, as a view (no copy)."""
        (n,) = self.unpack("I")
        if self._pos + n > len(self._data):
            raise PayloadError("frame is truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def checked_section(self) -> bytes:
        (crc,) = self.unpack("I")
        data = self.section()
        if zlib.crc32(data) != crc:
            raise PayloadError("frame section is corrupted (checksum mismatch)")
        return data

    def done(self) -> None:
        if self._pos != len(self._data):
            raise PayloadError(f"frame has {len(self._data) - self._pos} unexpected trailing bytes")


_ZSTD_LEVEL = 3


def zstd_compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)


def zstd_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress one zstd frame of exactly ``expected_size`` bytes, with nothing after it.

    The declared content size is checked before any allocation (a forged size field gives a
    ``PayloadError``, not a ``MemoryError``), and trailing bytes are refused.
    """
    try:
        declared = zstandard.frame_content_size(data)
        if declared != expected_size:
            raise PayloadError(
                f"lossless section declares {declared} bytes, expected {expected_size}"
            )
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = dobj.decompress(data)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"lossless section is corrupt ({exc})") from None
    if not dobj.eof or dobj.unused_data or len(out) != expected_size:
        raise PayloadError("lossless section is truncated, overlong or has trailing bytes")
    return out


def inflate_capped(data: bytes, cap: int, what: str = "section") -> bytes:
    """Inflate one zstd frame whose output may not exceed ``cap`` bytes (a hard cap).

    The frame must declare its size, the size must be within ``cap``, and the output is read
    through a stream reader that never produces more than ``cap + 1`` bytes, whatever the frame's
    blocks claim; then the strict check of ``zstd_decompress`` runs (exact size, no trailing bytes).
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"{what} is malformed ({exc})") from None
    if declared < 0:
        raise PayloadError(f"{what} does not declare its inflated size")
    if declared > cap:
        raise PayloadError(f"{what} inflates to {declared} bytes, over the limit of {cap}")
    got = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
            while got <= declared:
                chunk = reader.read(min(declared + 1 - got, 1 << 20))
                if not chunk:
                    break
                got += len(chunk)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"{what} is corrupt ({exc})") from None
    if got != declared:
        raise PayloadError(f"{what} inflates to a size other than the {declared} bytes it declares")
    return zstd_decompress(data, declared)


def write_verbatim(w: FrameWriter, index: np.ndarray, values: np.ndarray) -> None:
    """Positions (delta-coded) and exact values of elements stored outside the quantizer."""
    w.pack("I", index.size)
    if index.size:
        deltas = np.diff(index, prepend=0).astype(np.int64)
        w.section(zstd_compress(deltas.tobytes()))
        w.section(values.tobytes())


def read_verbatim(r: FrameReader, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    (k,) = r.unpack("I")
    if k > n:
        raise PayloadError("more verbatim values than elements")
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype)
    index = np.cumsum(np.frombuffer(zstd_decompress(r.section(), 8 * k), dtype=np.int64))
    raw = r.section()
    if len(raw) != k * np.dtype(dtype).itemsize:
        raise PayloadError("verbatim values have the wrong size")
    if index.min() < 0 or index.max() >= n or np.any(np.diff(index) <= 0):
        raise PayloadError("verbatim positions out of range")
    return index, np.frombuffer(raw, dtype=dtype).copy()
