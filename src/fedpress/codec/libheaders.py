"""Checks of zfp and SZ3 streams against what the wire entry says, before the C library runs.

Why: zfp and SZ3 trust their own stream headers. A zfp header that claims a huge array, with
every CRC recomputed (a CRC stops accidents, not forgery), makes zfpy allocate and read out of
bounds (SIGSEGV); SZ3 writes as many values as its config says. The receiver knows the shape,
dtype and bound from the wire entry and the frame, so it rebuilds the header the library would
have written and refuses any stream whose header differs, in Python, before calling the library.

zfp header (a little-endian bit stream, least significant bit first): 32 bits of magic
(``"zfp"`` + codec version), 52 bits of field metadata (2 bits scalar type, 2 bits dims - 1, the
sizes - 1 in 48/24/16/12 bits per dimension, x fastest), then the 12-bit short mode (or 12 bits
``0xfff`` + 64 bits of full mode). The magic and mode are taken from the installed library by
compressing a 4**d array of zeros with the same tolerance (cached), so only the metadata layout
is written here; a test checks it against zfpy on many shapes.

zfp's bit stream has no bounds checks, so a forged body behind a valid header could still read
past the end of the buffer. Its reads are bounded, though: per 4**d block at most
``1 + ebits + planes * (4**d + 1) + 2 * 4**d`` bits (exponent, then per bit plane the bits of the
values already significant plus one group test, plus two bits per value becoming significant).
The stream is padded with zeros to that bound when it is shorter (at most ~1.4x the output).

SZ3 stream (pysz 1.1): 8 bytes of magic and version, u64 payload size, the payload, then the
config: u8 config length, u8 N, u8 bit width, the dims (N = 1 here: the bit width's bytes,
little endian), u64 element count, u8 algorithm, u8 bound mode, f64 bound, then flags and tuning
fields (taken from a reference stream of the installed library).
"""

from __future__ import annotations

import functools
import math
import struct

import numpy as np

from .errors import PayloadError

ZFP_MAX_BITS = 16658  # zfp's ceiling on the bits of one block
_ZFP_SIZE_BITS = {1: 48, 2: 24, 3: 16, 4: 12}
_ZFP_TYPES = {np.dtype(np.float32): 3, np.dtype(np.float64): 4}  # zfp_type_float, zfp_type_double


# ------------------------------------------------------------------ zfp
@functools.lru_cache(maxsize=256)
def _zfp_reference(ndims: int, dtype_str: str, tolerance: float) -> tuple[int, int, int]:
    """(magic bits, mode bits, mode width) the installed zfp writes for this tolerance."""
    import zfpy

    ref = zfpy.compress_numpy(np.zeros((4,) * ndims, dtype=np.dtype(dtype_str)), tolerance=tolerance)
    bits = int.from_bytes(ref[:24], "little")
    magic = bits & 0xFFFFFFFF
    short = (bits >> 84) & 0xFFF
    if short == 0xFFF:
        return magic, (bits >> 84) & ((1 << 76) - 1), 76
    return magic, short, 12


def zfp_header(layout: tuple[int, ...], dtype: np.dtype, tolerance: float) -> bytes:
    """The header zfp writes for an array of ``layout`` (C order) in fixed-accuracy mode."""
    ndims = len(layout)
    width = _ZFP_SIZE_BITS[ndims]
    meta = 0
    for i, size in enumerate(reversed(layout)):  # x (fastest) first
        if not 1 <= size <= 1 << width:
            raise PayloadError(f"zfp cannot hold a dimension of {size}")
        meta |= (size - 1) << (4 + i * width)
    meta |= (ndims - 1) << 2 | (_ZFP_TYPES[np.dtype(dtype)] - 1)
    magic, mode, mode_bits = _zfp_reference(ndims, np.dtype(dtype).str, float(tolerance))
    bits = magic | meta << 32 | mode << 84
    return bits.to_bytes((84 + mode_bits) // 8, "little")


def zfp_max_stream_bytes(layout: tuple[int, ...], dtype: np.dtype, header_len: int) -> int:
    """An upper bound on the bytes zfp's decoder can read for this array (header included)."""
    ndims = len(layout)
    size = 4**ndims
    planes, ebits = (32, 8) if np.dtype(dtype) == np.float32 else (64, 11)
    per_block = min(ZFP_MAX_BITS, 1 + ebits + planes * (size + 1) + 2 * size)
    blocks = math.prod(-(-d // 4) for d in layout)
    return header_len + (blocks * per_block + 7) // 8 + 16  # + a word read ahead


def checked_zfp_stream(
    blob: bytes, layout: tuple[int, ...], dtype: np.dtype, tolerance: float
) -> bytes:
    """``blob`` if its header is the one zfp writes for this entry, padded so no read overruns."""
    expected = zfp_header(layout, dtype, tolerance)
    if bytes(blob[: len(expected)]) != expected:
        raise PayloadError(
            f"zfp stream header does not match the entry ({np.dtype(dtype).name} {layout}, "
            f"tolerance {tolerance:g})"
        )
    need = zfp_max_stream_bytes(layout, dtype, len(expected))
    if len(blob) >= need:
        return blob
    return bytes(blob) + bytes(need - len(blob))


# ------------------------------------------------------------------ SZ3
ALGO_LORENZO_REG, ALGO_INTERP_LORENZO, ALGO_INTERP, ALGO_NOPRED, ALGO_LOSSLESS = range(5)
#: what SZ3 may record for each requested algorithm (it picks a predictor, or lossless when tiny)
SZ3_STORED_ALGOS = {
    ALGO_INTERP_LORENZO: frozenset({ALGO_LORENZO_REG, ALGO_INTERP, ALGO_LOSSLESS}),
    ALGO_NOPRED: frozenset({ALGO_NOPRED, ALGO_LOSSLESS}),
}
_SZ3_FLAGS = frozenset({0xA0, 0xC0})  # lorenzo+regression, lorenzo+lorenzo2 (observed)


@functools.lru_cache(maxsize=4)
def _sz3_reference(algorithm: int) -> tuple[bytes, bytes]:
    """(8-byte magic/version, config fields after the flags byte) of the installed SZ3."""
    from pysz import sz, szConfig, szErrorBoundMode

    cfg = szConfig()
    cfg.errorBoundMode = szErrorBoundMode.ABS
    cfg.absErrorBound = 1e-3
    cfg.cmprAlgo = algorithm
    blob = sz.compress(np.linspace(0, 1, 1000, dtype=np.float32), cfg)[0].tobytes()
    parsed = _parse_sz3(blob)
    return blob[:8], parsed["tail"]


def _parse_sz3(blob: bytes) -> dict:
    if len(blob) < 16:
        raise PayloadError("SZ3 stream is shorter than its 16-byte header")
    (payload,) = struct.unpack_from("<Q", blob, 8)
    if payload > len(blob) - 16:
        raise PayloadError("SZ3 stream is truncated (payload size)")
    cfg = bytes(blob[16 + payload :])
    if len(cfg) < 3 or cfg[0] != len(cfg):
        raise PayloadError("SZ3 config is malformed (length)")
    n_dims, width = cfg[1], cfg[2]
    if n_dims != 1 or not 1 <= width <= 64:
        raise PayloadError(f"SZ3 config declares {n_dims} dimensions of {width} bits; expected 1-D")
    k = (width + 7) // 8
    off = 3 + k
    if len(cfg) < off + 19:
        raise PayloadError("SZ3 config is truncated")
    dim = int.from_bytes(cfg[3:off], "little")
    num, algo, mode = struct.unpack_from("<QBB", cfg, off)
    (bound,) = struct.unpack_from("<d", cfg, off + 10)
    return {"dim": dim, "num": num, "algo": algo, "mode": mode, "bound": bound,
            "flags": cfg[off + 18], "tail": cfg[off + 19 :]}


def check_sz3_stream(blob: bytes, n: int, algorithm: int, tolerance: float) -> None:
    """Refuse an SZ3 stream whose header or config does not describe this entry."""
    magic, tail = _sz3_reference(int(algorithm))
    if bytes(blob[:8]) != magic:
        raise PayloadError("SZ3 stream has the wrong magic number or version")
    c = _parse_sz3(blob)
    if c["dim"] != n or c["num"] != n:
        raise PayloadError(f"SZ3 stream holds {c['num']} values ({c['dim']}), the entry {n}")
    if c["algo"] not in SZ3_STORED_ALGOS[int(algorithm)]:
        raise PayloadError(f"SZ3 stream uses algorithm {c['algo']}, not one this codec writes")
    if c["mode"] != 0 or c["bound"] != tolerance:
        raise PayloadError(
            f"SZ3 stream's bound (mode {c['mode']}, {c['bound']!r}) is not the frame's {tolerance!r}"
        )
    if c["flags"] not in _SZ3_FLAGS or c["tail"] != tail:
        raise PayloadError("SZ3 config has settings this codec never writes")
