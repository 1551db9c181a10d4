"""Property: every codec that promises a pointwise bound keeps it, on any finite tensor.

The codec list comes from the registry, so a new pointwise codec is checked as soon as it
registers. The bound is recomputed here in float64 from ``ErrorBound``, not taken from the codec.
Tensors come in every byte order (``'>f4'`` included): the bound must hold for all of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress.codec.baselines  # noqa: F401  (registers the baselines before builtin.py does)
from fedpress.codec.base import available_codecs, get_codec
from fedpress.codec.bound import ErrorBound

POINTWISE = sorted(name for name, cls in available_codecs().items() if cls.pointwise_bound)
DTYPES = [np.float16, np.float32, np.float64]
BYTE_ORDERS = ["=", ">", "<"]  # native, big-endian, little-endian spelled out
EBS = [1e-1, 1e-2, 1e-3, 1e-5]

shapes = st.one_of(
    st.sampled_from([(0,), (1,), (), (3, 0), (1, 1, 1, 1)]),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
    st.tuples(st.integers(1, 16), st.integers(1, 16), st.just(3), st.just(3)),  # conv (O,I,3,3)
    st.tuples(st.integers(1, 3000)),
)


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(shapes)
    scale = 10.0 ** draw(st.integers(-30, 30))
    kind = draw(st.sampled_from(["elements", "gaussian", "constant", "dynamic", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "elements":  # hypothesis's own values, edge cases included
        unit = st.floats(-1, 1, allow_nan=False, allow_infinity=False, allow_subnormal=True)
        x = draw(hnp.arrays(np.float64, shape, elements=unit)) * scale
    elif kind == "gaussian":
        x = rng.standard_normal(shape) * scale + draw(st.sampled_from([0.0, 1.0, -3.0])) * scale
    elif kind == "constant":
        x = np.full(shape, draw(st.floats(-1, 1, allow_nan=False)) * scale)
    elif kind == "dynamic":  # magnitudes spread over up to 40 decades inside one tensor
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-20, 20, shape) * scale
    else:
        x = np.where(rng.random(shape) < 0.9, 0.0, rng.standard_normal(shape) * scale)
    top = float(np.finfo(dtype).max)
    out = np.clip(np.asarray(x, dtype=np.float64), -top, top).astype(dtype)
    return out.astype(dtype.newbyteorder(draw(st.sampled_from(BYTE_ORDERS))))


def roundtrip(name: str, mode: str, eb: float, x: np.ndarray) -> np.ndarray:
    codec = get_codec(name, mode=mode, eb=eb)
    enc_state, dec_state = ({}, {}) if codec.stateful else (None, None)
    frame = codec.encode(x, state=enc_state)
    return get_codec(name, mode=mode, eb=eb).decode(frame, x.shape, x.dtype, state=dec_state)


@pytest.mark.parametrize("name", POINTWISE)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors(), mode=st.sampled_from(["abs", "rel"]), eb=st.sampled_from(EBS))
def test_pointwise_bound_holds(name: str, x: np.ndarray, mode: str, eb: float) -> None:
    y = roundtrip(name, mode, eb, x)
    assert y.shape == x.shape and y.dtype == x.dtype.newbyteorder("=")  # decoders return native
    bound = ErrorBound(mode, eb).absolute(x)
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert err.max(initial=0.0) <= bound, f"max error {err.max()} > bound {bound}"


def test_baselines_are_covered() -> None:
    assert {"sz3", "sz3-nopred", "zfp"} <= set(POINTWISE)
