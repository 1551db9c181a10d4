"""The ``fixedrate`` decoder for CPU tensors: one fused numba pass, no temporaries.

Why a second decoder: the torch decoder (``fixedrate.decode_torch``) is a chain of vectorised
tensor ops, right for a GPU, but on a CPU each op is one more pass over memory with int32/int64
temporaries (5-8 passes, ~4 ms per 0.5 MB expert), which made compressed offloading slower than
reading raw float32 from a memory-mapped file. Here one loop reads the packed plane(s) and writes
``float32(q) * step[b] + lo[b]`` straight into the output tensor's memory.

Bit-identical to the numpy reference (``FixedRateCodec.decode``): the same float32 multiply,
then the same float32 add, rounded after each (no ``fastmath``, so LLVM may not contract them
into a fused multiply-add). ``nogil`` lets the cache's prefetch thread decode while the main
thread computes. The frame's lengths are checked by ``parse_frame`` before the kernel runs, which
is why the kernel itself can skip bounds checks. ``fixedrate.decode_cpu`` is its caller.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NJ = dict(cache=True, nogil=True, boundscheck=False)  # never fastmath: results must match numpy


@njit(**_NJ)
def _word(plane, group, k):
    """The ``k`` bytes (``k <= 7``) that hold codes ``8*group .. 8*group+7``, as one int64."""
    w = np.int64(0)
    base = group * k
    for j in range(k):
        w |= np.int64(plane[base + j]) << (8 * j)
    return w


@njit(**_NJ)
def decode_into(low, kl, high, kh, block, lo, step, out):
    """Write ``float32(q) * step[b] + lo[b]`` for every element into ``out`` (float32, length n).

    ``low``: the plane of ``kl``-bit codes (``kl <= 8``; 0 when every code is 0); ``high``: for
    widths over 8, the plane of the top ``kh`` bits (``kh = 0`` otherwise). Codes are packed
    little-endian, 8 codes in ``k`` bytes, so 8 codes never straddle a block (blocks are
    multiples of 8).
    """
    n = out.size
    ml = (1 << kl) - 1
    mh = (1 << kh) - 1
    for b in range(lo.size):
        start = b * block
        if start >= n:
            break
        stop = min(start + block, n)
        s = step[b]
        lb = lo[b]
        if kh == 0 and kl == 8:
            for i in range(start, stop):
                out[i] = np.float32(low[i]) * s + lb
        elif kh == 0:
            for g0 in range(start, stop, 8):
                w = _word(low, g0 >> 3, kl)
                for j in range(min(8, stop - g0)):
                    out[g0 + j] = np.float32((w >> (j * kl)) & ml) * s + lb
        elif kh == 8:
            for i in range(start, stop):
                q = np.int64(low[i]) | (np.int64(high[i]) << 8)
                out[i] = np.float32(q) * s + lb
        else:
            for g0 in range(start, stop, 8):
                wh = _word(high, g0 >> 3, kh)
                for j in range(min(8, stop - g0)):
                    q = np.int64(low[g0 + j]) | (((wh >> (j * kh)) & mh) << 8)
                    out[g0 + j] = np.float32(q) * s + lb

