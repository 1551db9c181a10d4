"""The stateful gradient codec ``grad``: multi-round round trips, bounds, state and refusals."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from fedpress.codec import get_codec
from fedpress.codec.bound import ErrorBound
from fedpress.codec.errors import CodecError, NonFiniteError, PayloadError, StreamStateError
from fedpress.codec.grad import F_KSIGN, F_PREDICT, F_SCALES, F_SIGNBASIS, F_TEMPORAL
from fedpress.codec.linear import KIND_EXACT, KIND_QUANTIZED

SHAPES = [(16, 8, 3, 3), (32, 16, 1, 1), (64, 100), (5000,), (4, 4, 3, 3, 3)]
ROUNDS = 4


def gradient_rounds(
    shape: tuple[int, ...], rounds: int = ROUNDS, seed: int = 0, scale: float = 1e-2
) -> list[np.ndarray]:
    """Correlated synthetic gradients: rank-one channel scales x (AR(1) laplace noise),
    with a kernel-level sign bias, so every context of the codec has something to find."""
    rng = np.random.default_rng(seed)
    if len(shape) >= 2:
        r = np.exp(rng.normal(0.0, 0.7, shape[0]))
        c = np.exp(rng.normal(0.0, 0.7, shape[1]))
        s = (r[:, None] * c[None, :]).reshape(shape[:2] + (1,) * (len(shape) - 2))
        kernel_sign = rng.choice([-1.0, 1.0], size=shape[:2] + (1,) * (len(shape) - 2))
    else:
        s, kernel_sign = np.ones(shape), 1.0
    g = rng.laplace(size=shape)
    out = []
    for _ in range(rounds):
        g = 0.8 * g + 0.6 * rng.laplace(size=shape)
        out.append((scale * s * (g + 0.5 * kernel_sign)).astype(np.float32))
    return out


def flags_of(frame: bytes) -> int | None:
    """The grad flags byte of a quantized frame (kind u8, abs_eb f64, flags u8)."""
    return frame[9] if frame[0] == KIND_QUANTIZED else None


def assert_states_equal(enc: dict, dec: dict) -> None:
    assert set(enc) == set(dec)
    assert enc["prev"].dtype == dec["prev"].dtype
    assert enc["prev"].tobytes() == dec["prev"].tobytes()
    assert list(enc["shape"]) == list(dec["shape"])
    assert enc["round"] == dec["round"]
    if "memory" in enc:
        assert enc["memory"].tobytes() == dec["memory"].tobytes()


def run_rounds(codec, xs: list[np.ndarray], mode: str, eb: float) -> list[bytes]:
    """Encode/decode every round with separate states; check bound, dtype and state equality."""
    enc_state: dict = {}
    dec_state: dict = {}
    frames = []
    for x in xs:
        frame = codec.encode(x, enc_state)
        y = codec.decode(frame, x.shape, x.dtype, dec_state)
        assert y.shape == x.shape and y.dtype == x.dtype
        bound = ErrorBound(mode, eb).absolute(x)
        err = np.abs(y.astype(np.float64) - x.astype(np.float64))
        assert err.max(initial=0.0) <= bound, (err.max(), bound)
        assert_states_equal(enc_state, dec_state)
        # the state holds exactly what the decoder returned
        assert dec_state["prev"].tobytes() == np.ascontiguousarray(y).reshape(-1).tobytes()
        frames.append(frame)
    return frames


# ---------------------------------------------------------------- round trips
# Tests of the context machinery turn the per-tensor fallback off (context_fallback=False):
# on synthetic i.i.d. rounds the context-free coding is often smaller and would be chosen.


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["rel", "abs"])
@pytest.mark.parametrize("eb", [1e-1, 1e-2, 1e-3, 1e-4])
def test_rounds_roundtrip_with_bound(shape: tuple[int, ...], mode: str, eb: float) -> None:
    xs = gradient_rounds(shape, scale=1.0 if mode == "abs" else 1e-2)
    codec = get_codec("grad", context_fallback=False, mode=mode, eb=eb)
    frames = run_rounds(codec, xs, mode, eb)
    # the temporal context is used from the second round on (same shape)
    quantized = [f for f in frames if f[0] == KIND_QUANTIZED]
    assert quantized, "no frame went through the quantizer"
    assert not flags_of(frames[0]) & F_TEMPORAL
    for f in frames[1:]:
        assert flags_of(f) & F_TEMPORAL
        assert flags_of(f) & F_KSIGN
        # channel scales are sent only where they pay for themselves, never without channels
        assert not (flags_of(f) & F_SCALES) or len(shape) >= 2


@pytest.mark.parametrize("predictor", ["kernel", "oscillation", "auto"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode,eb", [("rel", 1e-2), ("rel", 1e-4), ("abs", 1e-3)])
def test_predictor_variants_roundtrip(predictor: str, shape, mode: str, eb: float) -> None:
    xs = gradient_rounds(shape, seed=1, scale=1.0)
    codec = get_codec("grad", context_fallback=False, mode=mode, eb=eb, predictor=predictor)
    frames = run_rounds(codec, xs, mode, eb)
    assert not flags_of(frames[0]) & F_PREDICT
    for f in frames[1:]:
        assert flags_of(f) & F_PREDICT


@pytest.mark.parametrize(
    "temporal,scale,ksign,basis", list(itertools.product([False, True], repeat=4))
)
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (64, 100), (5000,)], ids=str)
def test_ablation_flags_roundtrip(
    temporal: bool, scale: bool, ksign: bool, basis: bool, shape
) -> None:
    codec = get_codec(
        "grad",
        mode="rel",
        eb=1e-3,
        temporal_context=temporal,
        scale_context=scale,
        kernel_sign_context=ksign,
        sign_basis_context=basis,
        context_fallback=False,
    )
    frames = run_rounds(codec, gradient_rounds(shape, rounds=3, seed=2), "rel", 1e-3)
    channels = len(shape) >= 2
    for i, f in enumerate(frames):
        flags = flags_of(f)
        assert bool(flags & F_TEMPORAL) == (temporal and i > 0)
        assert not (flags & F_SCALES) or (scale and channels)
        assert bool(flags & F_KSIGN) == ksign
        assert bool(flags & F_SIGNBASIS) == (ksign and basis and channels)


def test_channel_scales_are_sent_where_channel_scales_differ() -> None:
    rng = np.random.default_rng(7)
    scale = np.exp(2 * rng.normal(size=(32, 1, 1, 1))) * np.exp(2 * rng.normal(size=(1, 16, 1, 1)))
    x = (rng.laplace(size=(32, 16, 3, 3)) * scale).astype(np.float32)
    frame = get_codec("grad", context_fallback=False, mode="rel", eb=1e-3).encode(x, {})
    assert flags_of(frame) & F_SCALES
    flat = rng.laplace(size=(32, 16, 3, 3)).astype(np.float32)  # no channel structure
    assert not flags_of(get_codec("grad", context_fallback=False, mode="rel", eb=1e-3).encode(flat, {})) & F_SCALES


def test_params_rebuild_the_codec() -> None:
    codec = get_codec("grad", context_fallback=False, mode="abs", eb=1e-3, predictor="auto", temporal_context=False)
    again = get_codec("grad", **codec.params())
    assert again.params() == codec.params()
    x = gradient_rounds((16, 8, 3, 3), rounds=1)[0]
    assert codec.encode(x, {}) == again.encode(x, {})


def test_encoding_is_deterministic() -> None:
    xs = gradient_rounds((32, 16, 1, 1), rounds=3)
    a, b = get_codec("grad", context_fallback=False), get_codec("grad", context_fallback=False)
    sa, sb = {}, {}
    for x in xs:
        assert a.encode(x, sa) == b.encode(x, sb)


# ---------------------------------------------------------------- state


def test_temporal_frame_with_empty_state_is_refused() -> None:
    xs = gradient_rounds((16, 8, 3, 3), rounds=2)
    codec = get_codec("grad", context_fallback=False)
    enc_state: dict = {}
    codec.encode(xs[0], enc_state)
    frame = codec.encode(xs[1], enc_state)
    assert flags_of(frame) & F_TEMPORAL
    with pytest.raises(StreamStateError):
        codec.decode(frame, xs[1].shape, xs[1].dtype, {})
    with pytest.raises(StreamStateError):
        codec.decode(frame, xs[1].shape, xs[1].dtype, None)


def test_predictor_frame_with_empty_state_is_refused() -> None:
    xs = gradient_rounds((16, 8, 3, 3), rounds=2)
    codec = get_codec("grad", context_fallback=False, predictor="kernel", temporal_context=False)
    enc_state: dict = {}
    codec.encode(xs[0], enc_state)
    frame = codec.encode(xs[1], enc_state)
    assert flags_of(frame) & F_PREDICT and not flags_of(frame) & F_TEMPORAL
    with pytest.raises(StreamStateError):
        codec.decode(frame, xs[1].shape, xs[1].dtype, {})


def test_state_of_another_shape_is_not_used() -> None:
    """A decoder state for another shape is no previous round: temporal frames are refused."""
    codec = get_codec("grad", context_fallback=False)
    a = gradient_rounds((16, 8, 3, 3), rounds=2)
    enc: dict = {}
    codec.encode(a[0], enc)
    frame = codec.encode(a[1], enc)
    dec: dict = {}
    codec.decode(
        get_codec("grad", context_fallback=False).encode(a[0].reshape(8, 16, 3, 3), {}),
        (8, 16, 3, 3),
        np.dtype(np.float32),
        dec,
    )
    with pytest.raises(StreamStateError):
        codec.decode(frame, a[1].shape, a[1].dtype, dec)


def test_first_frame_is_a_keyframe_decodable_anywhere() -> None:
    x = gradient_rounds((16, 8, 3, 3), rounds=1)[0]
    codec = get_codec("grad", context_fallback=False)
    frame = codec.encode(x, {})
    stale = {"prev": np.ones(16 * 8 * 9, dtype=np.float32), "shape": [16, 8, 3, 3], "round": 7}
    y1 = codec.decode(frame, x.shape, x.dtype, {})
    y2 = codec.decode(frame, x.shape, x.dtype, stale)
    np.testing.assert_array_equal(y1, y2)
    assert stale["round"] == 8 and stale["prev"].tobytes() == y1.tobytes()


def test_shape_change_gives_a_keyframe() -> None:
    codec = get_codec("grad", context_fallback=False, mode="rel", eb=1e-3)
    first = gradient_rounds((16, 8, 3, 3), rounds=2)
    other = gradient_rounds((8, 16, 3, 3), rounds=2, seed=9)
    enc: dict = {}
    dec: dict = {}
    frames = []
    for x in [first[0], first[1], other[0], other[1]]:
        f = codec.encode(x, enc)
        y = codec.decode(f, x.shape, x.dtype, dec)
        assert np.abs(y.astype(np.float64) - x).max() <= ErrorBound("rel", 1e-3).absolute(x)
        assert_states_equal(enc, dec)
        assert list(enc["shape"]) == list(x.shape)
        frames.append(f)
    assert [bool(flags_of(f) & F_TEMPORAL) for f in frames] == [False, True, False, True]
    # the keyframe after the shape change decodes without any state
    y = codec.decode(frames[2], other[0].shape, other[0].dtype, {})
    assert np.abs(y.astype(np.float64) - other[0]).max() <= ErrorBound("rel", 1e-3).absolute(
        other[0]
    )
    # same element count, other shape: still a keyframe
    enc2: dict = {}
    codec.encode(first[0], enc2)
    f = codec.encode(first[1].reshape(64, 18), enc2)
    assert not flags_of(f) & F_TEMPORAL


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_and_state_kept(bad: float) -> None:
    xs = gradient_rounds((16, 8, 3, 3), rounds=2)
    codec = get_codec("grad", context_fallback=False, predictor="auto")
    state: dict = {}
    codec.encode(xs[0], state)
    before = copy.deepcopy(state)
    x = xs[1].copy()
    x[3, 2, 1, 0] = bad
    with pytest.raises(NonFiniteError):
        codec.encode(x, state)
    assert_states_equal(before, state)


def test_constant_tensor_is_exact() -> None:
    codec = get_codec("grad", context_fallback=False, mode="rel", eb=1e-2)
    enc: dict = {}
    dec: dict = {}
    xs = gradient_rounds((16, 8, 3, 3), rounds=3)
    sequence = [
        np.full((16, 8, 3, 3), 0.3125, dtype=np.float32),
        xs[0],
        np.full((16, 8, 3, 3), -7.1, dtype=np.float32),
        xs[1],
        xs[2],
    ]
    for x in sequence:
        f = codec.encode(x, enc)
        y = codec.decode(f, x.shape, x.dtype, dec)
        if np.all(x == x.flat[0]):
            assert f[0] == KIND_EXACT
            np.testing.assert_array_equal(y, x)
        else:
            assert np.abs(y.astype(np.float64) - x).max() <= ErrorBound("rel", 1e-2).absolute(x)
        assert_states_equal(enc, dec)


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (), (1,), (1, 1, 3, 3)], ids=str)
def test_tiny_and_empty_tensors(shape) -> None:
    codec = get_codec("grad", context_fallback=False, mode="rel", eb=1e-2)
    enc: dict = {}
    dec: dict = {}
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        y = codec.decode(codec.encode(x, enc), shape, x.dtype, dec)
        assert y.shape == x.shape and y.dtype == x.dtype
        if x.size:
            assert np.abs(y.astype(np.float64) - x).max() <= ErrorBound("rel", 1e-2).absolute(x)
        assert_states_equal(enc, dec)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("mode,eb", [("rel", 1e-2), ("rel", 1e-3), ("abs", 1e-4)])
@pytest.mark.parametrize("predictor", ["none", "auto"])
def test_float16_and_float64(dtype: str, mode: str, eb: float, predictor: str) -> None:
    xs = [x.astype(dtype) for x in gradient_rounds((16, 8, 3, 3), rounds=3, scale=1.0)]
    codec = get_codec("grad", context_fallback=False, mode=mode, eb=eb, predictor=predictor)
    run_rounds(codec, xs, mode, eb)


def test_unsupported_dtype_and_bad_params_are_refused() -> None:
    codec = get_codec("grad", context_fallback=False)
    with pytest.raises(CodecError):
        codec.encode(np.arange(2000, dtype=np.int64).reshape(20, 100), {})
    for bad in [
        {"predictor": "magic"},
        {"ema_alpha": 0.0},
        {"ema_alpha": 1.5},
        {"kernel_tau": -0.1},
        {"mode": "pct"},
        {"eb": 0.0},
        {"eb": 1.0},
        {"eb": float("nan")},
        {"unknown": 1},
    ]:
        with pytest.raises(CodecError):
            get_codec("grad", **bad)


# ---------------------------------------------------------------- malformed frames


@pytest.mark.parametrize(
    "params",
    [{}, {"predictor": "kernel"}, {"sign_basis_context": True}],
    ids=["default", "kernel", "basis"],
)
def test_truncated_and_overlong_frames_are_refused(params) -> None:
    codec = get_codec("grad", context_fallback=False, mode="rel", eb=1e-2, **params)
    xs = gradient_rounds((8, 4, 3, 3), rounds=2)
    enc: dict = {}
    codec.encode(xs[0], enc)
    dec: dict = {}
    codec.decode(get_codec("grad", context_fallback=False, **params).encode(xs[0], {}), xs[0].shape, xs[0].dtype, dec)
    frame = codec.encode(xs[1], enc)
    for cand in [frame[:k] for k in range(len(frame))] + [frame + b"\x00", frame + b"\x00" * 4]:
        state = copy.deepcopy(dec)
        with pytest.raises(PayloadError):
            codec.decode(cand, xs[1].shape, xs[1].dtype, state)
    codec.decode(frame, xs[1].shape, xs[1].dtype, dec)  # the intact frame still decodes


def test_unknown_kind_and_flags_are_refused() -> None:
    codec = get_codec("grad", context_fallback=False, mode="rel", eb=1e-3)
    rng = np.random.default_rng(7)
    scale = np.exp(2 * rng.normal(size=(32, 1, 1, 1))) * np.exp(2 * rng.normal(size=(1, 16, 1, 1)))
    x = (rng.laplace(size=(32, 16, 3, 3)) * scale).astype(np.float32)  # channel scales pay
    frame = codec.encode(x, {})
    assert flags_of(frame) & F_SCALES
    with pytest.raises(PayloadError):
        codec.decode(bytes([7]) + frame[1:], x.shape, x.dtype, {})
    with pytest.raises(PayloadError):
        codec.decode(frame[:9] + bytes([frame[9] | 0x80]) + frame[10:], x.shape, x.dtype, {})
    # channel contexts signalled for a 1-D tensor
    with pytest.raises(PayloadError):
        codec.decode(frame, (x.size,), x.dtype, {})


# ---------------------------------------------------------------- compression


def rank_one_gradients(shape: tuple[int, ...], rounds: int, seed: int) -> list[np.ndarray]:
    """|g[o, i, ...]| ~ r_o * c_i * laplace noise, noise correlated across rounds."""
    rng = np.random.default_rng(seed)
    r = np.exp(rng.normal(0.0, 1.0, shape[0]))
    c = np.exp(rng.normal(0.0, 1.0, shape[1]))
    s = (r[:, None] * c[None, :]).reshape(shape[:2] + (1,) * (len(shape) - 2))
    base = rng.laplace(size=shape)
    return [
        (1e-3 * s * (0.7 * base + 0.3 * rng.laplace(size=shape))).astype(np.float32)
        for _ in range(rounds)
    ]


@pytest.mark.parametrize("shape", [(64, 32, 3, 3), (256, 128)], ids=str)
@pytest.mark.parametrize("eb", [1e-2, 1e-3])
def test_grad_beats_linear_on_rank_one_scaled_gradients(shape, eb: float) -> None:
    xs = rank_one_gradients(shape, rounds=3, seed=4)
    grad = get_codec("grad", context_fallback=False, mode="rel", eb=eb)
    linear = get_codec("linear", mode="rel", eb=eb)
    state: dict = {}
    for x in xs:
        g, lin = len(grad.encode(x, state)), len(linear.encode(x))
        assert g < lin, (g, lin)


@pytest.mark.parametrize("shape", [(8, 768), (64, 96), (16, 16, 3, 3)], ids=str)
def test_never_worse_than_its_context_free_mode_on_iid_updates(shape) -> None:
    """Adam-like updates are nearly uniform within +-steps*lr: there the adaptive contexts cost
    more than they save, and each tensor must fall back to context-free coding (the `linear`
    codec codes the same quantization codes with one model: an independent reference)."""
    rng = np.random.default_rng(0)
    grad, linear = get_codec("grad", mode="rel", eb=1e-2), get_codec("linear", mode="rel", eb=1e-2)
    state: dict = {}
    for _ in range(3):
        x = rng.uniform(-1e-3, 1e-3, size=shape).astype(np.float32)
        assert len(grad.encode(x, state)) <= len(linear.encode(x, {})) + 2


def test_contexts_still_used_where_they_pay() -> None:
    rng = np.random.default_rng(1)
    rows, cols = rng.lognormal(0, 1.5, 64), rng.lognormal(0, 1.5, 96)
    grad, linear = get_codec("grad", mode="rel", eb=1e-3), get_codec("linear", mode="rel", eb=1e-3)
    x = (np.outer(rows, cols) * rng.laplace(size=(64, 96))).astype(np.float32)
    f = grad.encode(x, {})
    assert flags_of(f) & F_SCALES
    assert len(f) < 0.95 * len(linear.encode(x, {}))  # rank-one scales: the contexts pay
