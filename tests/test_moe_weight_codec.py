"""Weight codecs for experts: every bounded codec holds its bound, corruption is caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpress.codec.errors import CodecError, PayloadError
from fedpress.moe.fixedrate import FixedRateCodec, decode_cpu, decode_torch
from fedpress.moe.weight_codec import CodecSpec, decode_expert, encode_expert

BOUNDED = ["fixedrate", "fast", "grad", "linear", "sz3", "zfp"]


def expert_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "gate_up_proj": (rng.standard_normal((24, 40)) * 0.05).astype(np.float32),
        "down_proj": (rng.laplace(size=(40, 12)) * 0.02).astype(np.float32),
    }


@pytest.mark.parametrize("name", BOUNDED)
@pytest.mark.parametrize("mode,eb", [("rel", 1e-2), ("rel", 1e-4), ("abs", 3e-3)])
def test_bounded_codecs_hold_their_bound(name: str, mode: str, eb: float) -> None:
    spec = CodecSpec.parse(f"{name}:mode={mode},eb={eb}")
    assert spec.bounded
    tensors = expert_tensors()
    decoded, _ = decode_expert(encode_expert(tensors, spec))
    for key, x in tensors.items():
        x64 = x.astype(np.float64)
        bound = eb * (x64.max() - x64.min()) if mode == "rel" else eb  # independent of ErrorBound
        err = np.abs(decoded[key].numpy().astype(np.float64) - x64)
        assert err.max() <= bound * (1 + 1e-9), (key, err.max(), bound)


@pytest.mark.parametrize("name", ["raw", "zstd"])
def test_lossless_codecs_are_exact(name: str) -> None:
    tensors = expert_tensors(1)
    decoded, _ = decode_expert(encode_expert(tensors, CodecSpec.parse(name)))
    for key, x in tensors.items():
        assert np.array_equal(decoded[key].numpy(), x)


def test_fp16_is_within_half_precision() -> None:
    tensors = expert_tensors(2)
    decoded, _ = decode_expert(encode_expert(tensors, CodecSpec.parse("fp16")))
    for key, x in tensors.items():
        assert np.array_equal(decoded[key].numpy(), x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 16])
def test_fixedrate_unpacking_matches_a_plain_reference(bits: int, fused: bool) -> None:
    rng = np.random.default_rng(bits)
    x = rng.uniform(-1, 1, size=(37, 29)).astype(np.float32)  # not a multiple of the block
    codec = FixedRateCodec("rel", 0.9, block=64, bits=bits)
    frame = codec.encode(x)
    # reference: per-block min/step written out here, codes from a plain rounding
    nb = -(-x.size // 64)
    padded = np.concatenate([x.reshape(-1), np.full(nb * 64 - x.size, x.reshape(-1)[-1])])
    blocks = padded.reshape(nb, 64)
    lo = blocks.min(1)
    step = ((blocks.max(1).astype(np.float64) - lo) / (2**bits - 1)).astype(np.float32)
    # the bound is loose, so the encoder must pick float16 scales (frame kind 8): round them so
    lo, step = (v.astype(np.float16).astype(np.float32) for v in (lo, step))
    q = np.clip(np.rint((blocks - lo[:, None]) / step[:, None]), 0, 2**bits - 1)
    ref = (q.astype(np.float32) * step[:, None] + lo[:, None]).reshape(-1)[: x.size].reshape(x.shape)
    got = decode_torch(frame, x.shape, fused=fused).numpy()
    assert frame[0] == 8
    assert np.array_equal(got, ref)
    assert len(frame) == 14 + nb * 4 + nb * 64 * bits // 8


def test_float16_scales_rebuild_a_q4_1_grid_exactly_and_give_way_to_float32_for_tight_bounds() -> None:
    """GGUF Q4_1 stores per-32 block ``d`` and ``m`` as float16 and dequantises ``d * q + m``
    in float32: with fit=1 such weights come back bit for bit in 4 bits + 1 bit of scales. A
    bound float16 scales cannot hold falls back to float32 scales (frame kind 7)."""
    rng = np.random.default_rng(5)
    d = rng.uniform(1e-3, 1e-2, (64, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.1, 0.0, (64, 1)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (64, 32))
    q[:, 0], q[:, 1] = 0, 15  # Q4_1 puts the block's minimum at 0 and its maximum at 15
    x = (d * q.astype(np.float32) + m).astype(np.float32).reshape(32, 64)
    frame = FixedRateCodec("abs", 1e-6, fit=1).encode(x)
    assert frame[0] == 8 and frame[1] == 4
    assert same_bits(decode_cpu(frame, x.shape).numpy(), x)
    assert len(frame) == 14 + 64 * 4 + 64 * 32 * 4 // 8  # 5 bits per weight
    y = (rng.standard_normal((32, 64)) * 0.1 + 3.0).astype(np.float32)  # float16 lo: ulp 2**-9
    tight = FixedRateCodec("abs", 1e-4).encode(y)
    assert tight[0] == 7
    assert np.abs(decode_cpu(tight, y.shape).numpy() - y).max() <= 1e-4


def test_fixedrate_constant_and_tiny_tensors() -> None:
    for x in (np.full((3, 5), 0.25, np.float32), np.array([1.5], np.float32)):
        frame = FixedRateCodec("rel", 1e-3).encode(x)
        assert np.array_equal(decode_torch(frame, x.shape).numpy(), x)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def float32_twin(frame: bytes, n: int, block: int) -> bytes:
    """The same frame with its float16 scales (kind 8) written as float32 (kind 7)."""
    nb = -(-n // block)
    scales = np.frombuffer(frame, dtype="<f2", count=2 * nb, offset=14).astype("<f4")
    return bytes([7]) + frame[1:14] + scales.tobytes() + frame[14 + 4 * nb:]


def test_scales_beyond_float16_range_fall_back_to_float32() -> None:
    """A block of two values 1e6 apart on a 1-bit grid needs a step of 1e6: float16 makes it inf, and inf * 0
    is NaN, which a "> bound" test would let through. The frame must use float32 scales."""
    x = np.array([0.0, 1e6] * 16, dtype=np.float32)
    frame = FixedRateCodec("abs", 1.0, block=32, fit=1).encode(x)  # the grid: 1 bit
    assert frame[0] == 7
    assert np.array_equal(decode_cpu(frame, x.shape).numpy(), x)


def test_non_finite_scales_are_refused() -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    frame = bytearray(float32_twin(FixedRateCodec("rel", 0.01, block=32).encode(x), 64, 32))
    for bad in (np.nan, np.inf):
        forged = bytearray(frame)
        forged[14:18] = np.float32(bad).tobytes()  # the first block's lo
        with pytest.raises(PayloadError, match="non-finite"):
            decode_cpu(bytes(forged), x.shape)


@pytest.mark.parametrize("shape,block", [((41, 23), 8), ((41, 23), 64), ((41, 23), 256),
                                         ((97, 93), 24), ((97, 93), 4104)])
def test_fused_and_torch_decoders_equal_the_numpy_reference_bit_for_bit(shape: tuple[int, int],
                                                                         block: int) -> None:
    """943 or 9,021 elements: not a multiple of a block; the larger spans three of the fused
    decoder's chunks (4,096 codes), with blocks of 24 and 4,104 that straddle chunk edges."""
    rng = np.random.default_rng(block)
    x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    x[3, :5] = -0.0  # signed zeros must come out with the reference's sign
    ref_codec = FixedRateCodec()
    frames = [FixedRateCodec("rel", 0.9, block=block, bits=b).encode(x) for b in range(1, 17)]
    frames.append(FixedRateCodec("rel", 1e-3, block=block).encode(np.full_like(x, -0.75)))  # bits=0
    assert sorted({f[1] for f in frames}) == list(range(17))
    frames += [float32_twin(f, x.size, block) for f in frames if f[0] == 8]  # both scale kinds
    assert {f[0] for f in frames} == {7, 8}
    for frame in frames:
        ref = ref_codec.decode(frame, x.shape, np.float32)
        fused = decode_cpu(memoryview(frame), x.shape)
        assert fused.dtype == torch.float32 and tuple(fused.shape) == x.shape
        assert same_bits(fused.numpy(), ref), frame[1]
        assert same_bits(decode_torch(frame, x.shape, fused=False).numpy(), ref), frame[1]


@pytest.mark.parametrize("mode,eb", [("rel", 0.2), ("rel", 1e-2), ("rel", 1e-3), ("rel", 1e-4),
                                     ("abs", 1e-3), ("rel", 1e-5)])
def test_fused_decoder_holds_the_bound_on_every_element(mode: str, eb: float) -> None:
    x = np.random.default_rng(3).laplace(size=(300, 7)).astype(np.float32)
    frame = FixedRateCodec(mode, eb, block=32).encode(x)
    bound = eb * (float(x.max()) - float(x.min())) if mode == "rel" else eb
    err = np.abs(decode_cpu(frame, x.shape).numpy().astype(np.float64) - x.astype(np.float64))
    assert err.max() <= bound, (frame[1], err.max(), bound)


def test_fused_decoder_refuses_truncated_or_malformed_frames() -> None:
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    frame = FixedRateCodec("rel", 1e-3, block=16).encode(x)
    for bad in (frame[:-1], frame + b"\0", frame[:10], frame[:14]):
        with pytest.raises(PayloadError):
            decode_cpu(bad, x.shape)
    with pytest.raises(PayloadError, match="elements"):
        decode_cpu(frame, (99,))
    wide = bytearray(frame)
    wide[1] = 17  # more bits than the format allows
    with pytest.raises(PayloadError):
        decode_cpu(bytes(wide), x.shape)
    with pytest.raises(ValueError, match="CPU"):
        decode_torch(frame, x.shape, "meta", fused=True)


def test_store_views_decode_like_bytes_and_stay_checked() -> None:
    """A payload read in place (memoryview of a larger buffer, as the store hands out) decodes
    exactly like a standalone copy, for raw and fixedrate, and a flipped bit in it is refused."""
    tensors = expert_tensors(4)
    for spec in ("raw", "fixedrate:eb=0.001,fit=1"):
        payload = encode_expert(tensors, CodecSpec.parse(spec))
        blob = b"xyz" + payload + b"tail"
        view = memoryview(blob)[3 : 3 + len(payload)]
        a, _ = decode_expert(view)
        b, _ = decode_expert(bytes(payload))
        for key in tensors:
            assert same_bits(a[key].numpy(), b[key].numpy())
            a[key].add_(1.0)  # decoded tensors own writable memory, not the store's
        bad = bytearray(blob)
        bad[3 + len(payload) - 2] ^= 0x01
        with pytest.raises(PayloadError, match="checksum"):
            decode_expert(memoryview(bytes(bad))[3 : 3 + len(payload)])


def test_flipped_byte_in_a_stored_expert_is_detected() -> None:
    payload = bytearray(encode_expert(expert_tensors(), CodecSpec.parse("fixedrate:eb=0.01")))
    for pos in (len(payload) - 5, len(payload) // 2, 20):
        bad = bytearray(payload)
        bad[pos] ^= 0x10
        with pytest.raises(PayloadError):
            decode_expert(bytes(bad))


def test_bad_codec_specs_get_one_clear_error() -> None:
    with pytest.raises(CodecError, match="unknown codec 'nope'"):
        CodecSpec.parse("nope:eb=0.1")
    with pytest.raises(CodecError, match="takes no parameter"):
        CodecSpec.parse("raw:eb=0.1")
    with pytest.raises(CodecError, match="cannot hold the bound"):
        FixedRateCodec("abs", 1e-6, bits=2).encode(np.linspace(-1, 1, 64, dtype=np.float32))
    with pytest.raises(CodecError, match="cannot hold"):
        FixedRateCodec("abs", 1e-9).encode(np.linspace(-1, 1, 64, dtype=np.float32))


def test_decode_runs_on_the_requested_device() -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    decoded, timing = decode_expert(encode_expert(expert_tensors(), CodecSpec.parse("fixedrate")), dev)
    assert all(t.device.type == dev for t in decoded.values())
    assert timing.device_bytes > 0


def grid_weights(seed: int = 0) -> np.ndarray:
    """Weights as a Q4_1 checkpoint dequantises them: 16 levels ``m + d*q`` per 32 values,
    the block's minimum and maximum among them (as Q4_1's ``d = (max-min)/15`` makes them)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.01, 0.2, size=(48, 1)).astype(np.float32)
    m = rng.normal(0, 1, size=(48, 1)).astype(np.float32)
    q = rng.integers(0, 16, size=(48, 32))
    q[:, 0], q[:, 1] = 0, 15
    return (m + d * q.astype(np.float32)).astype(np.float32).reshape(24, 64)


def test_fixedrate_fit_finds_a_per_block_grid_and_holds_the_bound() -> None:
    x = grid_weights()
    tight = FixedRateCodec("rel", 1e-5)          # the width formula needs many bits
    fit = FixedRateCodec("rel", 1e-5, fit=1)     # finds the 4-bit grid on blocks of 32
    plain, fitted = tight.encode(x), fit.encode(x)
    assert plain[1] > 8 and fitted[1] == 4 and int.from_bytes(fitted[2:6], "little") == 32
    assert len(fitted) == 14 + (x.size // 32) * (8 + 32 * 4 // 8) < len(plain) / 2
    bound = 1e-5 * (float(x.max()) - float(x.min()))
    for frame in (plain, fitted):
        assert np.abs(decode_torch(frame, x.shape).numpy().astype(np.float64) - x).max() <= bound
    # off the grid, fit falls back to the width formula (and still holds the bound)
    y = x + np.random.default_rng(1).normal(0, 1e-3, x.shape).astype(np.float32)
    f2 = fit.encode(y)
    assert f2[1] > 4
    assert np.abs(decode_torch(f2, y.shape).numpy() - y).max() <= 1e-5 * (float(y.max()) - float(y.min()))
    with pytest.raises(CodecError):
        FixedRateCodec("rel", 1e-3, bits=4, fit=1)
    assert CodecSpec.parse("fixedrate:eb=0.001,fit=1").codec().fit == 1


def test_fused_kernels_close_over_plain_ints_only() -> None:
    """numba keys its disk cache on a closure's values: a kernel that closes over anything but
    plain ints (another jitted function, an array) misses the cache in every new process and
    recompiles for seconds on the first expert load."""
    from fedpress.moe.fixedrate_cpu import kernel

    for kl, kh in [(0, 0), (3, 0), (4, 0), (8, 0), (8, 1), (8, 5), (8, 8)]:
        cells = kernel(kl, kh).py_func.__closure__ or ()
        assert all(type(c.cell_contents) is int for c in cells), (kl, kh)
