"""Baseline codecs: round trips, promised bounds, refusals and malformed frames."""

from __future__ import annotations

import numpy as np
import pytest

import fedpress.codec.baselines  # noqa: F401  (registers the baselines before builtin.py does)
from fedpress.codec.base import get_codec
from fedpress.codec.bound import ErrorBound
from fedpress.codec.errors import CodecError, NonFiniteError, PayloadError

BOUNDED = ["sz3", "sz3-nopred", "zfp"]
UNBOUNDED = ["qsgd", "topk", "fp16"]
LOSSY = BOUNDED + UNBOUNDED
LOSSLESS = ["zstd", "raw"]
ALL = LOSSY + LOSSLESS
FLOATS = ["float16", "float32", "float64"]
SHAPES = [(0,), (3, 0, 2), (), (1,), (2,), (5,), (17, 3), (8, 4, 3, 3), (64, 64), (2, 3, 4, 5, 2)]


def roundtrip(codec, x: np.ndarray) -> np.ndarray:
    y = codec.decode(codec.encode(x), x.shape, x.dtype)
    assert y.shape == x.shape and y.dtype == x.dtype.newbyteorder("=")  # decoders return native
    return y


def max_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0.0))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roundtrip_shapes_and_dtypes(name: str, dtype: str, shape: tuple[int, ...]) -> None:
    codec = get_codec(name)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    y = roundtrip(codec, x)
    if not codec.lossy:
        np.testing.assert_array_equal(y, x)
    if codec.pointwise_bound:
        assert max_err(x, y) <= codec.bound.absolute(x)


@pytest.mark.parametrize("name", BOUNDED)
@pytest.mark.parametrize("mode", ["abs", "rel"])
@pytest.mark.parametrize("eb", [1e-1, 1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("dtype", FLOATS)
def test_bound_holds(name: str, mode: str, eb: float, dtype: str) -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((50, 40)) * 3 + np.linspace(-5, 5, 2000).reshape(50, 40)).astype(dtype)
    codec = get_codec(name, mode=mode, eb=eb)
    y = roundtrip(codec, x)
    assert max_err(x, y) <= ErrorBound(mode, eb).absolute(x)


@pytest.mark.parametrize("name", BOUNDED)
def test_lossy_frames_are_smaller_than_raw(name: str) -> None:
    x = (np.random.default_rng(3).standard_normal(100_000) * 1e-3).astype(np.float32)
    frame = get_codec(name, mode="rel", eb=1e-2).encode(x)
    assert len(frame) < x.nbytes / 3


@pytest.mark.parametrize("name", BOUNDED)
@pytest.mark.parametrize("dtype", FLOATS)
def test_constant_tensor_is_exact(name: str, dtype: str) -> None:
    x = np.full((10, 10), 0.3, dtype=dtype)
    np.testing.assert_array_equal(roundtrip(get_codec(name, mode="rel", eb=1e-2), x), x)


@pytest.mark.parametrize("name", BOUNDED)
def test_extreme_magnitudes(name: str) -> None:
    rng = np.random.default_rng(4)
    for scale in (1e-30, 1e30):
        x = (rng.standard_normal(1000) * scale).astype(np.float32)
        x[::7] = scale * 1e-6  # a huge dynamic range inside one tensor
        for mode, eb in (("abs", 1e-5), ("rel", 1e-5), ("abs", 1e-1)):
            y = roundtrip(get_codec(name, mode=mode, eb=eb), x)
            assert max_err(x, y) <= ErrorBound(mode, eb).absolute(x)


@pytest.mark.parametrize("name", ["sz3", "zfp"])
@pytest.mark.parametrize("dtype", ["float32", ">f8"])
def test_slight_library_violations_are_patched(name: str, dtype: str) -> None:
    """A library slip of only 1.5x the bound is caught too (a check widened to 2x would miss it)."""
    base = type(get_codec(name))
    eb = 1e-2

    class SlightLiar(base):  # type: ignore[misc, valid-type]
        def decompress(self, blob, n, dtype):  # type: ignore[override]
            out = super().decompress(blob, n, dtype).copy()
            out[::50] += 1.5 * eb
            return out

    x = np.random.default_rng(8).standard_normal(20_000).astype(dtype)
    liar = SlightLiar(mode="abs", eb=eb)
    frame = liar.encode(x)
    assert liar.last_patched >= 1
    assert max_err(x, liar.decode(frame, x.shape, x.dtype)) <= eb


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "float64", "float16"])
def test_library_violations_are_patched(dtype: str) -> None:
    """A reconstruction that breaks the bound is repaired from the verbatim list."""

    class Liar(fedpress.codec.baselines.Sz3Codec):
        def decompress(self, blob, n, dtype):  # type: ignore[override]
            out = super().decompress(blob, n, dtype).copy()
            out[::100] += 1.0  # far beyond the bound
            return out

    x = np.random.default_rng(5).standard_normal(10_000).astype(dtype)
    liar = Liar(mode="abs", eb=1e-2)
    frame = liar.encode(x)
    assert liar.last_patched == 100
    native = np.dtype(dtype).newbyteorder("=")
    y = fedpress.codec.baselines.Sz3Codec(mode="abs", eb=1e-2).decode(frame, x.shape, native)
    assert max_err(x, y) <= 1e-2  # the patched positions decode exactly
    assert max_err(x, liar.decode(frame, x.shape, native)) <= 1e-2


@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_lossy_refuse_non_finite(name: str, bad: float) -> None:
    x = np.ones(10, dtype=np.float32)
    x[3] = bad
    with pytest.raises(NonFiniteError):
        get_codec(name).encode(x)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_refuse_non_float(name: str) -> None:
    with pytest.raises(CodecError):
        get_codec(name).encode(np.arange(10))


@pytest.mark.parametrize("name", LOSSLESS)
@pytest.mark.parametrize(
    "x",
    [
        np.array([1.0, np.nan, np.inf, -np.inf, -0.0], dtype=np.float32),
        np.array([np.nan, 1e300], dtype=np.float64),
        np.array([np.nan, 65504], dtype=np.float16),
        np.arange(-50, 50, dtype=np.int64).reshape(10, 10),
        np.array([2**31 - 1, -(2**31)], dtype=np.int32),
        np.array([True, False, True]),
        np.arange(256, dtype=np.uint8),
        np.array(7, dtype=np.int16),
        np.zeros((0, 3), dtype=np.int64),
        np.arange(12, dtype=np.float32).reshape(3, 4).astype(">f4"),
    ],
    ids=lambda x: f"{x.dtype.str}{x.shape}",
)
def test_lossless_exact(name: str, x: np.ndarray) -> None:
    y = roundtrip(get_codec(name), x)
    native = x.astype(x.dtype.newbyteorder("="))
    assert y.tobytes() == native.tobytes()  # bitwise, NaN payloads and -0.0 included


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_refuse_non_numeric(name: str) -> None:
    with pytest.raises(CodecError):
        get_codec(name).encode(np.array(["a", "b"]))


def test_fp16_clips_and_casts() -> None:
    x = np.array([1e6, -1e6, 1.0, 1e-3, 0.0], dtype=np.float32)
    y = roundtrip(get_codec("fp16"), x)
    assert y[0] == 65504 and y[1] == -65504 and y[2] == 1.0
    assert abs(y[3] - 1e-3) <= 1e-3 * 2**-11


def test_topk_keeps_the_largest() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal(10_000).astype(np.float32)
    y = roundtrip(get_codec("topk", ratio=0.01), x)
    kept = np.flatnonzero(y)
    assert kept.size == 100
    np.testing.assert_array_equal(y[kept], x[kept])
    assert np.abs(x[kept]).min() >= np.sort(np.abs(x))[-100]


def test_topk_keeps_at_least_one() -> None:
    x = np.array([0.1, -3.0, 0.2], dtype=np.float64)
    np.testing.assert_array_equal(roundtrip(get_codec("topk"), x), [0.0, -3.0, 0.0])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_topk_refuses_bad_ratio(bad: float) -> None:
    with pytest.raises(CodecError):
        get_codec("topk", ratio=bad)


@pytest.mark.parametrize("levels", [1, 4, 255, 256, 65535])
def test_qsgd_levels_and_error(levels: int) -> None:
    x = np.random.default_rng(7).standard_normal(5000).astype(np.float32)
    y = roundtrip(get_codec("qsgd", levels=levels), x)
    norm = np.abs(x).max()
    assert max_err(x, y) <= norm / levels * (1 + 1e-6)
    assert np.all(np.sign(y)[y != 0] == np.sign(x)[y != 0])


@pytest.mark.parametrize("bad", [0, -1, 65536, 2.5])
def test_qsgd_refuses_bad_levels(bad: float) -> None:
    with pytest.raises(CodecError):
        get_codec("qsgd", levels=bad)


def test_qsgd_is_unbiased() -> None:
    x = np.random.default_rng(8).standard_normal(200).astype(np.float64)
    trials = 2000
    mean = np.zeros_like(x)
    for seed in range(trials):
        mean += roundtrip(get_codec("qsgd", levels=4, seed=seed), x)
    mean /= trials
    # per element the rounding has sd <= norm/levels/2; the mean of 2000 draws is ~45x tighter
    tol = 5 * np.abs(x).max() / 4 / 2 / np.sqrt(trials)
    assert np.abs(mean - x).max() < tol


def test_qsgd_seed_is_reproducible_and_advances() -> None:
    x = np.random.default_rng(9).standard_normal(1000).astype(np.float32)
    a, b = get_codec("qsgd", levels=2, seed=3), get_codec("qsgd", levels=2, seed=3)
    first = a.encode(x)
    assert first == b.encode(x)
    assert a.encode(x) != first  # a later round draws fresh rounding


# --- malformed frames --------------------------------------------------------------------------


def sample_frames(name: str) -> list[tuple[bytes, np.ndarray]]:
    rng = np.random.default_rng(10)
    codec = get_codec(name, mode="abs", eb=1e-3) if name in BOUNDED else get_codec(name)
    xs = [
        rng.standard_normal(3000).astype(np.float32),
        rng.standard_normal((16, 16)).astype(np.float64),
        np.full(50, 2.0, dtype=np.float16),
    ]
    return [(codec.encode(x), x) for x in xs]


def decode_or_payload_error(name: str, frame: bytes, x: np.ndarray) -> None:
    codec = get_codec(name, mode="abs", eb=1e-3) if name in BOUNDED else get_codec(name)
    try:
        y = codec.decode(frame, x.shape, x.dtype)
    except PayloadError:
        return
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("name", ALL)
def test_truncated_frames(name: str) -> None:
    for frame, x in sample_frames(name):
        cuts = sorted({0, 1, 2, 5, 9, len(frame) // 2, len(frame) - 1})
        for cut in (c for c in cuts if c < len(frame)):
            with pytest.raises(PayloadError):
                get_decoder(name).decode(frame[:cut], x.shape, x.dtype)


@pytest.mark.parametrize("name", ALL)
def test_trailing_garbage_and_wrong_shape(name: str) -> None:
    for frame, x in sample_frames(name):
        with pytest.raises(PayloadError):
            get_decoder(name).decode(frame + b"\x00junk", x.shape, x.dtype)
        if name != "topk":  # a sparse frame cannot tell n from a size with the same k
            with pytest.raises(PayloadError):
                get_decoder(name).decode(frame, (2 * x.size + 4,), x.dtype)


@pytest.mark.parametrize("name", ALL)
def test_garbage_frames(name: str) -> None:
    rng = np.random.default_rng(11)
    for size in (1, 8, 13, 100, 5000):
        for _ in range(5):
            garbage = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            decode_or_payload_error(name, garbage, np.zeros(1000, dtype=np.float32))


@pytest.mark.parametrize("name", ALL)
def test_bit_flipped_frames(name: str) -> None:
    rng = np.random.default_rng(12)
    for frame, x in sample_frames(name):
        for _ in range(60):
            flipped = bytearray(frame)
            for pos in rng.integers(0, len(frame), rng.integers(1, 4)):
                flipped[pos] ^= 1 << int(rng.integers(8))
            decode_or_payload_error(name, bytes(flipped), x)


def get_decoder(name: str):
    return get_codec(name, mode="abs", eb=1e-3) if name in BOUNDED else get_codec(name)


@pytest.mark.parametrize("name", BOUNDED)
def test_float16_near_range_limit_needs_no_patches(name: str) -> None:
    x = np.clip(np.random.default_rng(13).standard_normal(4000) * 1e5, -65504, 65504)
    x = x.astype(np.float16)
    codec = get_codec(name, mode="rel", eb=1e-2)
    y = roundtrip(codec, x)
    assert np.isfinite(y).all() and max_err(x, y) <= codec.bound.absolute(x)
    assert codec.last_patched == 0  # reconstructions are clipped, not rounded to inf


@pytest.mark.parametrize("name", BOUNDED)
def test_library_stream_is_crc_checked(name: str) -> None:
    """zfpy segfaults on some corrupt streams: the CRC must stop them before the library."""
    x = np.random.default_rng(14).standard_normal(3000).astype(np.float32)
    frame = get_decoder(name).encode(x)
    assert frame[0] == fedpress.codec.baselines.KIND_LOSSY
    start = 1 + 8 + 4 + 4  # kind, bound, crc, section length
    for pos in (start, start + 10, start + 100):
        corrupt = bytearray(frame)
        corrupt[pos] ^= 0x5A
        with pytest.raises(PayloadError, match="CRC32"):
            get_decoder(name).decode(bytes(corrupt), x.shape, x.dtype)
