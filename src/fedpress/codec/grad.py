"""``grad``: the gradient-aware error-bounded codec (stateful, one state per layer name).

Pipeline per tensor and round: SZ3-style linear quantizer with a hard bound -> entropy coder
whose models are conditioned on contexts that use cross-round and kernel structure
(``contexts.py``). Optionally the paper's predictor (normalized-EMA magnitude x kernel or
oscillation sign, subtracted before quantization) runs in front of the quantizer; measurements
(``benchmarks/bench_grad_ablation.py``) show it does not pay on real FL updates, so it is off by
default, while the same information used as coding *context* does pay.

State (per stream and layer name): the previous reconstruction, the EMA memory, a round counter.
Encoder and decoder update it from the reconstruction only, through the same functions, so both
hold identical state; the stream layer fingerprints it and refuses mismatches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    BoundedCodec,
    LayerState,
    check_dtype,
    check_finite,
    native,
    native_dtype,
    register_codec,
)
from .contexts import (
    channel_scales,
    has_channel_scales,
    magnitude_contexts,
    read_kernel_signs,
    read_scales,
    write_kernel_signs,
    write_scales,
)
from .entropy import (
    ALPHABET,
    AnsReader,
    AnsWriter,
    estimated_bits,
    magnitude_classes,
    read_magnitudes,
    write_magnitudes,
)
from .errors import CodecError, PayloadError, StreamStateError
from .frame import FrameReader, FrameWriter, read_verbatim, write_verbatim
from .linear import (
    KIND_EMPTY,
    KIND_EXACT,
    KIND_QUANTIZED,
    check_abs_eb,
    decode_exact,
    encode_exact_or_empty,
    read_signs,
    write_signs,
)
from .predictor import SIGN_MODELS, PredictorSide, predict, read_side, update_memory, write_side
from .quantizer import dequantize, quantize

F_TEMPORAL, F_KSIGN, F_PREDICT, F_SCALES, F_SIGNBASIS = 1, 2, 4, 8, 16
_ALL_FLAGS = F_TEMPORAL | F_KSIGN | F_PREDICT | F_SCALES | F_SIGNBASIS
#: the flags that only change how codes are entropy-coded (never the codes themselves)
_CONTEXT_FLAGS = F_TEMPORAL | F_KSIGN | F_SCALES | F_SIGNBASIS


@register_codec
class GradCodec(BoundedCodec):
    """Gradient-aware EBLC: temporal and kernel-sign contexts, optional EMA predictor.

    With ``context_fallback`` (the default) each tensor is also coded without contexts and the
    smaller section is sent, so no tensor costs more than its context-free mode (ablations set it
    to False to measure one context alone)."""

    name = "grad"
    stateful = True

    def __init__(
        self,
        mode: str = "rel",
        eb: float = 1e-2,
        temporal_context: bool = True,
        scale_context: bool = True,
        kernel_sign_context: bool = True,
        sign_basis_context: bool = False,
        predictor: str = "none",
        ema_alpha: float = 0.07,
        kernel_tau: float = 0.5,
        context_fallback: bool = True,
    ) -> None:
        super().__init__(mode, eb)
        if predictor not in ("none", *SIGN_MODELS):
            raise CodecError(f"predictor must be 'none' or one of {SIGN_MODELS}, got {predictor!r}")
        if not 0 < ema_alpha <= 1 or not 0 <= kernel_tau <= 1:
            raise CodecError("ema_alpha must lie in (0, 1] and kernel_tau in [0, 1]")
        self.temporal_context = bool(temporal_context)
        self.scale_context = bool(scale_context)
        self.kernel_sign_context = bool(kernel_sign_context)
        self.sign_basis_context = bool(sign_basis_context)
        self.predictor = predictor
        self.ema_alpha = float(ema_alpha)
        self.kernel_tau = float(kernel_tau)
        self.context_fallback = bool(context_fallback)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "temporal_context": self.temporal_context,
            "scale_context": self.scale_context,
            "kernel_sign_context": self.kernel_sign_context,
            "sign_basis_context": self.sign_basis_context,
            "predictor": self.predictor,
            "ema_alpha": self.ema_alpha,
            "kernel_tau": self.kernel_tau,
            "context_fallback": self.context_fallback,
        }

    # ------------------------------------------------------------------ encode
    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        check_dtype(x)
        check_finite(x)
        state = {} if state is None else state
        shape = tuple(x.shape)
        abs_eb = self.bound.absolute(x)
        special = encode_exact_or_empty(x, abs_eb)
        if special is not None:
            _remember(state, np.ascontiguousarray(x).reshape(-1), shape, memory=None)
            return special
        prev = _previous(state, shape)
        flags = 0
        if self.temporal_context and prev is not None:
            flags |= F_TEMPORAL
        if self.kernel_sign_context:
            flags |= F_KSIGN
        if self.scale_context and has_channel_scales(shape):
            flags |= F_SCALES
        if self.kernel_sign_context and self.sign_basis_context and has_channel_scales(shape):
            flags |= F_SIGNBASIS
        side: PredictorSide | None = None
        pred = None
        if self.predictor != "none" and prev is not None:
            flags |= F_PREDICT
            side, pred = predict(
                x, prev, state.get("memory"), self.predictor, self.ema_alpha, self.kernel_tau
            )
        q = quantize(x, abs_eb, pred)
        flags, section = _code_section(q.codes, shape, abs_eb, prev, flags)
        if self.context_fallback and flags & _CONTEXT_FLAGS:
            # contexts are adaptive side information: on near-i.i.d. tensors (e.g. Adam-trained
            # LoRA factors) they can cost more than they save, so no tensor is ever coded worse
            # than the context-free mode of the same codes (the decoder reads the flags)
            plain_flags, plain = _code_section(q.codes, shape, abs_eb, prev, flags & ~_CONTEXT_FLAGS)
            if len(plain) < len(section):
                flags, section = plain_flags, plain
        w = FrameWriter()
        w.pack("BdB", KIND_QUANTIZED, abs_eb, flags)
        if side is not None:
            write_side(w, side)
        w.checked_section(section)
        write_verbatim(w, q.verbatim_index, q.verbatim_value)
        memory = side.memory if side is not None else state.get("memory")
        _remember(state, q.recon, shape, memory)
        return w.getvalue()

    # ------------------------------------------------------------------ decode
    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        state = {} if state is None else state
        dtype = native_dtype(dtype)
        shape = tuple(shape)
        r = FrameReader(frame)
        (kind,) = r.unpack("B")
        if kind == KIND_EMPTY:
            r.done()
            out = np.zeros(shape, dtype=dtype)
            _remember(state, out.reshape(-1), shape, memory=None)
            return out
        if kind == KIND_EXACT:
            out = decode_exact(r, shape, dtype)
            _remember(state, out.reshape(-1), shape, memory=None)
            return out
        if kind != KIND_QUANTIZED:
            raise PayloadError(f"unknown grad frame kind {kind}")
        abs_eb, flags = r.unpack("dB")
        check_abs_eb(abs_eb)
        if flags & ~_ALL_FLAGS:
            raise PayloadError(f"unknown grad frame flags {flags:#x}")
        n = int(np.prod(shape))
        prev = _previous(state, shape)
        if flags & (F_TEMPORAL | F_PREDICT) and prev is None:
            raise StreamStateError(
                "payload was encoded against a previous round this decoder does not hold"
            )
        pred = None
        memory = state.get("memory")
        if flags & F_PREDICT:
            side = read_side(r, shape)
            pred, memory = update_memory(side, prev, memory, shape, self.ema_alpha)
        ans = AnsReader(r.checked_section())
        if flags & (F_SCALES | F_SIGNBASIS) and not has_channel_scales(shape):
            raise PayloadError("channel contexts signalled for a tensor without channels")
        if flags & F_SIGNBASIS and not flags & F_KSIGN:
            raise PayloadError("sign basis signalled without kernel sign context")
        scales = read_scales(ans, shape) if flags & F_SCALES else None
        ctx, n_ctx = magnitude_contexts(
            shape, abs_eb, scales, prev if flags & F_TEMPORAL else None
        )
        mags = read_magnitudes(ans, n, ctx, n_ctx)
        if flags & F_KSIGN:
            codes = read_kernel_signs(ans, mags, shape, basis=bool(flags & F_SIGNBASIS))
        else:
            codes = read_signs(ans, mags)
        ans.done()
        index, values = read_verbatim(r, n, dtype)
        r.done()
        recon = dequantize(codes, abs_eb, np.dtype(dtype), index, values, pred)
        _remember(state, recon, shape, memory)
        return recon.reshape(shape)


def _choose_contexts(
    codes: np.ndarray, shape: tuple[int, ...], abs_eb: float, temporal: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """(scales or None, contexts, count): the channel scales only where the side information
    saves more bits than it costs.

    Wide layers at loose bounds (e.g. a 512 x 3136 dense layer at REL 1e-1, 0.06 bits/value)
    can spend more on one scale per row and column than the contexts save.
    """
    scales = channel_scales(codes, shape)
    sym = magnitude_classes(np.abs(codes))[0]
    with_ctx = magnitude_contexts(shape, abs_eb, scales, temporal)
    without = magnitude_contexts(shape, abs_eb, None, temporal)
    side = estimated_bits((scales - scales.min()).astype(np.int64), None, 1, 101)
    gain = estimated_bits(sym, *without, ALPHABET) - estimated_bits(sym, *with_ctx, ALPHABET)
    return (scales, *with_ctx) if gain > side else (None, *without)


def _previous(state: LayerState, shape: tuple[int, ...]) -> np.ndarray | None:
    """Last round's reconstruction when it exists for the same shape (else a keyframe)."""
    prev = state.get("prev")
    if prev is None or tuple(state.get("shape", ())) != shape:
        return None
    return prev


def _remember(state: LayerState, recon: np.ndarray, shape: tuple[int, ...], memory) -> None:
    state["prev"] = np.array(recon, copy=True).reshape(-1)  # the input dtype: no overflow
    state["shape"] = list(shape)
    state["round"] = int(state.get("round", 0)) + 1
    if memory is None:
        state.pop("memory", None)
    else:
        state["memory"] = memory


def _code_section(
    codes: np.ndarray, shape: tuple[int, ...], abs_eb: float, prev: np.ndarray | None, flags: int
) -> tuple[int, bytes]:
    """Entropy-code quantization codes with the contexts ``flags`` asks for; returns the flags
    actually used (channel scales are dropped where they do not pay) and the section bytes."""
    ans = AnsWriter()
    temporal = prev if flags & F_TEMPORAL else None
    if flags & F_SCALES:
        scales, ctx, n_ctx = _choose_contexts(codes, shape, abs_eb, temporal)
    else:
        scales, (ctx, n_ctx) = None, magnitude_contexts(shape, abs_eb, None, temporal)
    if scales is None:
        flags &= ~F_SCALES
    else:
        write_scales(ans, scales)
    write_magnitudes(ans, np.abs(codes), ctx, n_ctx)
    if flags & F_KSIGN:
        write_kernel_signs(ans, codes, shape, basis=bool(flags & F_SIGNBASIS))
    else:
        write_signs(ans, codes)
    return flags, ans.finish()
