"""``fast``: the error-bounded codec at (above) SZ3 speed, with channel-scale contexts. Stateless.

The best-ratio codec (``grad``) runs many numpy passes and constriction's ANS; this one does the
same kind of work in a few compiled passes (``rans.py``, numba):

encode: [REL: numpy min/max] -> quantize (vectorised: ``q = rint(x / 2e)``, bound check against
the reconstruction in the output dtype, per-row/column sums of |q|) -> symbolize (symbols, escape
bits, verbatim list, joint histogram with the channel-scale feature) -> [matrices and conv
kernels: a small exact DP cuts the feature axis into at most 8 contexts, kept only when they pay
for their side info] -> one rANS pass (4 interleaved states, division-free).
decode: side info -> lookup tables -> one fused rANS + dequantize pass -> verbatim patch.

The channel-scale context: a weight gradient is a sum of outer products, so its magnitude is close
to rank one, ``|g[o, i, ...]| ~ r_o c_i``. Half-octave levels of the per-row and per-column mean
|q| travel as side information (rANS-coded, ~2-4 bits each); the feature ``rs[o] + cs[i]`` of each
element picks its frequency table. On i.i.d. data the encoder sees no gain and sends one table.

Frame (``kind`` u8 first; empty and exact frames as in ``linear``)::

    kind u8 = 2, abs_eb f64, n_ctx u8,
    section  side info: context starts (5 bits each), then n_ctx (+1 scale) frequency tables
    section  rANS words (uint16 LE, decoding order: 4 states, [channel scales], codes)
    section  raw escape bits (uint32 LE words, LSB first)
    verbatim list (frame.write_verbatim)
    crc32 of everything before it (u32 LE)

Every element keeps ``|x - x_hat| <= abs_eb``: the bound is checked in float64 against the very
value the decoder computes (same compiled arithmetic on both sides), and elements that miss it
(rounding, overflow of the code radius, float16 range) are stored exactly. A malformed frame raises
``PayloadError``: the checksum catches accidental damage, and a forged frame with a valid
checksum is still safe: every read of the compiled decoder is bounds-checked, every loop is
bounded, and a stream that does not end exactly in the encoder's initial state is refused.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import numpy as np

from .base import (
    SUPPORTED_DTYPES,
    BoundedCodec,
    LayerState,
    check_dtype,
    check_finite,
    register_codec,
)
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
#: one more context allowed per this many elements (2 up to rans.MAX_CTX): each context costs a
#: table in the frame and a 16 KiB lookup block in the decoder.
CONTEXT_ELEMENTS = 8192
#: contexts must save at least this share of the estimated bits to be used.
CONTEXT_MARGIN = 0.005

class _LazyKernels:
    """The compiled kernels (``rans.py``), imported on first use: importing numba and loading its
    cached machine code costs about a second, which only users of ``fast`` should pay, once."""

    def __getattr__(self, name: str) -> Any:
        from . import rans as module

        globals()["rans"] = module  # later lookups go straight to the module
        return getattr(module, name)


rans: Any = _LazyKernels()

_EMPTY_U8 = np.zeros(0, dtype=np.uint8)
_ZERO_CMAP = np.zeros(1, dtype=np.uint8)
_NO_STARTS = np.zeros(0, dtype=np.int64)
_CRC = struct.Struct("<I")


def context_layout(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(rows, cols, inner) for channel-scale contexts, or None; the same on both sides."""
    if len(shape) < 2 or shape[0] < 2 or shape[1] < 2:
        return None
    n = math.prod(shape)
    if n < MIN_CONTEXT_ELEMENTS:
        return None
    return int(shape[0]), int(shape[1]), n // (int(shape[0]) * int(shape[1]))


def max_contexts(n: int) -> int:
    return int(min(rans.MAX_CTX, max(2, n // CONTEXT_ELEMENTS)))


def output_mode(dtype: np.dtype) -> int:
    return {"float64": rans.MODE_F64, "float32": rans.MODE_F32}.get(dtype.name, rans.MODE_F16)


@register_codec
class FastCodec(BoundedCodec):
    """Linear quantization + channel-scale contexts + 4-way interleaved rANS, compiled."""

    name = "fast"

    def __init__(self, mode: str = "rel", eb: float = 1e-2, contexts: bool = True) -> None:
        super().__init__(mode, eb)
        #: False gives plain linear quantization + one rANS table (the compiled ``linear``)
        self.contexts = bool(contexts)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "contexts": self.contexts}

    # ------------------------------------------------------------------ encode
    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        check_dtype(x)
        x = np.asarray(x)
        shape = tuple(x.shape)
        flat = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")).reshape(-1)
        n = flat.size
        if n == 0:
            return encode_exact_or_empty(flat, 0.0)
        omode = output_mode(flat.dtype)
        work = flat.astype(np.float32) if omode == rans.MODE_F16 else flat  # exact widening
        if self.bound.mode == "rel":
            mn, mx = float(work.min()), float(work.max())  # NaN propagates, Inf shows
            if not (math.isfinite(mn) and math.isfinite(mx)):
                check_finite(flat)  # raises NonFiniteError
            abs_eb = float(self.bound.value) * (mx - mn)  # == ErrorBound.absolute(x)
        else:
            abs_eb = float(self.bound.value)
        step = 2.0 * abs_eb
        special = encode_exact_or_empty(flat, abs_eb if math.isfinite(step) else 0.0)
        if special is not None:
            check_finite(flat)
            return special

        layout = context_layout(shape) if self.contexts else None
        use_f = layout is not None
        rows, cols, inner = layout if use_f else (1, 1, n)
        z = np.empty(n, dtype=np.uint32)
        rsum = np.zeros(rows, dtype=np.int64)
        csum = np.zeros(cols, dtype=np.int64)
        nbad = rans.quantize(
            work, step, 1.0 / step, abs_eb, omode, rows, cols, inner, z, rsum, csum
        )
        if use_f:
            rlev = rans.scale_levels(rsum, cols * inner)
            clev = rans.scale_levels(csum, rows * inner)
        else:
            rlev = clev = _EMPTY_U8
        sym = np.empty(n, dtype=np.uint8)
        fidx = np.empty(n if use_f else 0, dtype=np.uint8)
        vpos = np.empty(nbad, dtype=np.int64)
        raw = np.empty(n + 2, dtype=np.uint32)
        nv, nraw, h2 = rans.symbolize(z, rows, cols, inner, rlev, clev, use_f, sym, fidx, vpos, raw)
        index = vpos[:nv]
        if nv and self.bound.mode == "abs":
            check_finite(flat[index])  # NaN/Inf always land in the verbatim list: raises

        n_ctx, cmap, starts, pre = 1, _ZERO_CMAP, _NO_STARTS, _EMPTY_U8
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
        body = w.getvalue()
        return body + _CRC.pack(zlib.crc32(body))

    # ------------------------------------------------------------------ decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype.name not in SUPPORTED_DTYPES:
            raise CodecError(
                f"unsupported dtype {dtype.name}; codecs take {', '.join(SUPPORTED_DTYPES)}"
            )
        dtype = dtype.newbyteorder("=")
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise PayloadError(f"negative dimension in shape {shape}")
        try:
            return self._decode(memoryview(frame).cast("B"), shape, dtype)
        except CodecError:
            raise
        except (ValueError, IndexError, TypeError, OverflowError, MemoryError, struct.error) as exc:
            raise PayloadError(f"malformed fast frame ({type(exc).__name__}: {exc})") from None

    def _decode(self, frame: memoryview, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        n = math.prod(shape)
        if not len(frame):
            raise PayloadError("frame is truncated")
        kind = frame[0]
        if kind == KIND_EMPTY:
            FrameReader(frame[1:]).done()
            if n:
                raise PayloadError(f"empty frame for a tensor of {n} elements")
            return np.zeros(shape, dtype=dtype)
        if kind == KIND_EXACT:
            return decode_exact(_reader_after_kind(frame), shape, dtype)
        if kind != KIND_QUANTIZED:
            raise PayloadError(f"unknown fast frame kind {kind}")
        if len(frame) < 5 or zlib.crc32(frame[:-4]) != _CRC.unpack(frame[-4:])[0]:
            raise PayloadError("fast frame is truncated or corrupted (checksum mismatch)")
        r = _reader_after_kind(frame[:-4])
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
            raise PayloadError("entropy-coded sections hold a partial word")
        words = np.frombuffer(words_b, dtype="<u2").astype(np.uint16, copy=False)
        raw = np.frombuffer(raw_b, dtype="<u4").astype(np.uint32, copy=False)
        err, starts, freqs = rans.read_meta(meta, n_ctx, n_ctx + 1 if n_ctx > 1 else 1)
        if err:
            raise PayloadError(f"fast frame: {rans.ERROR_TEXT[err]}")
        lut = rans.build_lut(freqs, rans.cumulative(freqs))
        omode = output_mode(dtype)
        out = np.empty(n, dtype=np.float64 if omode == rans.MODE_F64 else np.float32)
        # escapes common (tight bounds): every block takes the general, branch-free path
        fast_ok = 2 * int(freqs[:n_ctx, rans.N_DIRECT :].sum()) < n_ctx * rans.PROB_SCALE
        err = rans.rans_decode(
            words, raw, lut, n_ctx, rans.context_map(starts), rows, cols, inner, 2.0 * abs_eb,
            omode, fast_ok, out,
        )  # fmt: skip
        if err:
            raise PayloadError(f"fast frame: {rans.ERROR_TEXT[err]}")
        if omode == rans.MODE_F16:
            out = out.astype(np.float16)  # exact: every value is already a float16
        if index.size:
            out[index] = values
        return out.reshape(shape)


def _reader_after_kind(frame: memoryview) -> FrameReader:
    r = FrameReader(frame)
    r.unpack("B")
    return r


def _contexts(h2, rlev, clev, max_ctx):
    """(n_ctx, cmap, starts, scale symbols, counts per table) when contexts pay, else None."""
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
