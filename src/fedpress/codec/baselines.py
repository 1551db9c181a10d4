"""Baseline codecs that fedpress's own codecs are measured against.

* ``sz3``, ``sz3-nopred``, ``zfp``: library codecs with a pointwise bound. We work out the
  absolute bound ourselves and pass it to the library. The encoder then decodes its own output,
  and any element that breaks the bound is stored verbatim, so ``|x - x_hat| <= bound`` holds on
  what ``decode`` returns, whatever the library does.
* ``qsgd``, ``topk``, ``fp16``: lossy with no pointwise bound (gradient-compression baselines).
* ``zstd``, ``raw``: lossless, for any numeric dtype, NaN/Inf included.

The bytes a C library is about to decode are first checked against a CRC32 stored in the frame:
zfpy segfaults on truncated streams, and a crash cannot be caught as a ``PayloadError``.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import zfpy
from pysz import sz, szAlgorithm, szConfig, szErrorBoundMode

from .base import (
    SUPPORTED_DTYPES,
    BoundedCodec,
    Codec,
    LayerState,
    check_dtype,
    check_finite,
    native,
    register_codec,
)
from .errors import CodecError, PayloadError
from .frame import (
    FrameReader,
    FrameWriter,
    read_verbatim,
    write_verbatim,
    zstd_compress,
    zstd_decompress,
)
from .libheaders import check_sz3_stream, checked_zfp_stream

KIND_EMPTY, KIND_EXACT, KIND_LOSSY = 0, 1, 2
#: more patched elements than this share of the tensor -> store it exactly instead.
MAX_PATCH_SHARE = 0.25
FP16_MAX = float(np.finfo(np.float16).max)


# --- shared helpers ---------------------------------------------------------------------------


def guard_decode(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Turn any stray low-level error raised while decoding into a ``PayloadError``.

    Length checks come first; this is the backstop, so that a malformed frame never surfaces as
    IndexError, struct.error, a numpy ValueError or a MemoryError from a forged size field.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> np.ndarray:
        try:
            return fn(*args, **kwargs)
        except CodecError:
            raise
        except (ValueError, IndexError, TypeError, OverflowError, MemoryError, struct.error) as exc:
            raise PayloadError(f"malformed frame ({type(exc).__name__}: {exc})") from None

    return wrapper


def element_count(shape: tuple[int, ...]) -> int:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise PayloadError(f"negative dimension in shape {dims}")
    return math.prod(dims)


def float_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype).newbyteorder("=")
    if dt.name not in SUPPORTED_DTYPES:
        raise CodecError(f"unsupported dtype {dt.name}; codecs take {', '.join(SUPPORTED_DTYPES)}")
    return dt


def numeric_dtype(dtype: Any) -> np.dtype:
    """Lossless codecs take any numeric dtype: bool, ints, floats, complex."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt.kind not in "biufc":
        raise CodecError(f"lossless codecs take numeric dtypes, not {dt}")
    return dt


def le_bytes(x: np.ndarray) -> bytes:
    """Little-endian bytes of ``x`` in C order, so that frames do not depend on the host."""
    return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()


def from_le_bytes(raw: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A writable array of ``dtype`` from little-endian bytes (one copy, none if ``raw`` is a
    writable buffer of the right byte order)."""
    n = element_count(shape)
    if len(raw) != n * dtype.itemsize:
        raise PayloadError(f"frame holds {len(raw)} bytes, expected {n * dtype.itemsize}")
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if arr.dtype != dtype or not arr.flags.writeable:
        arr = arr.astype(dtype)
    return arr.reshape(shape)


def exact_frame(x: np.ndarray) -> bytes:
    w = FrameWriter()
    w.pack("B", KIND_EXACT)
    w.section(zstd_compress(le_bytes(x)))
    return w.getvalue()


def work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype handed to SZ3/ZFP: they take float32/float64, so float16 goes in as float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def backend_bound(abs_eb: float, dtype: np.dtype) -> float:
    """The bound for the library. Float16 output is rounded from float32 reconstructions.

    When ``x`` is a float16 value and ``|x - y| <= e``, the nearest float16 to ``y`` is no
    farther from ``y`` than ``x``, so it lies within ``2e`` of ``x``. Passing ``e/2`` keeps
    the bound on the float16 result.
    """
    return abs_eb / 2 if dtype == np.float16 else abs_eb


def to_output(recon: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a library reconstruction to the output dtype, clipped to its finite range.

    The input is finite and inside that range, so clipping only moves a value closer to it. It
    keeps a float32 value just above 65504 from turning into an infinite float16.
    """
    top = float(np.finfo(dtype).max)
    if recon.flags.writeable:
        np.clip(recon, -top, top, out=recon)  # the library's array is ours: no copy
    else:
        recon = np.clip(recon, -top, top)
    return recon.astype(dtype, copy=False)


def violations(x: np.ndarray, recon: np.ndarray, abs_eb: float) -> np.ndarray:
    """Flat positions where the output-dtype reconstruction breaks the bound (checked in f64)."""
    err = np.abs(recon.reshape(-1).astype(np.float64) - x.reshape(-1).astype(np.float64))
    return np.flatnonzero(~(err <= abs_eb))


# --- pointwise-bounded library codecs ----------------------------------------------------------


class LibraryBoundedCodec(BoundedCodec):
    """Shared body of the SZ3/ZFP codecs: empty and exact cases, verification, patching.

    Frame: kind byte; for lossy frames the absolute bound (f64), CRC32 of the library stream,
    the stream, then the verbatim patches (delta-coded positions + exact values).
    """

    #: elements patched by the last ``encode`` (diagnostics: how often the library broke its bound).
    last_patched: int = 0

    def compress(self, flat: np.ndarray, shape: tuple[int, ...], eb: float) -> bytes:
        raise NotImplementedError

    def decompress(self, blob: bytes, n: int, dtype: np.dtype) -> np.ndarray:
        """Flat array of ``n`` elements in ``dtype`` (the work dtype)."""
        raise NotImplementedError

    def library_stream(
        self, blob: bytes, shape: tuple[int, ...], work: np.dtype, eb: float
    ) -> bytes:
        """The stream to hand to the library, after checking its header against the entry.

        Raises ``PayloadError`` when the stream's own header disagrees with the shape, dtype or
        bound (``libheaders.py``); the C library never sees such a stream.
        """
        return blob

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        check_dtype(x)
        check_finite(x)
        x = np.asarray(x, dtype=x.dtype.newbyteorder("="))  # patches are stored in native order
        self.last_patched = 0
        if x.size == 0:
            return struct.pack("<B", KIND_EMPTY)
        abs_eb = self.bound.absolute(x)
        work = work_dtype(x.dtype)
        eb = backend_bound(abs_eb, x.dtype)
        if not (np.isfinite(eb) and eb >= np.finfo(work).tiny):
            return exact_frame(x)  # zero bound (constant tensor) or none the library can use
        flat = np.ascontiguousarray(x.reshape(-1), dtype=work)
        try:
            blob = self.compress(flat, x.shape, eb)
            checked = self.library_stream(blob, x.shape, work, eb)  # as the decoder will
            recon = to_output(self.decompress(checked, x.size, work), x.dtype)
        except Exception:  # a library failure must not break the promise
            return exact_frame(x)
        bad = violations(x, recon, abs_eb)
        if bad.size > MAX_PATCH_SHARE * x.size:
            return exact_frame(x)
        self.last_patched = int(bad.size)
        w = FrameWriter()
        w.pack("BdI", KIND_LOSSY, abs_eb, zlib.crc32(blob))
        w.section(blob)
        write_verbatim(w, bad.astype(np.int64), x.reshape(-1)[bad])
        frame = w.getvalue()
        if len(frame) >= x.nbytes:
            frame = min(frame, exact_frame(x), key=len)
        return frame

    @guard_decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = float_dtype(dtype)
        n = element_count(shape)
        r = FrameReader(frame)
        (kind,) = r.unpack("B")
        if (kind == KIND_EMPTY) != (n == 0):
            raise PayloadError(f"{self.name} frame kind {kind} does not fit {n} elements")
        if kind == KIND_EMPTY:
            r.done()
            return np.zeros(shape, dtype=dtype)
        if kind == KIND_EXACT:
            raw = zstd_decompress(r.section(), n * dtype.itemsize)
            r.done()
            return from_le_bytes(raw, shape, dtype)
        if kind != KIND_LOSSY:
            raise PayloadError(f"unknown {self.name} frame kind {kind}")
        abs_eb, crc = r.unpack("dI")
        if not (np.isfinite(abs_eb) and abs_eb > 0):
            raise PayloadError(f"frame carries an invalid error bound {abs_eb!r}")
        blob = r.section()
        if zlib.crc32(blob) != crc:
            raise PayloadError(f"{self.name} stream fails its CRC32 check")
        index, values = read_verbatim(r, n, dtype.newbyteorder("="))
        r.done()
        work = work_dtype(dtype)
        blob = self.library_stream(blob, tuple(shape), work, backend_bound(abs_eb, dtype))
        try:
            recon = self.decompress(blob, n, work)
        except Exception as exc:  # library errors come in every flavour
            raise PayloadError(f"{self.name} stream does not decode ({exc})") from None
        out = to_output(recon, dtype)
        out[index] = values
        return out.reshape(shape)


class Sz3Base(LibraryBoundedCodec):
    """SZ3 on the flattened tensor in ABS mode; subclasses pick the predictor."""

    algorithm: Any = szAlgorithm.INTERP_LORENZO

    def __init__(self, mode: str = "rel", eb: float = 1e-2) -> None:
        super().__init__(mode, eb)

    def compress(self, flat: np.ndarray, shape: tuple[int, ...], eb: float) -> bytes:
        cfg = szConfig()
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = float(eb)
        cfg.cmprAlgo = self.algorithm
        return sz.compress(flat, cfg)[0].tobytes()

    def decompress(self, blob: bytes, n: int, dtype: np.dtype) -> np.ndarray:
        out = sz.decompress(np.frombuffer(blob, dtype=np.uint8), dtype.type, (n,))[0]
        return checked_output(out, n, dtype, self.name)

    def library_stream(
        self, blob: bytes, shape: tuple[int, ...], work: np.dtype, eb: float
    ) -> bytes:
        check_sz3_stream(blob, math.prod(shape), int(self.algorithm), eb)
        return blob


@register_codec
class Sz3Codec(Sz3Base):
    """SZ3 (interpolation + Lorenzo predictor) on the flattened tensor; hard pointwise bound."""

    name = "sz3"
    algorithm = szAlgorithm.INTERP_LORENZO


@register_codec
class Sz3NoPredCodec(Sz3Base):
    """SZ3 with no predictor (plain linear quantization + SZ3's Huffman/zstd); hard bound."""

    name = "sz3-nopred"
    algorithm = szAlgorithm.NOPRED


@register_codec
class ZfpCodec(LibraryBoundedCodec):
    """ZFP fixed-accuracy mode (tolerance = the absolute bound); hard pointwise bound.

    Matrices whose rows and columns are both multiples of 4 (at least 4) go in as 2-D, which
    packs 4x4 blocks and ran about 1.7x faster than 1-D on gaussian weights. Anything else,
    e.g. conv kernels (O,I,3,3) where 3-wide blocks would be padded, goes in flattened.
    """

    name = "zfp"

    def __init__(self, mode: str = "rel", eb: float = 1e-2) -> None:
        super().__init__(mode, eb)

    def compress(self, flat: np.ndarray, shape: tuple[int, ...], eb: float) -> bytes:
        return zfpy.compress_numpy(flat.reshape(zfp_layout(shape)), tolerance=float(eb))

    def decompress(self, blob: bytes, n: int, dtype: np.dtype) -> np.ndarray:
        return checked_output(zfpy.decompress_numpy(bytes(blob)), n, dtype, self.name)

    def library_stream(
        self, blob: bytes, shape: tuple[int, ...], work: np.dtype, eb: float
    ) -> bytes:
        return checked_zfp_stream(blob, zfp_layout(shape), work, eb)


def zfp_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    n = math.prod(shape)
    cols = shape[-1] if shape else 1
    rows = n // cols if cols else 0
    if len(shape) >= 2 and cols >= 4 and rows >= 4 and cols % 4 == 0 and rows % 4 == 0:
        return (rows, cols)
    return (n,)


def checked_output(out: np.ndarray, n: int, dtype: np.dtype, name: str) -> np.ndarray:
    if out.dtype != dtype or out.size != n:
        raise PayloadError(
            f"{name} stream holds {out.size} {out.dtype} values, expected {n} {dtype}"
        )
    return out.reshape(-1)


# --- lossy, not pointwise-bounded ---------------------------------------------------------------


@register_codec
class QsgdCodec(Codec):
    """QSGD (Alistarh et al. 2017) with max-norm scaling: unbiased, with no pointwise bound.

    ``|x_i| / max|x| * levels`` is rounded stochastically to a neighbouring integer level, so
    ``E[x_hat] = x``. The error per element is below ``max|x| / levels``. ``seed`` fixes this
    instance's random stream. Each later ``encode`` draws fresh bits, so repeated rounds round
    independently, and a new instance with the same seed replays the same sequence. Frame: norm
    (f64, exact for every input dtype), zstd(levels as uint8/uint16), zstd(packed signs of the
    non-zero levels).
    """

    name = "qsgd"
    lossy = True
    pointwise_bound = False
    shareable = False  # each instance owns its random stream

    def __init__(self, levels: int = 256, seed: int = 0) -> None:
        if int(levels) != levels or not 1 <= levels <= 65535:
            raise CodecError(f"qsgd levels must be an integer in 1..65535, got {levels!r}")
        self.levels = int(levels)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._code = np.dtype("<u1") if self.levels <= 255 else np.dtype("<u2")

    def params(self) -> dict[str, Any]:
        return {"levels": self.levels, "seed": self.seed}

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        check_dtype(x)
        check_finite(x)
        mag = np.abs(x.reshape(-1).astype(np.float64))
        norm = float(mag.max()) if mag.size else 0.0
        w = FrameWriter()
        w.pack("d", norm)
        if norm == 0.0:
            return w.getvalue()
        scaled = mag / norm * self.levels  # in [0, levels]; dividing first cannot overflow
        level = np.floor(scaled)
        level += self._rng.random(level.size) < (scaled - level)
        codes = np.minimum(level, self.levels).astype(self._code)
        negative = x.reshape(-1)[codes != 0] < 0
        w.section(zstd_compress(codes.tobytes()))
        w.section(zstd_compress(np.packbits(negative).tobytes()))
        return w.getvalue()

    @guard_decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = float_dtype(dtype)
        n = element_count(shape)
        r = FrameReader(frame)
        (norm,) = r.unpack("d")
        if not (np.isfinite(norm) and 0 <= norm <= float(np.finfo(dtype).max)):
            raise PayloadError(f"qsgd frame carries an invalid norm {norm!r} for {dtype}")
        if norm == 0.0 or n == 0:
            r.done()
            return np.zeros(shape, dtype=dtype)
        raw = zstd_decompress(r.section(), n * self._code.itemsize)
        codes = np.frombuffer(raw, dtype=self._code)
        if codes.max() > self.levels:
            raise PayloadError("qsgd level out of range")
        nz = np.flatnonzero(codes)
        packed = zstd_decompress(r.section(), (nz.size + 7) // 8)
        r.done()
        negative = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=nz.size)
        recon = norm * codes.astype(np.float64) / self.levels
        recon[nz[negative == 1]] *= -1
        return recon.astype(dtype).reshape(shape)


@register_codec
class TopkCodec(Codec):
    """Top-k sparsification: keeps the ``round(ratio*n)`` (at least 1) largest magnitudes.

    Kept values are exact (stored in the input dtype). Every other element decodes to 0, so
    there is no pointwise bound. Positions are delta-coded and zstd-compressed.
    """

    name = "topk"
    lossy = True
    pointwise_bound = False

    def __init__(self, ratio: float = 0.01) -> None:
        if not (np.isfinite(ratio) and 0 < ratio <= 1):
            raise CodecError(f"topk ratio must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio}

    def kept(self, n: int) -> int:
        return 0 if n == 0 else min(n, max(1, round(self.ratio * n)))

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        check_dtype(x)
        check_finite(x)
        flat = x.reshape(-1)
        n, k = flat.size, self.kept(flat.size)
        if k < n:
            index = np.sort(np.argpartition(np.abs(flat), n - k)[n - k :])
        else:
            index = np.arange(n)
        w = FrameWriter()
        write_verbatim(w, index.astype(np.int64), flat[index].astype(flat.dtype.newbyteorder("<")))
        return w.getvalue()

    @guard_decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = float_dtype(dtype)
        n = element_count(shape)
        r = FrameReader(frame)
        index, values = read_verbatim(r, n, dtype.newbyteorder("<"))
        r.done()
        if index.size != self.kept(n):
            raise PayloadError(f"topk frame keeps {index.size} values, expected {self.kept(n)}")
        out = np.zeros(n, dtype=dtype)
        out[index] = values
        return out.reshape(shape)


@register_codec
class Fp16Codec(Codec):
    """Cast to float16: relative error <= 2**-11 within float16's normal range.

    Below 6.1e-5 the error is absolute (<= 2**-25). Beyond +-65504 values are clipped, so there
    is no pointwise bound in the ``rel`` sense. NaN/Inf are refused.
    """

    name = "fp16"
    lossy = True
    pointwise_bound = False

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        check_dtype(x)
        check_finite(x)
        return np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()

    @guard_decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = float_dtype(dtype)
        return from_le_bytes(frame, shape, np.dtype(np.float16)).astype(dtype)


# --- lossless ----------------------------------------------------------------------------------


@register_codec
class RawCodec(Codec):
    """The little-endian bytes, uncompressed: exact for any numeric dtype, NaN/Inf included."""

    name = "raw"
    lossy = False

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        numeric_dtype(x.dtype)
        return le_bytes(x)

    @guard_decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        return from_le_bytes(frame, shape, numeric_dtype(dtype))


@register_codec
class ZstdCodec(Codec):
    """Zstandard (level 3), exact for any numeric dtype, NaN/Inf included.

    Floats are also tried byte-shuffled (all first bytes, then all second bytes, ...), which
    groups sign and exponent bytes so zstd finds their redundancy; the smallest of raw, plain
    and shuffled is kept (a 1-byte mode tag says which).
    """

    name = "zstd"
    lossy = False

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        numeric_dtype(x.dtype)
        raw = le_bytes(x)
        options = [b"\x00" + raw, b"\x01" + zstd_compress(raw)]
        item = x.dtype.itemsize
        if item > 1 and x.size > 1:
            shuffled = np.frombuffer(raw, dtype=np.uint8).reshape(-1, item).T.tobytes()
            options.append(b"\x02" + zstd_compress(shuffled))
        return min(options, key=len)

    @guard_decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = numeric_dtype(dtype)
        if not frame:
            raise PayloadError("zstd frame is empty")
        mode, body = frame[0], memoryview(frame)[1:]
        size = element_count(shape) * dtype.itemsize
        if mode == 0:
            raw = body
        elif mode == 1:
            raw = zstd_decompress(body, size)
        elif mode == 2:
            flat = np.frombuffer(zstd_decompress(body, size), dtype=np.uint8)
            out = np.empty(size, dtype=np.uint8)  # unshuffled straight into the output bytes
            out.reshape(-1, dtype.itemsize)[:] = flat.reshape(dtype.itemsize, -1).T
            del flat
            raw = out
        else:
            raise PayloadError(f"unknown zstd frame mode {mode}")
        return from_le_bytes(raw, shape, dtype)
