"""The ``fixedrate`` decoder for CPU tensors: one fused numba pass, no temporaries.

Why a second decoder: the torch decoder (``fixedrate.decode_torch``) is a chain of vectorised
tensor ops, right for a GPU, but on a CPU each op is one more pass over memory with int32/int64
temporaries (5-8 passes, ~4 ms per 0.5 MB expert), which made compressed offloading slower than
reading raw float32 from a memory-mapped file. Here one loop reads the packed plane(s) and writes
``float32(q) * step[b] + lo[b]`` straight into the output tensor's memory.

One kernel per code width: the widths are closure constants, so numba folds every branch on
them and unrolls the 8 codes of a group with constant shifts (3-4x faster than one kernel taking
the width as an argument). Each is compiled on first use and cached on disk (numba keys the
cache on the closure's values).

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


@njit(**_NJ)
def _word(plane, group, k):
    """The ``k <= 7`` bytes holding codes ``8*group .. 8*group+7``, as one int64."""
    w = np.int64(0)
    for j in range(k):
        w |= np.int64(plane[group * k + j]) << (8 * j)
    return w


@njit(**_NJ)
def _code(low, high, wl, wh, i, j, kl, kh):
    """Code of element ``i``, the ``j``-th of its group (``wl``/``wh``: its group's words)."""
    if kl == 8:
        q = np.int64(low[i])
    else:
        q = (wl >> (j * kl)) & ((1 << kl) - 1)
    if kh == 8:
        q |= np.int64(high[i]) << 8
    elif kh > 0:
        q |= ((wh >> (j * kh)) & ((1 << kh) - 1)) << 8
    return q


@functools.cache
def kernel(kl: int, kh: int) -> Callable[..., None]:
    """The decoder for codes of ``kl`` low bits (0..8) and ``kh`` high bits (0, or 1..8 when
    ``kl`` is 8), called as ``kernel(kl, kh)(low, high, block, lo, step, out)``.

    ``low``: the plane of ``kl``-bit codes; ``high``: for widths over 8, the plane of the top
    ``kh`` bits (empty otherwise). Codes are packed little-endian, 8 codes in ``k`` bytes, so a
    group of 8 codes never straddles a block (blocks are multiples of 8). ``out`` (float32) has
    the element count n; the padding of the last block is not written. Only ``kl`` and ``kh``
    are closure variables (plain ints), which keeps the on-disk cache usable.
    """
    if not (0 <= kl <= 8 and 0 <= kh <= 8 and (kh == 0 or kl == 8)):
        raise ValueError(f"no fixedrate kernel for {kl} low and {kh} high bits")

    @njit(**_NJ)
    def run(low, high, block, lo, step, out):
        n = out.size
        for b in range(lo.size):
            start = b * block
            if start >= n:
                break
            stop = min(start + block, n)
            s = step[b]
            lb = lo[b]
            full = start + (stop - start) // 8 * 8
            for g0 in range(start, full, 8):
                wl = _word(low, g0 >> 3, kl) if 0 < kl < 8 else np.int64(0)
                wh = _word(high, g0 >> 3, kh) if 0 < kh < 8 else np.int64(0)
                for j in range(8):
                    out[g0 + j] = np.float32(_code(low, high, wl, wh, g0 + j, j, kl, kh)) * s + lb
            if full < stop:
                wl = _word(low, full >> 3, kl) if 0 < kl < 8 else np.int64(0)
                wh = _word(high, full >> 3, kh) if 0 < kh < 8 else np.int64(0)
                for j in range(stop - full):
                    out[full + j] = np.float32(_code(low, high, wl, wh, full + j, j, kl, kh)) * s + lb

    return run


def decode_into(planes: np.ndarray, bits: int, block: int, lo: np.ndarray, step: np.ndarray,
                out: np.ndarray) -> None:
    """Decode the packed ``planes`` (uint8, lengths already checked) of a ``bits``-wide frame
    into ``out``. ``lo`` and ``step`` are copied (a few bytes per block) so every call has the
    same array types: aligned float32, read-only uint8 planes, one compiled kernel per width."""
    planes = planes.view()
    planes.flags.writeable = False
    total = lo.size * block
    if bits > 8:
        low, high, kl, kh = planes[:total], planes[total:], 8, bits - 8
    else:
        low, high, kl, kh = planes, planes[:0], bits, 0
    lo32 = np.array(lo, dtype=np.float32)
    step32 = np.array(step, dtype=np.float32)
    kernel(kl, kh)(low, high, block, lo32, step32, out)
