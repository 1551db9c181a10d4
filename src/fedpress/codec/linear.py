"""``linear``: the SZ3-style quantizer plus our entropy coder, with no predictor.

It is the baseline the gradient codec is measured against (same quantizer, same coder), and a
fast stateless codec for any large float tensor.
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
from .entropy import (
    AnsReader,
    AnsWriter,
    read_magnitudes,
    read_model,
    write_magnitudes,
    write_symbols,
)
from .errors import PayloadError
from .frame import (
    FrameReader,
    FrameWriter,
    read_verbatim,
    write_verbatim,
    zstd_compress,
    zstd_decompress,
)
from .quantizer import dequantize, quantize

KIND_EMPTY, KIND_EXACT, KIND_QUANTIZED = 0, 1, 2


def encode_exact_or_empty(x: np.ndarray, abs_eb: float) -> bytes | None:
    """Frames for the cases with no quantization: empty tensors and a zero bound (constant data)."""
    w = FrameWriter()
    if x.size == 0:
        w.pack("B", KIND_EMPTY)
        return w.getvalue()
    if not abs_eb > 0 or not np.isfinite(abs_eb) or abs_eb < np.finfo(np.float64).tiny:
        w.pack("B", KIND_EXACT)
        w.section(zstd_compress(np.ascontiguousarray(x).tobytes()))
        return w.getvalue()
    return None


def decode_exact(r: FrameReader, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    n = int(np.prod(shape))
    raw = zstd_decompress(r.section(), n * np.dtype(dtype).itemsize)
    r.done()
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def write_signs(w: AnsWriter, codes: np.ndarray) -> None:
    """One bit per non-zero code (1 = negative), with one fitted binary model."""
    nz = codes[codes != 0]
    write_symbols(w, (nz < 0).astype(np.int32), 2)


def read_signs(r: AnsReader, mags: np.ndarray) -> np.ndarray:
    """Apply the signs to ``mags`` in place (it becomes the codes; no copy of the tensor).

    One model, then the sign bits read chunk by chunk (ANS decoding continues across calls), so
    the position lists never cover the whole tensor at once.
    """
    if not np.count_nonzero(mags):
        return mags
    model, top = read_model(r)
    flat = mags.reshape(-1)
    for i in range(0, flat.size, _SIGN_CHUNK):
        chunk = flat[i : i + _SIGN_CHUNK]
        nz = np.flatnonzero(chunk)
        if not nz.size or model is None:
            continue  # no model: every sign is positive
        neg = r.read(nz.size, model)
        if neg.max() > top:
            raise PayloadError("decoded symbol outside its model's alphabet")
        chunk[nz[neg == 1]] *= -1
    return mags


_SIGN_CHUNK = 1 << 18


def check_abs_eb(abs_eb: float) -> float:
    if not (np.isfinite(abs_eb) and abs_eb > 0):
        raise PayloadError(f"frame carries an invalid error bound {abs_eb!r}")
    return abs_eb


@register_codec
class LinearCodec(BoundedCodec):
    """Linear quantization (bins of ``2*abs_eb``) + context-free ANS coding of the codes."""

    name = "linear"

    def __init__(self, mode: str = "rel", eb: float = 1e-2) -> None:
        super().__init__(mode, eb)

    def encode(self, x: np.ndarray, state: LayerState | None = None) -> bytes:
        x = native(x)
        check_dtype(x)
        check_finite(x)
        abs_eb = self.bound.absolute(x)
        special = encode_exact_or_empty(x, abs_eb)
        if special is not None:
            return special
        q = quantize(x, abs_eb)
        ans = AnsWriter()
        write_magnitudes(ans, np.abs(q.codes), None, 1)
        write_signs(ans, q.codes)
        w = FrameWriter()
        w.pack("Bd", KIND_QUANTIZED, abs_eb)
        w.checked_section(ans.finish())
        write_verbatim(w, q.verbatim_index, q.verbatim_value)
        return w.getvalue()

    def decode(
        self, frame: bytes, shape: tuple[int, ...], dtype: np.dtype, state: LayerState | None = None
    ) -> np.ndarray:
        dtype = native_dtype(dtype)
        r = FrameReader(frame)
        (kind,) = r.unpack("B")
        n = int(np.prod(shape))
        if kind == KIND_EMPTY:
            r.done()
            return np.zeros(shape, dtype=dtype)
        if kind == KIND_EXACT:
            return decode_exact(r, shape, dtype)
        if kind != KIND_QUANTIZED:
            raise PayloadError(f"unknown linear frame kind {kind}")
        (abs_eb,) = r.unpack("d")
        check_abs_eb(abs_eb)
        ans = AnsReader(r.checked_section())
        codes = read_signs(ans, read_magnitudes(ans, n, None, 1))
        ans.done()
        index, values = read_verbatim(r, n, dtype)
        r.done()
        return dequantize(codes, abs_eb, dtype, index, values).reshape(shape)

    def params(self) -> dict[str, Any]:
        return super().params()
