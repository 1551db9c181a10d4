"""The ``fast`` codec: round trips, the pointwise bound, refusals and malformed frames."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import fedpress.codec.fast as fast  # registers "fast"
from fedpress.codec import rans
from fedpress.codec.base import available_codecs, get_codec
from fedpress.codec.bound import ErrorBound
from fedpress.codec.errors import CodecError, NonFiniteError, PayloadError

FLOATS = ["float16", "float32", "float64"]
SHAPES = [
    (0,), (3, 0, 2), (), (1,), (2,), (5,), (17, 3), (8, 4, 3, 3), (64, 64), (2, 3, 4, 5, 2),
    (1, 5000), (5000, 1), (96, 80), (32, 16, 3, 3), (9000,),
]  # fmt: skip


def roundtrip(codec, x: np.ndarray) -> np.ndarray:
    y = codec.decode(codec.encode(x), x.shape, x.dtype)
    assert y.shape == x.shape and y.dtype == x.dtype
    return y


def assert_bound(x: np.ndarray, y: np.ndarray, mode: str, eb: float) -> None:
    bound = ErrorBound(mode, eb).absolute(x)
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert np.all(err <= bound), f"max error {err.max()} > bound {bound}"


def gradient_like(shape, rng, dtype="float32") -> np.ndarray:
    """Laplace values with rank-one channel scales (|g[o, i]| ~ r_o c_i), as in FL updates."""
    x = rng.laplace(size=shape)
    if len(shape) >= 2:
        r = np.exp(rng.normal(size=shape[0]) * 1.5).reshape((-1,) + (1,) * (len(shape) - 1))
        c = np.exp(rng.normal(size=shape[1]) * 1.5).reshape((1, -1) + (1,) * (len(shape) - 2))
        x = x * r * c
    return x.astype(dtype)


def test_registered_and_stateless() -> None:
    assert available_codecs()["fast"] is fast.FastCodec
    codec = get_codec("fast", mode="abs", eb=0.5)
    assert codec.params() == {"mode": "abs", "eb": 0.5, "contexts": True}
    assert codec.pointwise_bound and codec.lossy and not codec.stateful
    with pytest.raises(CodecError):
        get_codec("fast", eb=-1.0)


def test_without_contexts_is_plain_linear_coding() -> None:
    rng = np.random.default_rng(3)
    scale = np.exp(rng.normal(size=(64, 1, 1, 1))) * np.exp(rng.normal(size=(1, 32, 1, 1)))
    x = (rng.laplace(size=(64, 32, 3, 3)) * scale).astype(np.float32)
    with_ctx = get_codec("fast", eb=1e-2)
    plain = get_codec("fast", eb=1e-2, contexts=False)
    bound = ErrorBound("rel", 1e-2).absolute(x)
    for codec in (with_ctx, plain):
        y = codec.decode(codec.encode(x), x.shape, x.dtype)
        assert np.abs(y.astype(np.float64) - x).max() <= bound
    assert len(with_ctx.encode(x)) < len(plain.encode(x))  # channel scales pay here


@pytest.mark.parametrize("mode,eb", [("rel", 1e-2), ("rel", 1e-4), ("abs", 0.05)])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roundtrip_bound(shape, dtype, mode, eb) -> None:
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype, mode, eb)).encode()))
    x = gradient_like(shape, rng, dtype)
    codec = get_codec("fast", mode=mode, eb=eb)
    assert_bound(x, roundtrip(codec, x), mode, eb)


def test_contexts_used_and_pay() -> None:
    """Channel-scale contexts switch on for a rank-one-scaled matrix and beat no contexts."""
    x = gradient_like((256, 192), np.random.default_rng(3))
    frame = fast.FastCodec().encode(x)
    assert frame[9] > 1  # n_ctx byte: kind u8, abs_eb f64, n_ctx u8
    flat = fast.FastCodec().encode(x.reshape(-1))  # 1-D: no channels, no contexts
    assert flat[9] == 1
    assert len(frame) < 0.95 * len(flat)


def test_iid_data_skips_contexts() -> None:
    x = np.random.default_rng(4).laplace(size=(128, 256)).astype(np.float32)
    assert fast.FastCodec().encode(x)[9] == 1


@pytest.mark.parametrize("dtype", FLOATS)
def test_constant_and_zero(dtype) -> None:
    for value in (0.0, 1.5, -3.0):
        x = np.full((40, 50), value, dtype=dtype)
        np.testing.assert_array_equal(roundtrip(fast.FastCodec("rel", 1e-2), x), x)  # exact
        assert_bound(x, roundtrip(fast.FastCodec("abs", 1e-3), x), "abs", 1e-3)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode,eb", [("rel", 1e-3), ("abs", 1e-6), ("rel", 0.5)])
def test_huge_dynamic_range_goes_verbatim(dtype, mode, eb) -> None:
    rng = np.random.default_rng(5)
    top = float(np.finfo(dtype).max)
    x = rng.standard_normal((64, 70)) * 10.0 ** rng.uniform(-20, 20, (64, 70))
    x[0, :3] = [top, -top, top / 3]
    x = np.clip(x, -top, top).astype(dtype)
    assert_bound(x, roundtrip(get_codec("fast", mode=mode, eb=eb), x), mode, eb)


def test_float16_near_overflow() -> None:
    x = np.array([65504.0, -65504.0, 65000.0, 1e-7, 0.0, 6e-5, -3.0], dtype=np.float16)
    for mode, eb in [("abs", 20.0), ("abs", 1e-3), ("rel", 1e-3), ("rel", 0.4)]:
        assert_bound(x, roundtrip(get_codec("fast", mode=mode, eb=eb), x), mode, eb)


def test_round_f16_matches_numpy() -> None:
    rng = np.random.default_rng(6)
    h = (rng.standard_normal(5000) * 10.0 ** rng.uniform(-7, 4, 5000)).astype(np.float16)
    halfway = h.astype(np.float64) + np.spacing(h).astype(np.float64) / 2
    v = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 5, 20000),
        halfway,  # exact ties between neighbouring float16 values
        np.arange(-70000.0, 70000.0, 7.25),
        [65519.0, 65520.0, 65519.999, 2.0**-25, 3 * 2.0**-26, 2.0**-14, 0.0, -0.0],
    ])  # fmt: skip
    ours = rans.round_f16_array(v)
    with np.errstate(over="ignore"):
        ref = v.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("mode", ["rel", "abs"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_non_finite_refused(mode, dtype) -> None:
    codec = fast.FastCodec(mode, 1e-2)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((50, 100), dtype=dtype)
        x[7, 3] = bad
        with pytest.raises(NonFiniteError):
            codec.encode(x)


def test_byte_order_and_strides() -> None:
    x = gradient_like((80, 70), np.random.default_rng(7), "float64")
    codec = fast.FastCodec("rel", 1e-3)
    for view in (x.astype(">f8"), x.T, x[::2, ::3]):
        y = codec.decode(codec.encode(view), view.shape, np.float64)
        assert_bound(view, y, "rel", 1e-3)
    assert codec.encode(x) == codec.encode(x.copy())  # deterministic


def test_ratio_against_sz3_nopred() -> None:
    import fedpress.codec.baselines  # noqa: F401

    x = gradient_like((256, 256), np.random.default_rng(8))
    ours = len(get_codec("fast").encode(x))
    theirs = len(get_codec("sz3-nopred").encode(x))
    assert ours < theirs


# ------------------------------------------------------------------ malformed frames
def _frames() -> dict[str, tuple[bytes, tuple[int, ...], np.dtype]]:
    rng = np.random.default_rng(9)
    out = {}
    ctx = gradient_like((64, 64), rng)
    out["contexts"] = (fast.FastCodec().encode(ctx), ctx.shape, ctx.dtype)
    small = gradient_like((300,), rng, "float64")
    small[5] = 1e30  # verbatim element
    out["escapes+verbatim"] = (fast.FastCodec("rel", 1e-4).encode(small), small.shape, small.dtype)
    half = gradient_like((20, 10), rng, "float16")
    out["f16"] = (fast.FastCodec("abs", 0.01).encode(half), half.shape, half.dtype)
    return out


FRAMES = _frames()


def _decode_or_payload_error(frame: bytes, shape, dtype) -> None:
    try:
        y = fast.FastCodec().decode(frame, shape, dtype)
    except PayloadError:
        return
    assert y.shape == tuple(shape) and y.dtype == dtype


@pytest.mark.parametrize("name", FRAMES)
def test_truncated_frames(name) -> None:
    frame, shape, dtype = FRAMES[name]
    assert fast.FastCodec().decode(frame, shape, dtype).shape == shape
    assert frame[9] > 1 or name != "contexts"
    for cut in range(len(frame)):
        with pytest.raises(PayloadError):
            fast.FastCodec().decode(frame[:cut], shape, dtype)
    with pytest.raises(PayloadError):
        fast.FastCodec().decode(frame + b"\0", shape, dtype)


def _flips(frame: bytes, limit: int, seed: int):
    nbits = 8 * len(frame)
    rng = np.random.default_rng(seed)
    return range(nbits) if nbits <= limit else rng.choice(nbits, limit, replace=False)


@pytest.mark.parametrize("name", FRAMES)
def test_bit_flips_caught_by_checksum(name) -> None:
    frame, shape, dtype = FRAMES[name]
    for b in _flips(frame, 3000, 10):
        bad = bytearray(frame)
        bad[b // 8] ^= 1 << (b % 8)
        with pytest.raises(PayloadError):
            fast.FastCodec().decode(bytes(bad), shape, dtype)


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("name", FRAMES)
def test_forged_frames_with_valid_checksum(name) -> None:
    """Damage behind a recomputed checksum reaches the compiled decoder: it must refuse or
    return a well-formed array, never crash, read out of bounds or loop."""
    frame, shape, dtype = FRAMES[name]
    body = frame[:-4]
    caught = total = 0
    for b in _flips(body, 4000, 11):
        if b < 8 * 10:  # kind, abs_eb and n_ctx are only covered by the checksum
            continue
        bad = bytearray(body)
        bad[b // 8] ^= 1 << (b % 8)
        total += 1
        try:
            y = fast.FastCodec().decode(_reseal(bytes(bad)), shape, dtype)
        except PayloadError:
            caught += 1
            continue
        assert y.shape == shape and y.dtype == dtype
    assert caught > 0.5 * total  # most damage is caught even so (not raw escape bits)
    for cut in range(10, len(body)):
        with pytest.raises(PayloadError):
            fast.FastCodec().decode(_reseal(body[:cut]), shape, dtype)


def test_random_garbage_and_wrong_shapes() -> None:
    rng = np.random.default_rng(11)
    frame, shape, dtype = FRAMES["contexts"]
    for _ in range(300):
        junk = bytes(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8))
        _decode_or_payload_error(junk, shape, dtype)
        _decode_or_payload_error(b"\x02" + junk, shape, dtype)
    for other in [(4096,), (32, 128), (128, 32), (64, 64, 1), (0,), (1,)]:
        _decode_or_payload_error(frame, other, dtype)
    with pytest.raises(PayloadError):
        fast.FastCodec().decode(frame, (4096,), dtype)  # contexts signalled without channels
