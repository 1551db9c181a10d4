"""Numba kernels of the ``fast`` codec: quantizer, symbol mapper, static-model rANS, side info.

Every kernel is ``@njit(cache=True, nogil=True)`` and makes one pass over the data:

* ``quantize``: ``q = rint(x / step)`` with the reconstruction in the output dtype checked
  against the bound in float64 (misses, code-radius overflows and NaN/Inf are marked VERBATIM),
  the zigzag code of each element and the per-row/per-column sums of ``|q|``. It is branch-free
  and compiled once per output dtype, so it vectorises (about 0.5 ns per value);
* ``symbolize``: symbol of each code, raw escape bits, verbatim positions, the channel-scale
  feature ``f = rs[o] + cs[i]`` of each element and the joint (feature, symbol) histogram;
* ``choose_contexts``: cuts the feature axis into at most ``MAX_CTX`` intervals by an exact
  dynamic programme on that histogram (cost = ideal code length + table cost);
* ``rans_encode`` / ``rans_decode``: rANS with 32-bit states, 16-bit renormalisation and four
  interleaved states. The encoder divides by multiplying with exact reciprocals; the decoder maps
  a state slot to (symbol, frequency, offset) with one lookup in a packed ``uint32`` table,
  refills without branches from padded copies and bounds-checks every block. It returns an error
  code instead of raising, and the caller turns it into ``PayloadError``.

Symbols: a zigzag code below ``N_DIRECT`` is its own symbol; a larger one is an exponent class
(two per octave) followed by ``e - 1`` raw bits in a separate bit stream. Frequency tables sum
to ``2**PROB_BITS``; every table carries at least two symbols, so no frequency reaches
``2**PROB_BITS`` and a slot entry fits in 32 bits (8 + 12 + 12).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
PROB_MASK = PROB_SCALE - 1
RANS_L = 1 << 16  # states live in [RANS_L, 2**32)
N_STATES = 4
LOG_DIRECT = 6
N_DIRECT = 1 << LOG_DIRECT
#: largest code magnitude (as in quantizer.py); zigzag codes are at most 2**31.
CODE_RADIUS = 2**30
MAX_EXP = 31
ALPHABET = N_DIRECT + 2 * (MAX_EXP - LOG_DIRECT + 1)  # 116 symbols
#: channel-scale levels (half octaves) sent per row and per column; 0 means "all zero".
SCALE_LEVELS = 16
N_FEATURES = 2 * SCALE_LEVELS - 2  # f = 0 (a zero row or column) or rs + cs - 1 in 1..29
MAX_CTX = 8
#: bits of side information charged per table entry when choosing contexts.
TABLE_BITS_PER_SYMBOL = 6.0

# decoder error codes
OK = 0
ERR_WORDS = 1  # rANS stream exhausted
ERR_RAW = 2  # raw-bit stream exhausted
ERR_FINAL = 3  # final state / leftover data mismatch: corrupt stream
ERR_SCALE = 4  # channel scale out of range
ERR_CODE = 5  # code beyond the code radius
ERR_META = 6  # side information truncated or malformed
ERR_TABLE = 7  # frequency table invalid

ERROR_TEXT = {
    ERR_WORDS: "entropy-coded stream is truncated",
    ERR_RAW: "raw-bit stream is truncated",
    ERR_FINAL: "entropy-coded stream is corrupt (final state or length mismatch)",
    ERR_SCALE: "channel scale out of range",
    ERR_CODE: "decoded code beyond the code radius",
    ERR_META: "side information is truncated or malformed",
    ERR_TABLE: "frequency table is invalid",
}

# output modes: how a float64 reconstruction becomes the output dtype
MODE_F64, MODE_F32, MODE_F16 = 0, 1, 2

_NJ = dict(cache=True, nogil=True)


# ------------------------------------------------------------------ rounding to the output dtype
@njit(**_NJ)
def round_f16(v):
    """``v`` rounded to the nearest float16 (ties to even), returned as float64; inf past range.

    Scaling by powers of two is exact and ``rint`` rounds half to even, so this is the single
    correct rounding of the float64 ``v``, the same on every IEEE-754 machine.
    """
    a = abs(v)
    if not a < 65520.0:  # 65520 rounds to 65536: overflow (NaN falls through to here too)
        if a != a:
            return v
        return math.copysign(math.inf, v)
    if a < 6.103515625e-05:  # below 2**-14: subnormal quantum 2**-24
        r = np.rint(a * 16777216.0) * 5.9604644775390625e-08
    else:
        m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1: quantum 2**(e - 11)
        r = math.ldexp(np.rint(math.ldexp(a, 11 - e)), e - 11)
    return math.copysign(r, v)


@njit(**_NJ)
def round_out(v, mode):
    if mode == MODE_F32:
        return np.float64(np.float32(v))
    if mode == MODE_F16:
        return round_f16(v)
    return v


@njit(**_NJ)
def round_f16_array(v):
    """Vector form of ``round_f16`` (for tests)."""
    out = np.empty(v.size, dtype=np.float64)
    for j in range(v.size):
        out[j] = round_f16(v[j])
    return out


# ------------------------------------------------------------------ encoder passes
try:  # llvm.ctlz; the loop below is the fallback should numba move its intrinsic
    from numba.cpython.unsafe.numbers import leading_zeros as _clz

    @njit(**_NJ)
    def _bit_length(z):
        return 63 - _clz(np.uint64(z))  # floor(log2 z) for z >= 1

except ImportError:  # pragma: no cover

    @njit(**_NJ)
    def _bit_length(z):
        e = 0
        while z >> e > 1:
            e += 1
        return e  # floor(log2 z) for z >= 1


#: marks an element that misses the bound (or overflows the code radius) in the code array.
VERBATIM = np.uint32(0xFFFFFFFF)


@njit(**_NJ)
def _quantize_span(x, step, inv_step, abs_eb, mode, zout, csum, per_col):
    """One contiguous span (views, so that indices are known non-negative and loops vectorise).
    Returns (sum of |q|, VERBATIM count); with ``per_col`` each |q| is also added to csum[t]."""
    radius = float(CODE_RADIUS)
    acc = np.int64(0)
    nbad = np.int64(0)
    for t in range(x.size):
        v = np.float64(x[t])
        qc = min(max(np.rint(v * inv_step), -radius), radius)  # NaN -> -radius, then fails
        ok = abs(round_out(qc * step, mode) - v) <= abs_eb
        q = np.int64(qc)
        zout[t] = np.uint32((q << 1) ^ (q >> 63)) if ok else VERBATIM
        a = abs(q) if ok else 0
        acc += a
        if per_col:
            csum[t] += a
        nbad += np.int64(not ok)
    return acc, nbad


@njit(**_NJ)
def _quantize_body(x, step, inv_step, abs_eb, mode, rows, cols, inner, zout, rsum, csum):
    """Row by row; column sums go per (column, inner) position first, then fold to columns."""
    nbad = 0
    rl = cols * inner
    per_col = rows > 1
    cexp = np.zeros(rl if per_col else 0, dtype=np.int64)
    for o in range(rows):
        base = o * rl
        acc, nb = _quantize_span(
            x[base : base + rl], step, inv_step, abs_eb, mode, zout[base : base + rl], cexp, per_col
        )
        nbad += nb
        rsum[o] = acc
    if per_col:
        for i in range(cols):
            t = np.int64(0)
            for k in range(inner):
                t += cexp[i * inner + k]
            csum[i] = t
    return nbad


# One kernel per output mode: the mode is a compile-time constant, so the loops vectorise.
@njit(**_NJ)
def _quantize_f64(x, step, inv_step, abs_eb, rows, cols, inner, zout, rsum, csum):
    return _quantize_body(x, step, inv_step, abs_eb, MODE_F64, rows, cols, inner, zout, rsum, csum)


@njit(**_NJ)
def _quantize_f32(x, step, inv_step, abs_eb, rows, cols, inner, zout, rsum, csum):
    return _quantize_body(x, step, inv_step, abs_eb, MODE_F32, rows, cols, inner, zout, rsum, csum)


@njit(**_NJ)
def _quantize_f16(x, step, inv_step, abs_eb, rows, cols, inner, zout, rsum, csum):
    return _quantize_body(x, step, inv_step, abs_eb, MODE_F16, rows, cols, inner, zout, rsum, csum)


_QUANTIZERS = {MODE_F64: _quantize_f64, MODE_F32: _quantize_f32, MODE_F16: _quantize_f16}


def quantize(x, step, inv_step, abs_eb, mode, rows, cols, inner, zout, rsum, csum):
    """Codes of a flat float32/float64 array viewed as (rows, cols, inner), one pass.

    ``zout`` gets the zigzag code of ``q = rint(x / step)``, or ``VERBATIM`` where the
    reconstruction in the output dtype (computed exactly as the decoder does) misses the bound,
    where ``|q|`` passes the code radius, or where ``x`` is NaN/Inf. The sums of ``|q|`` per row
    and per column go to ``rsum``/``csum`` (int64). Returns the number of VERBATIM elements.
    """
    return _QUANTIZERS[mode](x, step, inv_step, abs_eb, rows, cols, inner, zout, rsum, csum)


_HSTRIDE = 128  # histogram row stride (>= ALPHABET)


@njit(**_NJ)
def _symbolize_span(
    z, sym, fidx, ro, cexp, use_f, start, vpos, nv, raw, nraw, acc, nacc, hist, hoff
):
    """Symbols of one row; the feature of position ``t`` is ``feature(ro, cexp[t])``.

    Codes below N_DIRECT are their own symbol; larger ones become an exponent class and
    ``e - 1`` raw bits, written without branches (``raw`` has a spare word). ``hist`` is flat:
    [(t % 4) * hoff + feature * _HSTRIDE + symbol].
    """
    for t in range(z.size):
        zz = np.int64(z[t])
        if zz == np.int64(VERBATIM):
            vpos[nv] = start + t
            nv += 1
            zz = np.int64(0)
        e = max(_bit_length(zz | 1), 1)
        big = zz >= N_DIRECT
        s = (N_DIRECT + 2 * (e - LOG_DIRECT) + ((zz >> (e - 1)) & 1)) if big else zz
        nb = (e - 1) if big else 0
        acc |= (zz & ((np.int64(1) << nb) - 1)) << nacc
        nacc += nb
        raw[nraw] = np.uint32(acc & 0xFFFFFFFF)
        adv = nacc >= 32
        nraw += np.int64(adv)
        acc = (acc >> 32) if adv else acc
        nacc -= 32 if adv else 0
        sym[t] = s
        f = np.int64(0)
        if use_f:
            c = np.int64(cexp[t])
            f = 0 if (ro == 0 or c == 0) else ro + c - 1
            fidx[t] = f
        hist[(t & 3) * hoff + f * _HSTRIDE + s] += 1
    return nv, nraw, acc, nacc


@njit(**_NJ)
def symbolize(zin, rows, cols, inner, rlev, clev, use_f, sym, fidx, vpos, raw):
    """Symbols, escape bits, verbatim positions, feature per element and the joint histogram
    (as [feature, symbol]). Returns (verbatim count, raw words used, histogram)."""
    nf = N_FEATURES if use_f else 1
    hoff = nf * _HSTRIDE
    hist = np.zeros(4 * hoff, dtype=np.int64)
    nv = 0
    acc = np.int64(0)
    nacc = 0
    nraw = 0
    rl = cols * inner
    cexp = np.zeros(rl if use_f else 0, dtype=np.uint8)
    for t in range(cexp.size):
        cexp[t] = clev[t // inner]
    for o in range(rows):
        base = o * rl
        e = base + rl
        ro = np.int64(rlev[o]) if use_f else np.int64(0)
        nv, nraw, acc, nacc = _symbolize_span(
            zin[base:e],
            sym[base:e],
            fidx[base:e] if use_f else fidx,
            ro,
            cexp,
            use_f,
            base,
            vpos,
            nv,
            raw,
            nraw,
            acc,
            nacc,
            hist,
            hoff,
        )
    if nacc > 0:
        raw[nraw] = np.uint32(acc & 0xFFFFFFFF)
        nraw += 1
    out = np.zeros((nf, ALPHABET), dtype=np.int64)
    for k in range(4):
        for f in range(nf):
            for s in range(ALPHABET):
                out[f, s] += hist[k * hoff + f * _HSTRIDE + s]
    return nv, nraw, out


@njit(**_NJ)
def scale_levels(sums, count):
    """Half-octave level of each mean |q| relative to the largest, in 1..SCALE_LEVELS-1; 0 = zero."""
    n = sums.size
    lev = np.zeros(n, dtype=np.int64)
    top = -(10**9)
    for t in range(n):
        if sums[t] > 0:
            lv = int(math.floor(2.0 * math.log2(sums[t] / count)))
            lev[t] = lv
            if lv > top:
                top = lv
    out = np.zeros(n, dtype=np.uint8)
    for t in range(n):
        if sums[t] > 0:
            out[t] = max(1, lev[t] - top + SCALE_LEVELS - 1)
    return out


@njit(**_NJ)
def feature(r, c):
    if r == 0 or c == 0:
        return 0
    return np.int64(r) + np.int64(c) - 1


@njit(**_NJ)
def _interval_cost(pre, a, b, nsym):
    """Ideal code length (bits) + table cost of the merged histogram of features a..b-1."""
    tot = 0
    for s in range(nsym):
        tot += pre[b, s] - pre[a, s]
    if tot == 0:
        return 0.0
    bits = 0.0
    used = 0
    lt = math.log2(tot)
    for s in range(nsym):
        h = pre[b, s] - pre[a, s]
        if h > 0:
            bits += h * (lt - math.log2(h))
            used += 1
    return bits + TABLE_BITS_PER_SYMBOL * used + 24.0


@njit(**_NJ)
def choose_contexts(hist2, max_ctx):
    """Cut the feature axis into <= max_ctx intervals minimising estimated bits (exact DP).

    Returns (cost with 1 context, best cost, starts): ``starts`` holds the first feature of
    each context after the first (strictly increasing, in 1..N_FEATURES-1).
    """
    nf, na = hist2.shape
    nsym = 1
    for f in range(nf):
        for s in range(na):
            if hist2[f, s] > 0 and s + 1 > nsym:
                nsym = s + 1
    # populated features only
    act = np.zeros(nf, dtype=np.int64)
    m = 0
    for f in range(nf):
        t = 0
        for s in range(nsym):
            t += hist2[f, s]
        if t > 0:
            act[m] = f
            m += 1
    pre = np.zeros((m + 1, nsym), dtype=np.int64)
    for t in range(m):
        for s in range(nsym):
            pre[t + 1, s] = pre[t, s] + hist2[act[t], s]
    cost = np.full((m + 1, m + 1), np.inf)
    for a in range(m):
        for b in range(a + 1, m + 1):
            cost[a, b] = _interval_cost(pre, a, b, nsym)
    one = cost[0, m] if m > 0 else 0.0
    kmax = min(max_ctx, m)
    if kmax <= 1:
        return one, one, np.zeros(0, dtype=np.int64)
    best = np.full((kmax + 1, m + 1), np.inf)
    arg = np.zeros((kmax + 1, m + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, kmax + 1):
        for b in range(1, m + 1):
            for a in range(k - 1, b):
                c = best[k - 1, a] + cost[a, b]
                if c < best[k, b]:
                    best[k, b] = c
                    arg[k, b] = a
    kbest = 1
    for k in range(2, kmax + 1):
        if best[k, m] < best[kbest, m]:
            kbest = k
    starts = np.zeros(kbest - 1, dtype=np.int64)
    b = m
    for k in range(kbest, 1, -1):
        a = arg[k, b]
        starts[k - 2] = act[a]
        b = a
    return one, best[kbest, m], starts


@njit(**_NJ)
def context_map(starts):
    """Context of every feature value from the interval starts (same on both sides)."""
    cmap = np.zeros(N_FEATURES, dtype=np.uint8)
    for f in range(N_FEATURES):
        c = 0
        for t in range(starts.size):
            if f >= starts[t]:
                c += 1
        cmap[f] = c
    return cmap


@njit(**_NJ)
def context_hists(hist2, cmap, n_ctx):
    out = np.zeros((n_ctx, hist2.shape[1]), dtype=np.int64)
    for f in range(hist2.shape[0]):
        c = cmap[f]
        for s in range(hist2.shape[1]):
            out[c, s] += hist2[f, s]
    return out


@njit(**_NJ)
def ideal_bits(counts):
    tot = 0
    for s in range(counts.size):
        tot += counts[s]
    if tot == 0:
        return 0.0
    bits = 0.0
    used = 0
    for s in range(counts.size):
        if counts[s] > 0:
            bits += counts[s] * (math.log2(tot) - math.log2(counts[s]))
            used += 1
    return bits + TABLE_BITS_PER_SYMBOL * used + 24.0


# ------------------------------------------------------------------ frequency tables
@njit(**_NJ)
def normalize(counts):
    """Frequencies summing to PROB_SCALE, >= 1 for every present symbol, all < PROB_SCALE."""
    na = counts.size
    freq = np.zeros(na, dtype=np.int64)
    tot = 0
    for s in range(na):
        tot += counts[s]
    if tot == 0:
        freq[0] = PROB_SCALE - 1
        freq[1] = 1
        return freq
    acc = 0
    big = 0
    for s in range(na):
        if counts[s] > 0:
            f = (2 * counts[s] * PROB_SCALE + tot) // (2 * tot)
            freq[s] = max(1, f)
            acc += freq[s]
            if freq[s] > freq[big]:
                big = s
    diff = PROB_SCALE - acc
    if freq[big] + diff >= 1:  # the usual case: the largest absorbs the rounding
        freq[big] += diff
        diff = 0
    while diff < 0:  # many forced ones: take from the largest, one at a time
        big = 0
        for s in range(na):
            if freq[s] > freq[big]:
                big = s
        freq[big] -= 1
        diff += 1
    if freq[big] >= PROB_SCALE:  # one symbol only: lend one slot to a neighbour
        freq[big] = PROB_SCALE - 1
        freq[big + 1 if big + 1 < na else big - 1] = 1
    return freq


@njit(**_NJ)
def _round_sig(f, sig):
    nb = _bit_length(f) + 1
    if nb <= sig:
        return f
    sh = nb - sig
    return ((f + (np.int64(1) << (sh - 1))) >> sh) << sh


@njit(**_NJ)
def sparse_table(counts, freq):
    """Cheapest description of ``freq``: frequencies rounded to ``sig`` significant bits, the
    largest one implied by the sum. Returns (table, sig, implied index) minimising code length +
    table bits."""
    na = counts.size
    big = 0
    used = np.empty(na, dtype=np.int64)
    m = 0
    for s in range(na):
        if freq[s] > 0:
            used[m] = s
            m += 1
            if freq[s] > freq[big]:
                big = s
    best_cost = np.inf
    best_sig = 12
    best = freq.copy()
    t = freq.copy()
    for sig in (2, 3, 4, 5, 6, 8, 12):
        acc = 0
        for u in range(m):
            s = used[u]
            if s != big:
                t[s] = _round_sig(freq[s], sig)
                acc += t[s]
        rest = PROB_SCALE - acc
        if rest < 1 or rest >= PROB_SCALE:
            continue
        t[big] = rest
        cost = 0.0
        for u in range(m):
            s = used[u]
            if counts[s] > 0:
                cost += counts[s] * (PROB_BITS - math.log2(t[s]))
            if s != big:
                cost += 2.0 + min(sig - 1, _bit_length(t[s]))
        if cost < best_cost:
            best_cost = cost
            best_sig = sig
            best[:] = t
    return best, best_sig, big


@njit(**_NJ)
def build_tables(counts):
    """Frequency tables for every row of ``counts`` and their side-info parameters."""
    nt = counts.shape[0]
    freqs = np.zeros((nt, counts.shape[1]), dtype=np.int64)
    sigs = np.zeros(nt, dtype=np.int64)
    bigs = np.zeros(nt, dtype=np.int64)
    for c in range(nt):
        freqs[c], sigs[c], bigs[c] = sparse_table(counts[c], normalize(counts[c]))
    return freqs, sigs, bigs


# ------------------------------------------------------------------ side-info bit stream
@njit(**_NJ)
def _put(buf, st, value, nb):
    """Append ``nb`` (<= 32) bits LSB first; st = [bit position]."""
    p = st[0]
    for t in range(nb):
        if (value >> t) & 1:
            buf[(p + t) >> 3] |= np.uint8(1 << ((p + t) & 7))
    st[0] = p + nb


@njit(**_NJ)
def _get(buf, st, nb):
    """Read ``nb`` (<= 32) bits; -1 when the buffer is too short."""
    p = st[0]
    if p + nb > buf.size * 8:
        return np.int64(-1)
    v = np.int64(0)
    byte = p >> 3
    for t in range(5):
        if byte + t < buf.size:
            v |= np.int64(buf[byte + t]) << (8 * t)
    st[0] = p + nb
    return (v >> (p & 7)) & ((np.int64(1) << nb) - 1)


@njit(**_NJ)
def write_table(buf, st, freq, sig, big):
    """top (7 bits), implied index (7), sig (4), then per entry a bit-length code + mantissa."""
    na = freq.size
    top = 0
    for s in range(na):
        if freq[s] > 0:
            top = s
    _put(buf, st, top, 7)
    _put(buf, st, big, 7)
    _put(buf, st, sig, 4)
    prev = 0
    for s in range(top + 1):
        if s == big:
            continue
        f = freq[s]
        nb = 0 if f == 0 else _bit_length(f) + 1
        d = nb - prev
        if d == 0:
            _put(buf, st, 0, 1)
        elif d == 1 or d == -1:
            _put(buf, st, 1 | (0 << 1) | ((1 if d < 0 else 0) << 2), 3)
        else:
            _put(buf, st, 1 | (1 << 1) | (nb << 2), 6)
        prev = nb
        if nb > 1:
            keep = min(nb - 1, sig - 1)
            _put(buf, st, (f >> (nb - 1 - keep)) & ((1 << keep) - 1), keep)


@njit(**_NJ)
def read_table(buf, st, na, freq_out):
    """Mirror of ``write_table``; returns an error code, fills ``freq_out`` (length na)."""
    for s in range(na):
        freq_out[s] = 0
    top = _get(buf, st, 7)
    big = _get(buf, st, 7)
    sig = _get(buf, st, 4)
    if top < 0 or big < 0 or sig < 0:
        return ERR_META
    if top >= na or big > top or sig < 1 or sig > 12:
        return ERR_TABLE
    prev = 0
    acc = 0
    for s in range(top + 1):
        if s == big:
            continue
        b = _get(buf, st, 1)
        if b < 0:
            return ERR_META
        nb = prev
        if b == 1:
            b2 = _get(buf, st, 1)
            if b2 < 0:
                return ERR_META
            if b2 == 0:
                neg = _get(buf, st, 1)
                if neg < 0:
                    return ERR_META
                nb = prev - 1 if neg == 1 else prev + 1
            else:
                nb = _get(buf, st, 4)
                if nb < 0:
                    return ERR_META
        if nb < 0 or nb > PROB_BITS:
            return ERR_TABLE
        prev = nb
        f = 0
        if nb == 1:
            f = 1
        elif nb > 1:
            keep = min(nb - 1, sig - 1)
            m = _get(buf, st, keep)
            if m < 0:
                return ERR_META
            f = (np.int64(1) << (nb - 1)) | (m << (nb - 1 - keep))
        freq_out[s] = f
        acc += f
    rest = PROB_SCALE - acc
    if rest < 1 or rest >= PROB_SCALE:
        return ERR_TABLE
    freq_out[big] = rest
    return OK


@njit(**_NJ)
def write_meta(freqs, sigs, bigs, starts):
    """Side info: context starts (5 bits each) and every table; returns the bytes."""
    buf = np.zeros(64 + freqs.shape[0] * 320, dtype=np.uint8)
    st = np.zeros(1, dtype=np.int64)
    for t in range(starts.size):
        _put(buf, st, starts[t], 5)
    for c in range(freqs.shape[0]):
        write_table(buf, st, freqs[c], sigs[c], bigs[c])
    return buf[: (st[0] + 7) >> 3].copy()


@njit(**_NJ)
def read_meta(buf, n_ctx, n_tables):
    """(error, starts, freqs) from the side-info bytes; padding bits must be zero."""
    st = np.zeros(1, dtype=np.int64)
    starts = np.zeros(max(n_ctx - 1, 0), dtype=np.int64)
    freqs = np.zeros((n_tables, ALPHABET), dtype=np.int64)
    prev = 0
    for t in range(n_ctx - 1):
        v = _get(buf, st, 5)
        if v < 0:
            return ERR_META, starts, freqs
        if v <= prev or v >= N_FEATURES:
            return ERR_META, starts, freqs
        starts[t] = v
        prev = v
    for c in range(n_tables):
        err = read_table(buf, st, ALPHABET, freqs[c])
        if err != OK:
            return err, starts, freqs
    if (st[0] + 7) >> 3 != buf.size:
        return ERR_META, starts, freqs
    pad = buf.size * 8 - st[0]
    if pad and _get(buf, st, pad) != 0:
        return ERR_META, starts, freqs
    return OK, starts, freqs


# ------------------------------------------------------------------ rANS
@njit(**_NJ)
def cumulative(freqs):
    cums = np.zeros_like(freqs)
    for c in range(freqs.shape[0]):
        acc = 0
        for s in range(freqs.shape[1]):
            cums[c, s] = acc
            acc += freqs[c, s]
    return cums


_U = np.uint64
#: fixed-point shift of the encoder's reciprocals (see ``encoder_table``).
RCP_SHIFT = 32 + PROB_BITS
_TAB_STRIDE = 128  # >= ALPHABET


@njit(**_NJ)
def encoder_table(freqs, cums):
    """Per (table, symbol): the reciprocal ``rcp = ceil(2**k / f)`` and ``f | cum << 16``.

    Division-free encoding with ``P = PROB_BITS`` and ``k = 32 + P``: before a symbol is encoded
    the state is ``x < f * 2**(32 - P)``. With ``rcp = (2**k + e) / f``, ``0 <= e < f``, the
    error ``x * e / (f * 2**k)`` stays below ``1 / f`` because ``x * e < 2**(32 - P) * f**2 <=
    2**k``, hence ``(x * rcp) >> k == x // f`` exactly; and ``x * rcp < 2**64``.
    """
    nt, na = freqs.shape
    tab = np.zeros(nt * _TAB_STRIDE * 2, dtype=np.uint64)
    for c in range(nt):
        for s in range(na):
            f = freqs[c, s]
            if f > 0:
                i = 2 * (c * _TAB_STRIDE + s)
                tab[i] = _U(((np.int64(1) << RCP_SHIFT) + f - 1) // f)
                tab[i + 1] = _U(f | (cums[c, s] << 16))
    return tab


@njit(**_NJ)
def _enc(x, rcp, fc, words, pos):
    """Encode one symbol into state ``x`` (uint64); branch-free 16-bit renormalisation."""
    f = fc & _U(0xFFFF)
    need = x >= (f << _U(32 - PROB_BITS))
    words[pos - 1] = np.uint16(x & _U(0xFFFF))
    pos -= np.int64(need)
    x = (x >> _U(16)) if need else x
    q = (x * rcp) >> _U(RCP_SHIFT)
    return x + q * (_U(PROB_SCALE) - f) + (fc >> _U(16)), pos


@njit(**_NJ)
def rans_encode(sym, fidx, cmap, use_ctx, pre, pre_table, tab):
    """Encode ``pre`` (decoded first, all with table ``pre_table``) then ``sym``.

    Element ``j`` uses state ``j % 4`` and context ``cmap[fidx[j]]`` (0 without contexts);
    prefix symbol ``t`` uses state ``t % 4``. Returns the 16-bit words in decoding order.
    """
    n = sym.size
    words = np.empty(n + pre.size + 2 * N_STATES + 8, dtype=np.uint16)
    pos = np.int64(words.size)
    xs = np.full(N_STATES, RANS_L, dtype=np.uint64)
    nb4 = n - (n & 3)
    for j in range(n - 1, nb4 - 1, -1):  # tail, states j & 3
        c = np.int64(cmap[fidx[j]]) if use_ctx else 0
        i = 2 * (c * _TAB_STRIDE + np.int64(sym[j]))
        xs[j & 3], pos = _enc(xs[j & 3], tab[i], tab[i + 1], words, pos)
    x0, x1, x2, x3 = xs[0], xs[1], xs[2], xs[3]
    for j in range(nb4 - 4, -1, -4):
        if use_ctx:
            c3 = np.int64(cmap[fidx[j + 3]]) * _TAB_STRIDE
            c2 = np.int64(cmap[fidx[j + 2]]) * _TAB_STRIDE
            c1 = np.int64(cmap[fidx[j + 1]]) * _TAB_STRIDE
            c0 = np.int64(cmap[fidx[j]]) * _TAB_STRIDE
        else:
            c3 = c2 = c1 = c0 = 0
        i3 = 2 * (c3 + np.int64(sym[j + 3]))
        i2 = 2 * (c2 + np.int64(sym[j + 2]))
        i1 = 2 * (c1 + np.int64(sym[j + 1]))
        i0 = 2 * (c0 + np.int64(sym[j]))
        x3, pos = _enc(x3, tab[i3], tab[i3 + 1], words, pos)
        x2, pos = _enc(x2, tab[i2], tab[i2 + 1], words, pos)
        x1, pos = _enc(x1, tab[i1], tab[i1 + 1], words, pos)
        x0, pos = _enc(x0, tab[i0], tab[i0 + 1], words, pos)
    xs[0], xs[1], xs[2], xs[3] = x0, x1, x2, x3
    for t in range(pre.size - 1, -1, -1):
        i = 2 * (pre_table * _TAB_STRIDE + np.int64(pre[t]))
        xs[t & 3], pos = _enc(xs[t & 3], tab[i], tab[i + 1], words, pos)
    for k in range(N_STATES - 1, -1, -1):
        pos -= 1
        words[pos] = np.uint16(xs[k] & _U(0xFFFF))
        pos -= 1
        words[pos] = np.uint16(xs[k] >> _U(16))
    return words[pos:].copy()


_BIAS_SHIFT = 8 + PROB_BITS


@njit(**_NJ)
def build_lut(freqs, cums):
    """slot -> symbol | freq << 8 | (slot - cum) << (8 + PROB_BITS), one block per table."""
    nt, na = freqs.shape
    lut = np.empty(nt * PROB_SCALE, dtype=np.uint32)
    for c in range(nt):
        for s in range(na):
            f = freqs[c, s]
            b = cums[c, s]
            for t in range(f):
                lut[c * PROB_SCALE + b + t] = np.uint32(s | (f << 8) | (t << _BIAS_SHIFT))
    return lut


@njit(**_NJ)
def _dec(x, base, lut):
    e = np.int64(lut[base + (x & PROB_MASK)])
    return ((e >> 8) & PROB_MASK) * (x >> PROB_BITS) + (e >> _BIAS_SHIFT), e & 0xFF


@njit(**_NJ)
def _renorm(x, words, pos):
    """Branch-free 16-bit refill; ``words`` is padded, the caller checks ``pos`` afterwards."""
    w = np.int64(words[pos])
    need = x < RANS_L
    x = ((x << 16) | w) if need else x
    return x, pos + np.int64(need)


@njit(**_NJ)
def symbol_tables():
    """Per symbol: the zigzag code it starts at and its number of raw bits."""
    zbase = np.zeros(ALPHABET, dtype=np.int64)
    nbits = np.zeros(ALPHABET, dtype=np.int64)
    for s in range(ALPHABET):
        if s < N_DIRECT:
            zbase[s] = s
        else:
            idx = s - N_DIRECT
            e = LOG_DIRECT + (idx >> 1)
            zbase[s] = (np.int64(1) << e) | (np.int64(idx & 1) << (e - 1))
            nbits[s] = e - 1
    return zbase, nbits


@njit(**_NJ)
def _general(s, raw, bitpos, zbase, nbits, step, mode):
    """Value of any symbol, reading its raw bits without branches (``raw`` is padded; the caller
    checks ``bitpos`` afterwards). Returns (value, new bit position, zigzag code)."""
    nb = nbits[s]
    p = bitpos >> 5
    w = np.int64(raw[p]) | (np.int64(raw[p + 1]) << 32)
    z = zbase[s] + ((w >> (bitpos & 31)) & ((np.int64(1) << nb) - 1))
    q = (z >> 1) ^ -(z & 1)
    return round_out(np.float64(q) * step, mode), bitpos + nb, z


@njit(**_NJ)
def rans_decode(words_in, raw, lut, n_ctx, cmap, rows, cols, inner, step, mode, fast_ok, out):
    """Decode ``out.size`` elements (plus the channel scales first when ``n_ctx > 1``).

    ``fast_ok``: blocks of four direct symbols take a lookup path (False when escapes are
    common, then every block takes the branch-free general path). Returns an error code; on
    success every word and raw bit has been consumed and the four states are back at their
    initial value, which catches most corruptions.
    """
    n = out.size
    nw = words_in.size
    if nw < 2 * N_STATES:
        return ERR_WORDS
    words = np.zeros(nw + 2 * N_STATES, dtype=np.uint16)  # padding for branch-free refills
    words[:nw] = words_in
    xs = np.empty(N_STATES, dtype=np.int64)
    for k in range(N_STATES):
        xs[k] = (np.int64(words[2 * k]) << 16) | np.int64(words[2 * k + 1])
        if xs[k] < RANS_L:
            return ERR_FINAL
    pos = np.int64(2 * N_STATES)
    vlut = np.empty(N_DIRECT, dtype=np.float64)
    for z in range(N_DIRECT):
        q = (z >> 1) ^ -(z & 1)
        vlut[z] = round_out(np.float64(q) * step, mode)
    zbase, nbits = symbol_tables()
    rawp = np.zeros(raw.size + 2 * N_STATES + 2, dtype=np.uint32)  # padding: branch-free reads
    rawp[: raw.size] = raw
    nbits_total = np.int64(raw.size) * 32
    bitpos = np.int64(0)
    zmax = np.int64(0)
    use_ctx = n_ctx > 1
    ctx = np.empty(n if use_ctx else 0, dtype=np.uint8)
    if use_ctx:
        # channel scales come first, decoded with the last table
        base = n_ctx * PROB_SCALE
        lev = np.empty(rows + cols, dtype=np.int64)
        for t in range(rows + cols):
            k = t & 3
            x, s = _dec(xs[k], base, lut)
            x, pos = _renorm(x, words, pos)
            if pos > nw:
                return ERR_WORDS
            xs[k] = x
            if s >= SCALE_LEVELS:
                return ERR_SCALE
            lev[t] = s
        # the contexts of a row depend on its level only: build one row per level, then copy
        rl = cols * inner
        crow = np.zeros((SCALE_LEVELS, rl), dtype=np.uint8)
        for r in range(SCALE_LEVELS):
            for i in range(cols):
                c = cmap[feature(r, lev[rows + i])]
                for k in range(inner):
                    crow[r, i * inner + k] = c
        for o in range(rows):
            ctx[o * rl : (o + 1) * rl] = crow[lev[o]]
    x0, x1, x2, x3 = xs[0], xs[1], xs[2], xs[3]
    nb4 = n - (n & 3)
    for j in range(0, nb4, 4):
        if use_ctx:
            b0 = np.int64(ctx[j]) << PROB_BITS
            b1 = np.int64(ctx[j + 1]) << PROB_BITS
            b2 = np.int64(ctx[j + 2]) << PROB_BITS
            b3 = np.int64(ctx[j + 3]) << PROB_BITS
        else:
            b0 = b1 = b2 = b3 = 0
        x0, s0 = _dec(x0, b0, lut)
        x1, s1 = _dec(x1, b1, lut)
        x2, s2 = _dec(x2, b2, lut)
        x3, s3 = _dec(x3, b3, lut)
        x0, pos = _renorm(x0, words, pos)
        x1, pos = _renorm(x1, words, pos)
        x2, pos = _renorm(x2, words, pos)
        x3, pos = _renorm(x3, words, pos)
        if pos > nw:
            return ERR_WORDS
        if fast_ok and (s0 | s1 | s2 | s3) < N_DIRECT:
            out[j] = vlut[s0]
            out[j + 1] = vlut[s1]
            out[j + 2] = vlut[s2]
            out[j + 3] = vlut[s3]
        else:
            v0, bitpos, z0 = _general(s0, rawp, bitpos, zbase, nbits, step, mode)
            v1, bitpos, z1 = _general(s1, rawp, bitpos, zbase, nbits, step, mode)
            v2, bitpos, z2 = _general(s2, rawp, bitpos, zbase, nbits, step, mode)
            v3, bitpos, z3 = _general(s3, rawp, bitpos, zbase, nbits, step, mode)
            out[j] = v0
            out[j + 1] = v1
            out[j + 2] = v2
            out[j + 3] = v3
            zmax = max(zmax, max(max(z0, z1), max(z2, z3)))
            if bitpos > nbits_total:
                return ERR_RAW
    xs[0], xs[1], xs[2], xs[3] = x0, x1, x2, x3
    for j in range(nb4, n):
        k = j & 3
        x, s = _dec(xs[k], (np.int64(ctx[j]) << PROB_BITS) if use_ctx else 0, lut)
        x, pos = _renorm(x, words, pos)
        if pos > nw:
            return ERR_WORDS
        xs[k] = x
        v, bitpos, z = _general(s, rawp, bitpos, zbase, nbits, step, mode)
        out[j] = v
        zmax = max(zmax, z)
        if bitpos > nbits_total:
            return ERR_RAW
    if zmax > 2 * CODE_RADIUS:
        return ERR_CODE
    for k in range(N_STATES):
        if xs[k] != RANS_L:
            return ERR_FINAL
    if pos != nw or (bitpos + 31) >> 5 != raw.size:
        return ERR_FINAL
    if bitpos & 31 and np.int64(rawp[bitpos >> 5]) >> (bitpos & 31) != 0:
        return ERR_FINAL  # padding bits must be zero
    return OK
