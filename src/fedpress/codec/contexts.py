"""Context models for gradient codes: where the codec's bits are saved.

Values of gradients are not predictable, but their *scale* is, and signs inside one convolution
kernel agree more often than chance. So these are used as *contexts* of the entropy coder:

* channel scale context: a weight gradient is a sum of outer products (output-channel error x
  input-channel activation), so its magnitude is close to rank one: ``|g[o, i, ...]| ~ r_o c_i``.
  The per-row and per-column mean magnitudes travel as side information (half-octave integers,
  about 4 bits each) and give every element an expected scale before any code is decoded;
* temporal context: the previous round's reconstructed magnitude at the same element, mixed with
  its kernel's mean (the cross-round information of the gradient-aware EBLC idea);
* kernel sign context: each non-zero code's sign is coded given the balance of signs already
  decoded in the same kernel (positions are decoded one at a time, all kernels at once), and,
  for tensors with channels, given a rank-one sign pattern ``sign(u_o v_i)`` fitted to this
  round's codes and sent as one bit per row and column.

The two magnitude features are combined in the log domain and bucketed in half octaves. All of it
is integer arithmetic after one elementwise float step, so encoder and decoder compute identical
contexts on any machine.
"""

from __future__ import annotations

import numpy as np

from .entropy import AnsReader, AnsWriter, context_counts, read_model, write_model
from .errors import PayloadError

#: sub-step resolution of magnitude features (integers of 1/8 quantization step).
_FRAC = 8
#: resolution of the channel-scale means (1/1024 of a code), and the half-octave shift that
#: puts the channel feature on the same scale as the temporal one (1/8 step).
_SCALE_FRAC = 1024
_SCALE_SHIFT = 14
#: a context is merged into its neighbour below this many elements (model learning cost).
MIN_CONTEXT_SIZE = 1024
SIGN_CLIP = 2


def group_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(groups, group size) for kernel-level statistics: conv kernels, or short row blocks."""
    n = int(np.prod(shape)) if shape else 1
    if len(shape) >= 3 and int(np.prod(shape[2:])) > 1:
        k = int(np.prod(shape[2:]))
        return n // k, k
    cols = int(shape[1]) if len(shape) >= 2 else n
    for k in (9, 8, 7, 6, 5, 4, 3, 2):
        if cols % k == 0 and n % k == 0:
            return n // k, k
    return n, 1


#: half-octave log scale of a zero magnitude, and the range of transmitted scales.
_LOG_FLOOR, _LOG_CEIL = -40, 60
#: weight of the channel-scale feature against the temporal one (in 1/20), measured.
_SCALE_WEIGHT = 17


def half_octaves(v: np.ndarray) -> np.ndarray:
    """``floor(2*log2(v))`` of non-negative integers, zeros get the floor.

    ``frexp`` is exact and the one multiplication is correctly rounded, so the result is the same
    on every IEEE-754 machine (no libm ``log2`` involved).
    """
    v = np.minimum(v.astype(np.int64), 2**30)
    m, e = np.frexp(v.astype(np.float64))
    out = 2 * (e.astype(np.int64) - 1) + (m * m >= 0.5)
    out[v <= 0] = _LOG_FLOOR
    return out


def _steps(a: np.ndarray, abs_eb: float) -> np.ndarray:
    """Magnitudes in 1/_FRAC quantization steps, as integers."""
    u = np.abs(a.reshape(-1).astype(np.float64)) * (_FRAC / (2.0 * abs_eb))
    return np.minimum(np.floor(u), 2.0**30).astype(np.int64)


def has_channel_scales(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and shape[0] > 1 and shape[1] > 1


def channel_scales(codes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Half-octave log of the mean |code| per row, per column, and overall (encoder side).

    Computed from the integer codes, so a row or column whose codes are all zero is known
    exactly (level ``_LOG_FLOOR``) and gets a context of its own that costs nothing to code:
    dead channels (ReLU units that never fired, unused inputs) are common in FL updates.
    """
    a = np.abs(codes.astype(np.int64)).reshape(shape[0], shape[1], -1)
    # means in 1/_SCALE_FRAC of a code: fine enough for sparse codes at loose bounds
    rows = a.sum(axis=(1, 2)) * _SCALE_FRAC // (a.size // shape[0])
    cols = a.sum(axis=(0, 2)) * _SCALE_FRAC // (a.size // shape[1])
    rows[(rows == 0) & (a.sum(axis=(1, 2)) > 0)] = 1  # non-zero rows never look dead
    cols[(cols == 0) & (a.sum(axis=(0, 2)) > 0)] = 1
    total = np.array([max(a.sum() * _SCALE_FRAC // a.size, 1)])
    return np.clip(half_octaves(np.concatenate([rows, cols, total])), _LOG_FLOOR, _LOG_CEIL)


def write_scales(w: AnsWriter, scales: np.ndarray) -> None:
    sym = (scales - _LOG_FLOOR).astype(np.int32)
    model = write_model(w, sym, _LOG_CEIL - _LOG_FLOOR + 1)
    if model is not None:
        w.write(sym, model)


def read_scales(r: AnsReader, shape: tuple[int, ...]) -> np.ndarray:
    n = shape[0] + shape[1] + 1
    model, top = read_model(r)
    if top > _LOG_CEIL - _LOG_FLOOR:
        raise PayloadError("channel scale out of range")
    sym = r.read(n, model) if model is not None else np.zeros(n, dtype=np.int32)
    return sym.astype(np.int64) + _LOG_FLOOR


#: elements per chunk where a feature is computed through float64/int64 temporaries.
_CHUNK = 1 << 18


def magnitude_contexts(
    shape: tuple[int, ...], abs_eb: float, scales: np.ndarray | None, prev: np.ndarray | None
) -> tuple[np.ndarray | None, int]:
    """Context index per element (uint8) from channel scales and/or last round.

    The same integers on both sides. Features are small (int16), and the temporal one is
    computed in chunks of whole kernels, so the decoder's working memory stays a few bytes per
    element.
    """
    n = int(np.prod(shape))
    feats = []
    dead = None
    if scales is not None:
        rows, cols, total = scales[: shape[0]], scales[shape[0] : shape[0] + shape[1]], scales[-1]
        rest = n // (shape[0] * shape[1])
        f = (rows[:, None] + cols[None, :] - total - _SCALE_SHIFT).astype(np.int16)
        feats.append(np.repeat(f.reshape(-1), rest))
        d = (rows[:, None] == _LOG_FLOOR) | (cols[None, :] == _LOG_FLOOR)
        dead = np.repeat(d.reshape(-1), rest) if d.any() else None
    if prev is not None:
        feats.append(_temporal_feature(prev, abs_eb, shape))
    if not feats:
        return None, 1
    if len(feats) == 2:
        f = feats[0]
        f *= _SCALE_WEIGHT  # |values| stay below 2**12: int16 is exact
        f += (20 - _SCALE_WEIGHT) * feats[1]
        f //= 20
    else:
        f = feats[0]
    np.clip(f, -16, 40, out=f)
    f += 17
    if dead is not None:
        f[dead] = 0  # all codes there are zero: a context of its own, coded for free
    return merge_small_contexts(f, 58)


def _temporal_feature(prev: np.ndarray, abs_eb: float, shape: tuple[int, ...]) -> np.ndarray:
    """Half-octave of last round's magnitude mixed with its kernel's mean, in steps (int16)."""
    groups, k = group_view(shape)
    flat = prev.reshape(groups, k)
    out = np.empty((groups, k), dtype=np.int16)
    step = max(1, _CHUNK // k)
    for g0 in range(0, groups, step):
        ui = _steps(flat[g0 : g0 + step], abs_eb).reshape(-1, k)
        if k > 1:
            gm = ui.sum(axis=1) // k  # exact integer kernel mean
            ui = (ui + gm[:, None]) // 2
        out[g0 : g0 + step] = half_octaves(ui) - 2 * 3  # 1/_FRAC steps -> steps
    return out.reshape(-1)


def merge_small_contexts(ctx: np.ndarray, n_ctx: int) -> tuple[np.ndarray, int]:
    """Merge each context smaller than ``MIN_CONTEXT_SIZE`` into the next one (deterministic).

    Returns uint8 contexts (``n_ctx`` is at most 256).
    """
    counts = context_counts(ctx, n_ctx)
    mapping = np.zeros(n_ctx, dtype=np.uint8)
    new, acc = 0, 0
    for c in range(n_ctx):
        mapping[c] = new
        acc += counts[c]
        if acc >= MIN_CONTEXT_SIZE:
            new += 1
            acc = 0
    n_new = new + (1 if acc else 0)
    if acc and n_new > 1:  # a small tail joins the previous context
        mapping[mapping == n_new - 1] = n_new - 2
        n_new -= 1
    return mapping[ctx], max(n_new, 1)


_RUN_STATES = 2 * SIGN_CLIP + 1


def _sign_state(run: np.ndarray, hint: np.ndarray | None) -> np.ndarray:
    state = np.clip(run, -SIGN_CLIP, SIGN_CLIP) + SIGN_CLIP
    return state if hint is None else state * 2 + hint


def sign_basis(codes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Rank-one sign pattern of the codes: bits of ``u < 0`` (rows) then ``v < 0`` (columns).

    A few rounds of alternating majority votes on the per-(row, column) sign sums, the binary
    analogue of a power iteration; ties resolve to +1.
    """
    m = np.sign(codes).reshape(shape[0], shape[1], -1).sum(axis=2).astype(np.int64)
    u = np.where(m.sum(axis=1) >= 0, 1, -1)
    for _ in range(4):
        v = np.where(u @ m >= 0, 1, -1)
        u = np.where(m @ v >= 0, 1, -1)
    return np.concatenate([u < 0, v < 0]).astype(np.int32)


def sign_hint(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per element 1 where the rank-one pattern predicts a negative sign, as (groups, k)."""
    u = np.where(bits[: shape[0]] == 1, -1, 1)
    v = np.where(bits[shape[0] :] == 1, -1, 1)
    rest = int(np.prod(shape)) // (shape[0] * shape[1])
    hint = np.repeat((np.outer(u, v) < 0).reshape(-1), rest).astype(np.int8)
    groups, k = group_view(shape)
    return hint.reshape(groups, k)


def write_kernel_signs(
    w: AnsWriter, codes: np.ndarray, shape: tuple[int, ...], basis: bool = False
) -> None:
    """Signs of non-zero codes, position by position, given the signs so far in the kernel
    (and the rank-one sign pattern when ``basis``)."""
    groups, k = group_view(shape)
    q = codes.reshape(groups, k)
    hint = None
    if basis:
        bits = sign_basis(codes, shape)
        w.write_uniform(bits, 1)
        hint = sign_hint(bits, shape)
    s = np.sign(q).astype(np.int64)
    run = np.zeros((groups, k), dtype=np.int64)
    if k > 1:
        run[:, 1:] = np.cumsum(s, axis=1)[:, :-1]
    state = _sign_state(run, hint)
    nz = q != 0
    neg = (q < 0).astype(np.int32)
    n_states = _RUN_STATES * (1 if hint is None else 2)
    st, ng = state[nz], neg[nz]
    models = [write_model(w, ng[st == c], 2) for c in range(n_states)]
    # chunks in decoding order (position j, then state c): one radix sort instead of k*5 masks
    pos = np.broadcast_to(np.arange(k), (groups, k))[nz]
    key = (pos * n_states + st).astype(np.uint16)
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(k * n_states + 1))
    for chunk in range(k * n_states):
        model = models[chunk % n_states]
        if model is not None and bounds[chunk + 1] > bounds[chunk]:
            w.write(ng[order[bounds[chunk] : bounds[chunk + 1]]], model)


def read_kernel_signs(
    r: AnsReader, mags: np.ndarray, shape: tuple[int, ...], basis: bool = False
) -> np.ndarray:
    groups, k = group_view(shape)
    m = mags.reshape(groups, k)
    hint = None
    if basis:
        bits = r.read_uniform(shape[0] + shape[1], 1).astype(np.int32)
        hint = sign_hint(bits, shape)
    n_states = _RUN_STATES * (1 if hint is None else 2)
    models = []
    for _ in range(n_states):
        model, top = read_model(r)
        if top > 1:
            raise PayloadError("sign model out of range")
        models.append((model, top))
    # signs are applied in place: ``mags`` becomes the codes (no copy of the tensor)
    run = np.zeros(groups, dtype=np.int64)
    for j in range(k):
        col = m[:, j]
        nz = np.flatnonzero(col)
        if not nz.size:
            continue  # no sign to read in this position: the run stays as it is
        stj = _sign_state(run[nz], None if hint is None else hint[nz, j])
        neg = np.zeros(nz.size, dtype=bool)
        for c in range(n_states):
            sel = np.flatnonzero(stj == c)
            if not sel.size:
                continue
            model, top = models[c]
            neg[sel] = (r.read(sel.size, model) if model is not None else top) == 1
        vals = col[nz]
        vals[neg] *= -1
        m[nz, j] = vals
        run[nz] += np.sign(vals)
    return m.reshape(-1)
