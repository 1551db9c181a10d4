"""The ``fixedrate`` decoder for CPU tensors: one fused numba pass, no temporaries.

Why a second decoder: the torch decoder (``fixedrate.decode_torch``) is a chain of vectorised
tensor ops, right for a GPU, but on a CPU each op is one more pass over memory with int32/int64
temporaries (5-8 passes, ~4 ms per 0.5 MB expert), which made compressed offloading slower than
reading raw float32 from a memory-mapped file. Here one loop reads the packed plane(s) and writes
``float32(q) * step[b] + lo[b]`` straight into the output tensor's memory.

One kernel per code width: the widths are closure constants, so numba folds every branch on
them (3-4x faster than one kernel taking the width as an argument), and each pass is a plain
loop over a contiguous slice into an int32 scratch, which LLVM vectorises (2-5x faster than the
first version, which built every code from an int64 word one element at a time; measured in
``benchmarks/bench_moe_decode.py``). Each kernel is compiled on first use and cached on disk
(numba keys the cache on the closure's values).

Bit-identical to the numpy reference (``FixedRateCodec.decode``): the same float32 multiply,
then the same float32 add, rounded after each (no ``fastmath``, so LLVM may not contract them
into a fused multiply-add). ``nogil`` lets the cache's prefetch thread decode while the main
thread computes. The frame's lengths are checked by ``fixedrate.parse_frame`` before a kernel
runs, which is why the kernels skip bounds checks; ``fixedrate.decode_cpu`` is their caller.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

_NJ = dict(cache=True, nogil=True, boundscheck=False)  # never fastmath: results must match numpy


#: codes unpacked per pass: the int32 scratch (16 KiB) stays in the L1 cache
CHUNK = 4096


@njit(inline="always", **_NJ)
def _plane_pass(plane, c0, m8, tmp, k, shift):
    """One unpacking pass over a plane of ``k``-bit codes (0..8), for the codes ``c0`` to
    ``c0 + m8``, into the int32 scratch: shifted left by ``shift``, assigned when ``shift`` is 0
    (the low bits), OR-ed in otherwise (the high bits). Inlined into each kernel, where ``k``
    and ``shift`` are constants, so LLVM folds the branches (a module-level function, not a
    closure: a kernel that closed over another jitted function would miss numba's disk cache)."""
    mask = (1 << k) - 1
    per = 8 // k if k > 0 and 8 % k == 0 else 0  # codes per byte when the width divides 8
    first = shift == 0
    if k == 0:
        if first:
            for i in range(m8):
                tmp[i] = 0
    elif k == 8:
        src = plane[c0:c0 + m8]
        for i in range(m8):
            v = np.int32(src[i]) << shift
            if first:
                tmp[i] = v
            else:
                tmp[i] |= v
    elif per:
        src = plane[c0 // per:(c0 + m8) // per]
        for i in range(src.size):
            b = np.int32(src[i])
            for j in range(per):
                v = ((b >> (j * k)) & mask) << shift
                if first:
                    tmp[i * per + j] = v
                else:
                    tmp[i * per + j] |= v
    else:
        src = plane[c0 // 8 * k:(c0 + m8) // 8 * k]
        for g in range(m8 // 8):
            w = np.int64(0)
            for j in range(k):
                w |= np.int64(src[g * k + j]) << (8 * j)
            for j in range(8):
                v = np.int32((w >> (j * k)) & mask) << shift
                if first:
                    tmp[g * 8 + j] = v
                else:
                    tmp[g * 8 + j] |= v


@functools.cache
def kernel(kl: int, kh: int) -> Callable[..., bool]:
    """The decoder for codes of ``kl`` low bits (0..8) and ``kh`` high bits (0, or 1..8 when
    ``kl`` is 8), called as ``kernel(kl, kh)(low, high, block, lo, step, out)``.

    ``low``: the plane of ``kl``-bit codes; ``high``: for widths over 8, the plane of the top
    ``kh`` bits (empty otherwise). Codes are packed little-endian, 8 codes in ``k`` bytes, and
    the planes hold every block's codes (padding included), so whole groups of 8 can always be
    read. ``out`` (float32) has the element count n; the padding is not written.

    Why it is fast: it works in chunks of ``CHUNK`` codes, and each chunk takes three simple
    loops over contiguous slices that LLVM turns into SIMD code: unpack the low bits into an
    int32 scratch (one byte per code at 8 bits, a byte split into 8/k codes at 1/2/4 bits, an
    int64 word per 8 codes otherwise), OR in the high bits the same way (``_plane_pass``), then
    ``float32(q) * step + lo`` block by block (int32 -> float32 vectorises on AVX2, int64 does
    not). Returns False as soon as a block's ``lo`` or ``step`` is not finite. Only ``kl`` and
    ``kh`` are closure variables (plain ints, so numba folds every branch on them and the
    on-disk cache stays usable).
    """
    if not (0 <= kl <= 8 and 0 <= kh <= 8 and (kh == 0 or kl == 8)):
        raise ValueError(f"no fixedrate kernel for {kl} low and {kh} high bits")
    ch = CHUNK

    @njit(**_NJ)
    def run(low, high, block, lo, step, out):
        n = out.size
        for b in range((n + block - 1) // block):  # scales first: a few per chunk, no NaN out
            if not (np.isfinite(lo[b]) and np.isfinite(step[b])):
                return False
        tmp = np.empty(ch, dtype=np.int32)
        for c0 in range(0, n, ch):
            m = min(ch, n - c0)
            m8 = (m + 7) // 8 * 8
            _plane_pass(low, c0, m8, tmp, kl, 0)
            if kh:
                _plane_pass(high, c0, m8, tmp, kh, 8)
            i = 0
            while i < m:  # scale block by block; a block may straddle two chunks
                e = c0 + i
                b = e // block
                stop = min(m, i + (b + 1) * block - e)
                s = step[b]
                lb = lo[b]
                dst = out[e:c0 + stop]
                codes = tmp[i:stop]
                for j in range(stop - i):
                    dst[j] = np.float32(codes[j]) * s + lb
                i = stop
        return True

    return run


def decode_into(planes: np.ndarray, bits: int, block: int, scales: np.ndarray, out: np.ndarray) -> bool:
    """Decode the packed ``planes`` (uint8, lengths already checked) of a ``bits``-wide frame
    into ``out`` (1-D float32). ``scales``: float32, the ``nb`` block minima then the ``nb``
    steps. Returns False (``out`` partly written) if a scale is not finite."""
    nb = scales.size // 2
    if bits > 8:
        total = nb * block
        low, high, kl, kh = planes[:total], planes[total:], 8, bits - 8
    else:
        low, high, kl, kh = planes, planes[:0], bits, 0
    return kernel(kl, kh)(low, high, block, scales[:nb], scales[nb:], out)
