"""Entropy coding of quantization codes with explicit, per-context models (ANS via constriction).

Why this shape: the codes of gradients are not predictable in value, but their *scale* is
(from last round, from the kernel). So the coder splits symbols into contexts that both sides
can compute before decoding, gives each context its own categorical model, and codes every
context's symbols in one vectorised call. Models travel as compact side information (log-scale
counts, 6 bits per alphabet entry), which keeps small tensors cheap.

Everything goes into one ANS bit stream. ANS is a stack, so the writer records chunks in
*decoding* order and encodes them reversed in ``finish()``.

Magnitudes use classes: 0..15 directly, above that two classes per octave plus raw mantissa bits
(an exponent-mantissa split as in JPEG's coefficient coding), so the alphabet stays at 70 symbols
for any code up to 2**30.
"""

from __future__ import annotations

import constriction
import numpy as np

from .errors import PayloadError

_model = constriction.stream.model
N_DIRECT = 16
ALPHABET = N_DIRECT + 2 * (30 - 4 + 1)  # classes up to exponent 30
_LOG_LEVELS = 64  # side-info resolution of model counts


class AnsWriter:
    """Collects (symbols, model) chunks in decoding order; ``finish`` returns the bit stream."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, object]] = []

    def write(self, symbols: np.ndarray, model: object) -> None:
        if symbols.size:
            self._chunks.append((np.ascontiguousarray(symbols, dtype=np.int32), model))

    def write_uniform(self, values: np.ndarray, nbits: int) -> None:
        """Raw bits (``0 <= values < 2**nbits``), split in 16-bit pieces for the coder."""
        values = np.asarray(values, dtype=np.int64)
        lo = 0
        while lo < nbits:
            w = min(16, nbits - lo)
            self.write(((values >> lo) & ((1 << w) - 1)).astype(np.int32), _model.Uniform(1 << w))
            lo += w

    def finish(self) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        for symbols, model in reversed(self._chunks):
            coder.encode_reverse(symbols, model)
        return coder.get_compressed().tobytes()


class AnsReader:
    """Mirror of ``AnsWriter``: read chunks in the order they were written."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise PayloadError("entropy-coded section is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype=np.uint32).copy()
        try:
            self._coder = constriction.stream.stack.AnsCoder(words)
        except (ValueError, RuntimeError) as exc:  # e.g. a section ending in a zero word
            raise PayloadError(f"entropy-coded section is corrupt ({exc})") from None

    def read(self, n: int, model: object) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        try:
            return np.asarray(self._coder.decode(model, int(n)), dtype=np.int32)
        except Exception as exc:  # constriction raises several types on exhausted/corrupt input
            raise PayloadError(f"entropy-coded section is corrupt ({exc})") from None
        except BaseException as exc:
            # a Rust panic surfaces as pyo3's PanicException, a BaseException; anything else
            # (KeyboardInterrupt, SystemExit) must propagate
            if type(exc).__name__ != "PanicException":
                raise
            raise PayloadError(f"entropy-coded section is corrupt ({exc})") from None

    def done(self) -> None:
        """Refuse a section with data left over (truncated, extended or mis-framed)."""
        if not self._coder.is_empty():
            raise PayloadError("entropy-coded section has data left over: corrupt or mis-framed")

    def read_uniform(self, n: int, nbits: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        lo = 0
        while lo < nbits:
            w = min(16, nbits - lo)
            out |= self.read(n, _model.Uniform(1 << w)).astype(np.int64) << lo
            lo += w
        return out


# ---------------------------------------------------------------- categorical models as side info
def _levels(counts: np.ndarray) -> np.ndarray:
    return np.minimum(np.rint(2.0 * np.log2(counts + 1.0)), _LOG_LEVELS - 1).astype(np.int32)


def _model_from_levels(levels: np.ndarray) -> object:
    if not levels.size or levels.max() <= 0:
        raise PayloadError("model side info has no probability mass")
    probs = np.exp2(levels.astype(np.float64) / 2.0) - 1.0
    try:
        return _model.Categorical(probs, perfect=False)
    except (ValueError, RuntimeError) as exc:
        raise PayloadError(f"model side info is invalid ({exc})") from None


def write_model(w: AnsWriter, symbols: np.ndarray, alphabet: int) -> object:
    """Fit a categorical model to ``symbols``, write it as side info, return it."""
    counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
    top = int(np.flatnonzero(counts).max()) if symbols.size else 0
    levels = _levels(counts[: top + 1])
    w.write(np.array([top], dtype=np.int32), _model.Uniform(256))
    if top == 0:
        return None  # a single symbol: nothing to code
    w.write(levels, _model.Uniform(_LOG_LEVELS))
    return _model_from_levels(levels)


def read_model(r: AnsReader) -> tuple[object, int]:
    top = int(r.read(1, _model.Uniform(256))[0])
    if top == 0:
        return None, 0
    if top >= 256:
        raise PayloadError("model side info out of range")
    levels = r.read(top + 1, _model.Uniform(_LOG_LEVELS))
    return _model_from_levels(levels), top


def write_symbols(w: AnsWriter, symbols: np.ndarray, alphabet: int) -> None:
    """Model + symbols of one context."""
    if symbols.size == 0:
        return
    model = write_model(w, symbols, alphabet)
    if model is not None:
        w.write(symbols, model)


def read_symbols(r: AnsReader, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    model, top = read_model(r)
    if model is None:
        return np.zeros(n, dtype=np.int32)
    out = r.read(n, model)
    if out.size and out.max() > top:
        raise PayloadError("decoded symbol outside its model's alphabet")
    return out


# ---------------------------------------------------------------- magnitude classes
def magnitude_classes(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split non-negative ints into (class symbol, number of raw bits, raw bits)."""
    m = m.astype(np.int64)
    sym = m.copy()
    nbits = np.zeros(m.shape, dtype=np.int64)
    big = m >= N_DIRECT
    if big.any():
        mb = m[big]
        e = np.frexp(mb.astype(np.float64))[1].astype(np.int64) - 1  # floor(log2 m), exact
        top = (mb >> (e - 1)) & 1
        sym[big] = N_DIRECT + 2 * (e - 4) + top
        nbits[big] = e - 1
    extra = m & ((np.int64(1) << nbits) - 1)
    return sym.astype(np.int32), nbits, extra


def class_nbits(sym: np.ndarray) -> np.ndarray:
    s = sym.astype(np.int64)
    return np.where(s >= N_DIRECT, (s - N_DIRECT) // 2 + 3, 0)


def magnitudes_from_classes(sym: np.ndarray, extra: np.ndarray) -> np.ndarray:
    s = sym.astype(np.int64)
    big = s >= N_DIRECT
    out = s.copy()
    if big.any():
        sb = s[big]
        e = (sb - N_DIRECT) // 2 + 4
        top = (sb - N_DIRECT) & 1
        out[big] = (np.int64(1) << e) | (top << (e - 1)) | extra[big]
    return out


def write_extra_bits(w: AnsWriter, nbits: np.ndarray, extra: np.ndarray) -> None:
    """Raw mantissa bits grouped by width (the decoder knows every width from the classes)."""
    for nb in _widths(nbits):
        w.write_uniform(extra[nbits == nb], int(nb))


def read_extra_bits(r: AnsReader, nbits: np.ndarray) -> np.ndarray:
    extra = np.zeros(nbits.shape, dtype=np.int64)
    for nb in _widths(nbits):
        sel = nbits == nb
        extra[sel] = r.read_uniform(int(sel.sum()), int(nb))
    return extra


def _widths(nbits: np.ndarray) -> np.ndarray:
    """Non-zero raw-bit widths present (bincount: far cheaper than np.unique on big arrays)."""
    if not nbits.size:
        return np.zeros(0, dtype=np.int64)
    present = np.flatnonzero(np.bincount(nbits))
    return present[present > 0]


# ---------------------------------------------------------------- codes under contexts
def write_magnitudes(w: AnsWriter, mags: np.ndarray, ctx: np.ndarray | None, n_ctx: int) -> None:
    """Magnitudes, each context with its own model; ``ctx`` is known to the decoder."""
    sym, nbits, extra = magnitude_classes(mags)
    if ctx is None or n_ctx <= 1:
        write_symbols(w, sym, ALPHABET)
    else:
        order, bounds = _group(ctx, n_ctx)
        for c in range(n_ctx):
            write_symbols(w, sym[order[bounds[c] : bounds[c + 1]]], ALPHABET)
    write_extra_bits(w, nbits, extra)


def read_magnitudes(r: AnsReader, n: int, ctx: np.ndarray | None, n_ctx: int) -> np.ndarray:
    """Magnitudes as int32 (codes stay below 2**31), in O(n) extra memory of a few bytes.

    Symbols of each context are scattered in place through a boolean mask (positions in
    ascending order, as the encoder's stable sort wrote them), and the raw mantissa bits are
    read only for the elements whose class has any: no n-sized int64 temporaries.
    """
    if ctx is None or n_ctx <= 1:
        sym = read_symbols(r, n)
    else:
        sym = np.zeros(n, dtype=np.int32)
        for c, count in enumerate(context_counts(ctx, n_ctx)):
            if count:
                sym[ctx == c] = read_symbols(r, int(count))
    if sym.size and sym.max() >= ALPHABET:
        raise PayloadError("magnitude class out of range")
    big = np.flatnonzero(sym >= N_DIRECT)
    if big.size:
        sb = sym[big].astype(np.int64)
        sym[big] = magnitudes_from_classes(sb, read_extra_bits(r, class_nbits(sb)))
    return sym


def context_counts(ctx: np.ndarray, n_ctx: int) -> np.ndarray:
    """Elements per context; large arrays are counted context by context (no int64 copy)."""
    if ctx.size <= 1 << 22:
        return np.bincount(ctx, minlength=n_ctx)[:n_ctx]
    return np.array([np.count_nonzero(ctx == c) for c in range(n_ctx)], dtype=np.int64)


def _group(ctx: np.ndarray, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted by context (stable radix sort on a small dtype) and the group bounds."""
    small = ctx.astype(np.uint8 if n_ctx <= 256 else np.uint16)
    order = np.argsort(small, kind="stable")
    return order, np.searchsorted(small[order], np.arange(n_ctx + 1))


def estimated_bits(sym: np.ndarray, ctx: np.ndarray | None, n_ctx: int, alphabet: int) -> float:
    """Code length of ``sym`` under per-context fitted models, side info included (an estimate
    good to a fraction of a percent; lets the encoder decide whether a context pays)."""
    if sym.size == 0:
        return 0.0
    if ctx is None or n_ctx <= 1:
        counts = np.bincount(sym, minlength=alphabet)[None, :]
    else:
        key = ctx.astype(np.int64) * alphabet + sym
        counts = np.bincount(key, minlength=n_ctx * alphabet).reshape(n_ctx, alphabet)
    totals = counts.sum(axis=1, keepdims=True)
    nz = counts > 0
    p = np.where(nz, counts / np.maximum(totals, 1), 1.0)
    data_bits = float(-(counts * np.log2(p)).sum())
    used = totals[:, 0] > 0
    tops = np.where(nz, np.arange(alphabet), -1).max(axis=1)
    side = float((8 + np.where(tops > 0, 6 * (tops + 1), 0))[used].sum())
    return data_bits + side


def zeroth_order_entropy_bits(codes: np.ndarray) -> float:
    """Shannon entropy of the codes' empirical distribution, in bits per code (for reports)."""
    if codes.size == 0:
        return 0.0
    _, counts = np.unique(codes, return_counts=True)
    p = counts / codes.size
    return float(-(p * np.log2(p)).sum())
