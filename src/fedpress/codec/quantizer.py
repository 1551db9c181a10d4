"""Linear quantization with SZ3 semantics and a hard pointwise bound.

Bins are ``2 * abs_eb`` wide and centred on the prediction, so ``|x - x_hat| <= abs_eb`` holds in
exact arithmetic. Floating-point rounding (and casting back to float16/float32) can push a few
elements past the bound, and huge values can overflow the code range: those elements are marked
*verbatim* and stored exactly, as SZ3 stores its unpredictable values. The bound is checked in
float64 against the reconstruction in the output dtype, so it holds on what the decoder returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: largest code magnitude; larger residuals are stored verbatim.
CODE_RADIUS = 2**30


@dataclass
class Quantized:
    """Result of quantizing one flat array."""

    codes: np.ndarray  # int32, 0 at verbatim positions
    verbatim_index: np.ndarray  # int64 flat positions stored exactly
    verbatim_value: np.ndarray  # original values there, in the input dtype
    recon: np.ndarray  # what the decoder will return, in the input dtype, flat


def quantize(x: np.ndarray, abs_eb: float, pred: np.ndarray | None = None) -> Quantized:
    """Quantize ``x - pred`` with bin width ``2*abs_eb``; ``abs_eb`` must be > 0."""
    flat = np.ascontiguousarray(x).reshape(-1)
    xf = flat.astype(np.float64)
    step = 2.0 * abs_eb
    resid = xf if pred is None else xf - pred.reshape(-1).astype(np.float64)
    q = np.rint(resid / step)
    np.clip(q, -CODE_RADIUS, CODE_RADIUS, out=q)
    codes = q.astype(np.int32)
    # the decoder's own function builds the reconstruction, so both sides agree bit for bit
    recon = _reconstruct(codes, step, flat.dtype, pred)
    err = np.abs(recon.astype(np.float64) - xf)
    bad = ~(err <= abs_eb)  # also true where x is NaN/Inf
    index = np.flatnonzero(bad)
    if index.size:
        codes[index] = 0
        recon[index] = flat[index]
    return Quantized(codes, index.astype(np.int64), flat[index].copy(), recon)


#: elements per chunk of the float64 reconstruction (bounds the decoder's working memory).
_CHUNK = 1 << 18


def _reconstruct(codes: np.ndarray, step: float, dtype: np.dtype, pred: np.ndarray | None) -> np.ndarray:
    """``(codes * step [+ pred])`` computed in float64 and rounded once to ``dtype``.

    Done in chunks, so the float64 intermediate never exists for the whole tensor; each element
    goes through the same two operations, so the result is the same bit for bit.
    """
    codes = codes.reshape(-1)
    flat_pred = None if pred is None else pred.reshape(-1)
    out = np.empty(codes.size, dtype=dtype)
    for i in range(0, codes.size, _CHUNK):
        r64 = codes[i : i + _CHUNK].astype(np.float64) * step
        if flat_pred is not None:
            r64 += flat_pred[i : i + _CHUNK]
        with np.errstate(over="ignore"):  # out-of-range values are caught as verbatim ones
            out[i : i + _CHUNK] = r64
    return out


def dequantize(
    codes: np.ndarray,
    abs_eb: float,
    dtype: np.dtype,
    verbatim_index: np.ndarray,
    verbatim_value: np.ndarray,
    pred: np.ndarray | None = None,
) -> np.ndarray:
    """Inverse of ``quantize``: the exact same arithmetic, so encoder and decoder agree bitwise."""
    recon = _reconstruct(codes, 2.0 * abs_eb, dtype, pred)
    if verbatim_index.size:
        recon[verbatim_index] = verbatim_value
    return recon
