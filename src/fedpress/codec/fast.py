"""``fast``: an error-bounded codec at SZ3 speed, with channel-scale contexts (stateless).

The best-ratio codec (``grad``) runs many numpy passes and constriction's ANS; this one does the
same kind of work in a few compiled passes (``rans.py``):

encode: [REL: one min/max scan] -> one fused pass (quantize with bins of ``2*abs_eb``, bound check
against the reconstruction in the output dtype, verbatim list, symbol mapping, histogram, channel
sums) -> [matrices and conv kernels: one feature pass + a tiny exact DP that picks up to 8
channel-scale contexts, kept only when they pay for their side info] -> one rANS pass.
decode: side info -> lookup tables -> one fused rANS + dequantize pass -> verbatim patch.

Frame (after the common kind byte; empty and exact frames as in ``linear``)::

    abs_eb f64, n_ctx u8,
    section  side info: context starts (5 bits each), then n_ctx (+1 scale) frequency tables
    section  rANS words (uint16 LE, decoding order: 4 states, [channel scales], codes)
    section  raw escape bits (uint32 LE words, LSB first)
    verbatim list (frame.write_verbatim)

Every element keeps ``|x - x_hat| <= abs_eb``: the bound is checked in float64 against the very
value the decoder computes (same compiled arithmetic on both sides), elements that miss it are
stored exactly. A malformed frame raises ``PayloadError``: every read in the compiled decoder is
bounds-checked, and a stream that does not end exactly in the encoder's initial state is refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import rans
from .base import SUPPORTED_DTYPES, BoundedCodec, LayerState, check_dtype, check_finite, register_codec
from .errors import CodecError, PayloadError
from .frame import FrameReader, FrameWriter, read_verbatim, write_verbatim
from .linear import (
    KIND_EMPTY,
    KIND_EXACT,
    KIND_QUANTIZED,
    check_abs_eb,
    decode_exact,
    encode_exact_or_empty,
)

#: smallest tensor for which channel-scale contexts are tried (side info and table cost).
MIN_CONTEXT_ELEMENTS = 4096
#: one more context allowed per this many elements (2 to rans.MAX_CTX).
CONTEXT_ELEMENTS = 8192
#: contexts must save at least this share of the estimated bits to be used.
CONTEXT_MARGIN = 0.005

_EMPTY_U8 = np.zeros(0, dtype=np.uint8)
_ZERO_CMAP = np.zeros(1, dtype=np.uint8)


def context_layout(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(rows, cols, inner) for channel-scale contexts, or None; the same on both sides."""
    if len(shape) < 2 or shape[0] < 2 or shape[1] < 2:
        return None
    n = math.prod(shape)
    if n < MIN_CONTEXT_ELEMENTS:
        return None
    return int(shape[0]), int(shape[1]), n // (int(shape[0]) * int(shape[1]))


def _work(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """The array the kernels read (float16 is widened exactly) and the output mode."""
    if flat.dtype == np.float64:
        return flat, rans.MODE_F64
    if flat.dtype == np.float32:
        return flat, rans.MODE_F32
    return flat.astype(np.float32), rans.MODE_F16


@register_codec
class FastCodec(BoundedCodec):
    """Linear quantization + channel-scale contexts + 4-way interleaved rANS, in numba."""

    name = "fast"

    def __init__(self, mode: str = "rel", eb: float = 1e-2) -> None:
        super().__init__(mode, eb)

    def params(self) -> dict[str, Any]:
        return super().params()

    # ------------------------------------------------------------------ encode
    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        check_dtype(x)
        x = np.asarray(x)
        shape = tuple(x.shape)
        flat = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")).reshape(-1)
        n = flat.size
        if n == 0:
            return encode_exact_or_empty(flat, 0.0)
        work, omode = _work(flat)
        if self.bound.mode == "rel":
            mn, mx = float(work.min()), float(work.max())
            if not (math.isfinite(mn) and math.isfinite(mx)):
                check_finite(flat)  # raises NonFiniteError
            abs_eb = float(self.bound.value) * (mx - mn)
        else:
            abs_eb = float(self.bound.value)
        special = encode_exact_or_empty(flat, abs_eb)
        if special is not None:
            check_finite(flat)
            return special

        step = 2.0 * abs_eb
        layout = context_layout(shape)
        rows, cols, inner = layout if layout is not None else (1, 1, n)
        z = np.empty(n, dtype=np.uint32)
        rsum = np.zeros(rows, dtype=np.int64)
        csum = np.zeros(cols, dtype=np.int64)
        rans.quantize(work, step, 1.0 / step, abs_eb, omode, rows, cols, inner, z, rsum, csum)
        use_f = layout is not None
        if use_f:
            rlev = rans.scale_levels(rsum, cols * inner)
            clev = rans.scale_levels(csum, rows * inner)
        else:
            rlev = clev = _EMPTY_U8
        sym = np.empty(n, dtype=np.uint8)
        fidx = np.empty(n if use_f else 0, dtype=np.uint8)
        vpos = np.empty(n, dtype=np.int64)
        raw = np.empty(n + 2, dtype=np.uint32)
        nv, nraw, h2 = rans.symbolize(z, rows, cols, inner, rlev, clev, use_f, sym, fidx, vpos, raw)
        index = vpos[:nv]
        if nv and self.bound.mode == "abs":
            check_finite(flat[index])  # NaN/Inf are always verbatim: raises NonFiniteError

        n_ctx, cmap, starts, pre = 1, _ZERO_CMAP, np.zeros(0, np.int64), _EMPTY_U8
        counts = h2.sum(axis=0)[None, :]
        if use_f:
            ctx = _contexts(h2, rlev, clev, max_contexts(n))
            if ctx is not None:
                n_ctx, cmap, starts, pre, counts = ctx

        freqs, sigs, bigs = rans.build_tables(counts)
        meta = rans.write_meta(freqs, sigs, bigs, starts)
        tab = rans.encoder_table(freqs, rans.cumulative(freqs))
        words = rans.rans_encode(sym, fidx, cmap, n_ctx > 1, pre, n_ctx, tab)

        w = FrameWriter()
        w.pack("BdB", KIND_QUANTIZED, abs_eb, n_ctx)
        w.section(meta.tobytes())
        w.section(words.astype("<u2", copy=False).tobytes())
        w.section(raw[:nraw].astype("<u4", copy=False).tobytes())
        write_verbatim(w, index, flat[index])
        return w.getvalue()

    # ------------------------------------------------------------------ decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype.name not in SUPPORTED_DTYPES:
            raise CodecError(f"unsupported dtype {dtype.name}; codecs take {', '.join(SUPPORTED_DTYPES)}")
        dtype = dtype.newbyteorder("=")
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise PayloadError(f"negative dimension in shape {shape}")
        try:
            return self._decode(bytes(frame), shape, dtype)
        except CodecError:
            raise
        except (ValueError, IndexError, TypeError, OverflowError, MemoryError) as exc:
            raise PayloadError(f"malformed fast frame ({type(exc).__name__}: {exc})") from None

    def _decode(self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        r = FrameReader(frame)
        (kind,) = r.unpack("B")
        n = math.prod(shape)
        if kind == KIND_EMPTY:
            r.done()
            if n:
                raise PayloadError(f"empty frame for a tensor of {n} elements")
            return np.zeros(shape, dtype=dtype)
        if kind == KIND_EXACT:
            return decode_exact(r, shape, dtype)
        if kind != KIND_QUANTIZED:
            raise PayloadError(f"unknown fast frame kind {kind}")
        abs_eb, n_ctx = r.unpack("dB")
        check_abs_eb(abs_eb)
        if n == 0:
            raise PayloadError("quantized frame for an empty tensor")
        layout = context_layout(shape)
        if not 1 <= n_ctx <= rans.MAX_CTX or (n_ctx > 1 and layout is None):
            raise PayloadError(f"invalid context count {n_ctx} for shape {shape}")
        rows, cols, inner = layout if layout is not None else (1, 1, n)
        meta = np.frombuffer(r.section(), dtype=np.uint8)
        words_b = r.section()
        raw_b = r.section()
        index, values = read_verbatim(r, n, dtype)
        r.done()
        if len(words_b) % 2 or len(raw_b) % 4:
            raise PayloadError("entropy-coded sections have a partial word")
        words = np.frombuffer(words_b, dtype="<u2").astype(np.uint16, copy=False)
        raw = np.frombuffer(raw_b, dtype="<u4").astype(np.uint32, copy=False)
        n_tables = n_ctx + 1 if n_ctx > 1 else 1
        err, starts, freqs = rans.read_meta(meta, n_ctx, n_tables)
        if err:
            raise PayloadError(f"fast frame: {rans.ERROR_TEXT[err]}")
        lut = rans.build_lut(freqs, rans.cumulative(freqs))
        cmap = rans.context_map(starts)
        _, omode = _work(np.zeros(0, dtype=dtype))
        out = np.empty(n, dtype=np.float64 if omode == rans.MODE_F64 else np.float32)
        err = rans.rans_decode(words, raw, lut, n_ctx, cmap, rows, cols, inner, 2.0 * abs_eb, omode, out)
        if err:
            raise PayloadError(f"fast frame: {rans.ERROR_TEXT[err]}")
        if omode == rans.MODE_F16:
            out = out.astype(np.float16)  # exact: every value is already a float16
        if index.size:
            out[index] = values
        return out.reshape(shape)


def max_contexts(n: int) -> int:
    """More contexts for larger tensors: each one costs a table and a decoder lookup block."""
    return int(min(rans.MAX_CTX, max(2, n // CONTEXT_ELEMENTS)))


def _contexts(h2, rlev, clev, max_ctx):
    """Channel-scale contexts when they pay for their side info, else None."""
    one, best, starts = rans.choose_contexts(h2, max_ctx)
    if starts.size == 0:
        return None
    pre = np.concatenate([rlev, clev])
    pre_counts = np.bincount(pre, minlength=rans.ALPHABET).astype(np.int64)
    if best + rans.ideal_bits(pre_counts) >= one * (1.0 - CONTEXT_MARGIN):
        return None
    cmap = rans.context_map(starts)
    n_ctx = starts.size + 1
    counts = np.concatenate([rans.context_hists(h2, cmap, n_ctx), pre_counts[None, :]])
    return n_ctx, cmap, starts, pre, counts
