"""Wire format, streams and routing: round trips, refusals of every corruption, stream state."""

from __future__ import annotations

import copy
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib

import msgpack
import numpy as np
import pytest
import torch

from fedpress.codec import get_codec, wire
from fedpress.codec.bound import ErrorBound
from fedpress.codec.errors import CodecError, NonFiniteError, PayloadError, StreamStateError
from fedpress.codec.frame import inflate_capped
from fedpress.codec.grad import F_TEMPORAL
from fedpress.codec.routing import Policy, Rule, tensor_role
from fedpress.codec.stream import DecoderHub, StreamDecoder, StreamEncoder, fingerprint
from fedpress.codec.wire import DTYPES, MAGIC, VERSION, Envelope, TensorEntry, unpack

PREFIX = struct.Struct("<4sHHII")
RESERVED_BYTES = (6, 7)


def rounds_of(seed: int = 0, n: int = 4) -> list[dict[str, np.ndarray]]:
    """A small model update per round: correlated conv weight, a fc weight, bias, int buffer."""
    rng = np.random.default_rng(seed)
    conv = rng.standard_normal((16, 8, 3, 3))
    fc = rng.standard_normal((40, 64))
    out = []
    for r in range(n):
        conv = 0.8 * conv + 0.5 * rng.standard_normal(conv.shape)
        fc = 0.8 * fc + 0.5 * rng.standard_normal(fc.shape)
        out.append(
            {
                "conv.weight": (1e-2 * conv).astype(np.float32),
                "fc.weight": (1e-3 * fc).astype(np.float32),
                "fc.bias": rng.standard_normal(40).astype(np.float32),
                "bn.num_batches_tracked": np.array(r, dtype=np.int64),
            }
        )
    return out


def small_payloads() -> tuple[list[bytes], list[dict[str, np.ndarray]]]:
    """Two payloads of a few hundred bytes: a keyframe and a payload against its state."""
    rng = np.random.default_rng(1)
    enc = StreamEncoder(Policy.uniform("grad", mode="rel", eb=1e-1), "c0/up")
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    ts = [
        {
            "conv.weight": w,
            "bias": rng.standard_normal(4).astype(np.float32),
            "steps": np.arange(2),
        },
        {
            "conv.weight": (w * 0.9).astype(np.float32),
            "bias": np.ones(4, np.float32),
            "steps": np.arange(2),
        },
    ]
    return [enc.encode(t) for t in ts], ts


def forge(header: dict, frames: list[bytes], version: int = VERSION, reserved: int = 0) -> bytes:
    """A payload with this header and valid checksums (what a malicious sender could build)."""
    h = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(MAGIC, version, reserved, len(h), zlib.crc32(h)) + h + b"".join(frames)


def repack(env: Envelope) -> bytes:
    return Envelope(env.tensors, env.frames, env.stream, env.meta).pack()


def max_err(x, y) -> float:
    return float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max(initial=0.0))


# ================================================================ envelope


def test_envelope_pack_unpack_roundtrip() -> None:
    rng = np.random.default_rng(0)
    names = ["a", "layer1.0.conv1.weight", "ünïcødé/名前", "", "x" * 300]
    shapes = [(), (0,), (3, 0, 2), (7,), (2, 3, 4, 5, 6)]
    tensors, frames = [], []
    for i, dtype in enumerate(DTYPES):
        name = names[i % len(names)] + f"#{i}"
        codec, params = ("grad", {"mode": "rel", "eb": 0.01}) if i % 2 else ("zstd", {})
        tensors.append(TensorEntry(name, dtype, shapes[i % len(shapes)], codec, params))
        frames.append(bytes(rng.integers(0, 256, size=int(rng.integers(0, 50)), dtype=np.uint8)))
    stream = {"id": "client7/up", "seq": 12, "fingerprint": "ab" * 8, "keyframe": False}
    meta = {"round": 3, "source": "x.safetensors", "nested": {"k": [1, 2.5, "s"]}}
    payload = Envelope(tensors, frames, stream, meta).pack()
    assert payload[:4] == MAGIC
    env = unpack(payload)
    assert env.stream == stream and env.meta == meta
    assert env.frames == frames
    offset = 0
    for got, want, frame in zip(env.tensors, tensors, frames, strict=True):
        assert (got.name, got.dtype, got.shape, got.codec, got.params) == (
            want.name,
            want.dtype,
            want.shape,
            want.codec,
            want.params,
        )
        assert got.offset == offset and got.length == len(frame)
        assert got.crc32 == zlib.crc32(frame)
        offset += len(frame)
    # distinct codecs are stored once
    _, _, flags, hlen, _ = PREFIX.unpack_from(payload)
    header = payload[16 : 16 + hlen]
    if flags & wire.FLAG_ZSTD_HEADER:
        header = inflate_capped(header, 2**26)
    assert len(msgpack.unpackb(header)["c"]) == 2
    # no stream, no meta, no tensors
    env = unpack(Envelope([], [], None).pack())
    assert env.tensors == [] and env.frames == [] and env.stream is None and env.meta == {}


def test_stream_roundtrip_names_dtypes_shapes() -> None:
    """Torch and numpy inputs, bfloat16 included, 0-d and empty shapes, through a stream."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "emb.weight": torch.randn(64, 40, generator=g).to(torch.bfloat16),
        "small_bf16": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "half.weight": torch.randn(40, 50, generator=g).to(torch.float16),
        "double.weight": torch.randn(40, 50, generator=g).to(torch.float64),
        "fc.bias": torch.randn(40, generator=g),
        "bn.running_var": torch.rand(8, generator=g),
        "steps": torch.tensor(17, dtype=torch.int64),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "empty_int": torch.zeros(3, 0, dtype=torch.int32),
        "mask": torch.tensor([True, False, True]),
        "ids": np.arange(-5, 5, dtype=np.int8),
        "u8": np.arange(200, dtype=np.uint8).reshape(10, 20),
        "i16": np.arange(-3, 3, dtype=np.int16),
    }
    enc = StreamEncoder(Policy.default("grad", mode="rel", eb=1e-2), "s")
    dec = StreamDecoder("s")
    for _ in range(2):
        out = dec.decode(enc.encode(tensors))
        assert list(out) == list(tensors)
        for name, t in tensors.items():
            want = (
                t.detach().float().numpy()
                if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16
                else (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t))
            )
            want_dtype = (
                str(t.dtype).removeprefix("torch.")
                if isinstance(t, torch.Tensor)
                else np.asarray(t).dtype.name
            )
            assert dec.last_dtypes[name] == want_dtype
            assert out[name].shape == want.shape
            expected_np = "float32" if want_dtype == "bfloat16" else want_dtype
            assert out[name].dtype == np.dtype(expected_np)
            routed = enc.last_stats.per_tensor[name]["codec"]
            if routed == "zstd":
                np.testing.assert_array_equal(out[name], want)
            else:
                assert routed == "grad"
                assert max_err(out[name], want) <= ErrorBound("rel", 1e-2).absolute(want)
    assert enc.last_stats.per_tensor["emb.weight"]["codec"] == "grad"
    assert enc.last_stats.per_tensor["conv.weight"]["codec"] == "grad"
    assert enc.last_stats.encoded_bytes > 0 and enc.last_stats.ratio > 1


def test_encode_stats() -> None:
    enc = StreamEncoder(Policy.default(), "s")
    t = rounds_of()[0]
    payload = enc.encode(t)
    st = enc.last_stats
    assert st.encoded_bytes == len(payload)
    assert st.raw_bytes == sum(np.asarray(v).nbytes for v in t.values())
    assert set(st.per_tensor) == set(t)


# ================================================================ corruption


@pytest.mark.parametrize("data", [b"", b"F", b"FPZ\x00", b"FPZ\x00\x01\x00", bytes(15)])
def test_empty_and_short_payloads_are_refused(data: bytes) -> None:
    with pytest.raises(PayloadError):
        unpack(data)
    with pytest.raises(PayloadError):
        StreamDecoder().decode(data)


def test_garbage_is_refused() -> None:
    rng = np.random.default_rng(2)
    for n in [16, 17, 100, 1000, 5000]:
        for _ in range(5):
            with pytest.raises(PayloadError):
                StreamDecoder().decode(bytes(rng.integers(0, 256, size=n, dtype=np.uint8)))
    with pytest.raises(PayloadError):
        StreamDecoder().decode(b"PK\x03\x04" + bytes(100))  # a zip, say


def test_wrong_magic_and_version_are_refused() -> None:
    payload = small_payloads()[0][0]
    for magic in [b"FPZ\x01", b"fpz\x00", b"SZ3\x00", b"\x00" * 4]:
        with pytest.raises(PayloadError, match="magic"):
            unpack(magic + payload[4:])
    for version in [0, VERSION + 1, 0xFFFF]:
        with pytest.raises(PayloadError, match="version"):
            unpack(payload[:4] + struct.pack("<H", version) + payload[6:])


def test_every_truncation_is_refused() -> None:
    payloads, _ = small_payloads()
    for payload in payloads:
        for k in range(len(payload)):
            with pytest.raises(PayloadError):
                StreamDecoder().decode(payload[:k])


def test_trailing_bytes_are_refused() -> None:
    payload = small_payloads()[0][0]
    StreamDecoder().decode(payload)
    for extra in [b"\x00", b"\x00" * 4, b"garbage", payload]:
        with pytest.raises(PayloadError, match="trailing"):
            StreamDecoder().decode(payload + extra)


def decoders_for(payloads: list[bytes]) -> list[StreamDecoder]:
    """For each payload, a decoder in the state that accepts it."""
    out, dec = [], StreamDecoder()
    for p in payloads:
        out.append(copy.deepcopy(dec))
        dec.decode(p)
    return out


def test_every_single_bit_flip_is_refused() -> None:
    """Every bit of a small payload (except the reserved field, see below), flipped alone."""
    payloads, _ = small_payloads()
    assert 250 <= len(payloads[0]) <= 600
    for payload, ready in zip(payloads, decoders_for(payloads), strict=True):
        copy.deepcopy(ready).decode(payload)  # the intact payload is accepted
        for bit in range(len(payload) * 8):
            if bit // 8 in RESERVED_BYTES:
                continue
            b = bytearray(payload)
            b[bit // 8] ^= 1 << (bit % 8)
            dec = copy.deepcopy(ready)
            try:
                dec.decode(bytes(b))
            except CodecError:
                pass
            except BaseException as exc:  # pragma: no cover - the assertion reports it
                raise AssertionError(f"bit {bit}: {type(exc).__name__}: {exc}") from exc
            else:
                raise AssertionError(f"bit {bit}: corrupted payload was accepted")


def test_reserved_field_bit_flips_are_refused() -> None:
    payload = small_payloads()[0][0]
    for bit in range(RESERVED_BYTES[0] * 8, (RESERVED_BYTES[-1] + 1) * 8):
        b = bytearray(payload)
        b[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(PayloadError):
            StreamDecoder().decode(bytes(b))


def test_header_malformations_with_valid_checksums_are_refused() -> None:
    frame = get_codec("zstd").encode(np.arange(3, dtype=np.int64))
    crc = zlib.crc32(frame)
    good_entry = ["x", "int64", [3], 0, len(frame), crc]
    good = {"s": None, "m": {}, "c": [["zstd", {}]], "t": [good_entry]}
    out = StreamDecoder().decode(forge(good, [frame]))
    np.testing.assert_array_equal(out["x"], [0, 1, 2])

    def variant(**changes):
        h = copy.deepcopy(good)
        h.update(changes)
        return h

    bad_headers = [
        [1, 2, 3],
        {"m": {}},
        variant(t="nope"),
        variant(c=None),
        variant(c=[["zstd"]]),
        variant(c=[[1, {}]]),
        variant(m=[1]),
        variant(s={"id": 1, "seq": 0, "fingerprint": "0"}),
        variant(s={"id": "a", "seq": "0", "fingerprint": "0"}),
        variant(s={"id": "a", "seq": 0}),
        variant(t=[["x", "int64", [3], 0, len(frame)]]),  # short entry
        variant(t=[["x", "int64", [3], 5, len(frame), crc]]),  # codec index out of range
        variant(t=[["x", "complex64", [3], 0, len(frame), crc]]),  # unknown dtype
        variant(t=[["x", "int64", [-3], 0, len(frame), crc]]),  # negative dimension
        variant(t=[["x", "int64", [2**41], 0, len(frame), crc]]),  # absurd dimension
        variant(t=[["x", "int64", 3, 0, len(frame), crc]]),  # shape not a list
        variant(t=[[7, "int64", [3], 0, len(frame), crc]]),  # name not a string
        variant(t=[["x", "int64", [3], 0, -1, crc]]),  # negative length
        variant(t=[["x", "int64", [3], 0, len(frame), crc ^ 1]]),  # frame checksum
        variant(t=[["x", "int64", [4], 0, len(frame), crc]]),  # wrong shape for the frame
        variant(t=[["x", "int64", [3], 0, len(frame) + 1, crc]]),  # length past the end
        variant(c=[["no-such-codec", {}]]),
        variant(c=[["zstd", {"level": 3}]]),  # unknown parameter
        variant(c=[["grad", {"mode": "rel", "eb": -1.0}]]),
        variant(c=[["grad", {"mode": [1], "eb": 0.1}]]),
    ]
    for h in bad_headers:
        with pytest.raises(PayloadError):
            StreamDecoder().decode(forge(h, [frame]))
    # a lossy codec paired with an integer dtype: refused (a CodecError at least)
    with pytest.raises(CodecError):
        StreamDecoder().decode(forge(variant(c=[["sz3", {"mode": "rel", "eb": 0.01}]]), [frame]))
    # a name twice
    twice = variant(t=[good_entry, good_entry])
    with pytest.raises(PayloadError, match="twice"):
        StreamDecoder().decode(forge(twice, [frame, frame]))
    # msgpack that is not valid at all (checksum right)
    raw = b"\xc1\xc1\xc1"
    with pytest.raises(PayloadError):
        unpack(PREFIX.pack(MAGIC, VERSION, 0, len(raw), zlib.crc32(raw)) + raw)
    # header length beyond the payload
    with pytest.raises(PayloadError):
        unpack(PREFIX.pack(MAGIC, VERSION, 0, 2**31, 0) + b"\x80")


@pytest.mark.parametrize(
    "codec,params",
    [("grad", {"mode": "rel", "eb": "x"}), ("linear", {"eb": "x"}), ("qsgd", {"levels": "x"})],
)
def test_forged_codec_params_of_wrong_type_are_payload_error(codec: str, params: dict) -> None:
    with pytest.raises(CodecError):
        get_codec(codec, **params)
    frame = get_codec("zstd").encode(np.arange(3, dtype=np.float32))
    header = {
        "s": None,
        "m": {},
        "c": [[codec, params]],
        "t": [["x", "float32", [3], 0, len(frame), zlib.crc32(frame)]],
    }
    with pytest.raises(PayloadError):
        StreamDecoder().decode(forge(header, [frame]))


_CHILD = textwrap.dedent(
    """
    import copy, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    import numpy as np
    from fedpress.codec.routing import Policy
    from fedpress.codec.stream import StreamDecoder, StreamEncoder
    from fedpress.codec.wire import Envelope, unpack
    from fedpress.codec.errors import PayloadError
    codec, shape = sys.argv[1], tuple(int(s) for s in sys.argv[2].split(","))
    x = np.random.default_rng(0).standard_normal((4, 5) if len(shape) > 1 else 20)
    x = x.astype(np.float32)
    env = unpack(StreamEncoder(Policy.uniform(codec, mode="rel", eb=1e-2)).encode({"w": x}))
    env.tensors[0].shape = shape  # checksums stay valid: pack() recomputes them
    try:
        StreamDecoder().decode(Envelope(env.tensors, env.frames, env.stream, env.meta).pack())
    except PayloadError:
        print("refused")
    """
)


@pytest.mark.parametrize("codec", ["grad", "linear"])
@pytest.mark.parametrize("shape", ["549755813888", "1048576,524288"])
def test_forged_huge_shape_is_refused_not_a_crash(codec: str, shape: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, codec, shape],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip() == "refused"


def test_forged_frame_is_refused_atomically() -> None:
    """A frame replaced by garbage (checksums recomputed) is refused; no state changes."""
    enc = StreamEncoder(Policy.default("grad", mode="rel", eb=1e-2), "s")
    dec = StreamDecoder("s")
    rs = rounds_of()
    dec.decode(enc.encode(rs[0]))
    genuine = enc.encode(rs[1])
    env = unpack(genuine)
    names = [t.name for t in env.tensors]
    i = names.index("fc.weight")  # after conv.weight: conv's new state must not be kept
    assert names.index("conv.weight") < i
    env.frames[i] = b"\x02" + env.frames[i][1:3]  # truncated grad frame
    before_states, before_seq = copy.deepcopy(dec.states), dec.expected_seq
    with pytest.raises(PayloadError, match="fc.weight"):
        dec.decode(repack(env))
    assert dec.expected_seq == before_seq
    assert fingerprint(dec.states) == fingerprint(before_states)
    out = dec.decode(genuine)
    assert max_err(out["fc.weight"], rs[1]["fc.weight"]) <= ErrorBound("rel", 1e-2).absolute(
        rs[1]["fc.weight"]
    )


# ================================================================ streams


def make_stream(policy: Policy | None = None, **kw) -> StreamEncoder:
    return StreamEncoder(policy or Policy.default("grad", mode="rel", eb=1e-2), "c0/up", **kw)


def test_stream_rounds_roundtrip_with_bound_and_state() -> None:
    enc, dec = make_stream(), StreamDecoder("c0/up")
    for i, t in enumerate(rounds_of()):
        payload = enc.encode(t, meta={"round": i})
        s = unpack(payload).stream
        assert s["seq"] == i and s["keyframe"] == (i == 0) and s["id"] == "c0/up"
        out = dec.decode(payload)
        assert dec.last_meta == {"round": i}
        for name, x in t.items():
            assert max_err(out[name], x) <= ErrorBound("rel", 1e-2).absolute(np.asarray(x))
        assert fingerprint(enc.states) == fingerprint(dec.states)
        assert set(enc.states) == {"conv.weight", "fc.weight"}  # the stateful (grad) layers
    assert dec.expected_seq == 4


def test_seq_gap_is_refused_state_kept_and_keyframe_recovers() -> None:
    enc, dec = make_stream(), StreamDecoder()
    rs = rounds_of(n=6)
    dec.decode(enc.encode(rs[0]))
    enc.encode(rs[1])  # lost on the way
    gap = enc.encode(rs[2])
    states, seq = copy.deepcopy(dec.states), dec.expected_seq
    fp = fingerprint(dec.states)
    with pytest.raises(StreamStateError, match="sequence"):
        dec.decode(gap)
    assert dec.expected_seq == seq == 1
    assert fingerprint(dec.states) == fp
    assert set(dec.states) == set(states)
    with pytest.raises(StreamStateError):  # still refused, whatever comes next
        dec.decode(enc.encode(rs[3]))
    enc.reset()
    key = enc.encode(rs[4])
    assert unpack(key).stream["keyframe"] and unpack(key).stream["seq"] == 4
    out = dec.decode(key)
    assert max_err(out["conv.weight"], rs[4]["conv.weight"]) <= ErrorBound("rel", 1e-2).absolute(
        rs[4]["conv.weight"]
    )
    dec.decode(enc.encode(rs[5]))
    assert fingerprint(dec.states) == fingerprint(enc.states)


def test_replay_is_refused() -> None:
    enc, dec = make_stream(), StreamDecoder()
    rs = rounds_of()
    p = [enc.encode(t) for t in rs[:3]]
    dec.decode(p[0])
    dec.decode(p[1])
    fp = fingerprint(dec.states)
    with pytest.raises(StreamStateError):
        dec.decode(p[1])
    assert fingerprint(dec.states) == fp and dec.expected_seq == 2
    dec.decode(p[2])


def test_replayed_keyframe_is_refused_when_it_would_roll_state_back() -> None:
    enc = make_stream(Policy.default("grad", mode="rel", eb=1e-2))
    dec = StreamDecoder()
    p = [enc.encode(t) for t in rounds_of(n=3)]
    for payload in p:
        dec.decode(payload)
    fp = fingerprint(dec.states)
    with pytest.raises(StreamStateError, match="replay"):
        dec.decode(p[0])
    assert fingerprint(dec.states) == fp


def test_stateless_payloads_may_be_decoded_again() -> None:
    # a broadcast model or a retransmission: nothing to roll back, the same tensors come out;
    # duplicate detection on stateless links is the application's (the FL server's) job
    enc = make_stream(Policy.default("linear", mode="rel", eb=1e-2))
    dec = StreamDecoder()
    p = [enc.encode(t) for t in rounds_of(n=3)]
    outs = [dec.decode(payload) for payload in p]
    again = dec.decode(p[1])
    assert all(np.array_equal(again[k], outs[1][k]) for k in again)


def test_fingerprint_mismatch_is_refused() -> None:
    rs, other = rounds_of(seed=0), rounds_of(seed=5)
    a, b = make_stream(), make_stream()  # two senders claiming the same stream id
    dec = StreamDecoder()
    dec.decode(a.encode(rs[0]))
    b.encode(other[0])
    wrong = b.encode(other[1])  # seq 1, encoded against another state
    assert unpack(wrong).stream["seq"] == dec.expected_seq
    fp = fingerprint(dec.states)
    with pytest.raises(StreamStateError, match="state"):
        dec.decode(wrong)
    assert fingerprint(dec.states) == fp
    dec.decode(a.encode(rs[1]))


def test_decoder_refuses_another_stream_id() -> None:
    dec = StreamDecoder("c1/up")
    with pytest.raises(StreamStateError):
        dec.decode(make_stream().encode(rounds_of()[0]))


def test_keyframe_interval() -> None:
    enc = make_stream(keyframe_interval=3)
    dec = StreamDecoder()
    flags = []
    for t in rounds_of(n=4) + rounds_of(seed=1, n=4):
        payload = enc.encode(t)
        flags.append(unpack(payload).stream["keyframe"])
        dec.decode(payload)
    assert flags == [True, False, False, True, False, False, True, False]
    # a late joiner can start at any keyframe
    late = StreamDecoder()
    enc2 = make_stream(keyframe_interval=2)
    ps = [enc2.encode(t) for t in rounds_of(n=4)]
    with pytest.raises(StreamStateError):
        late.decode(ps[1])
    late.decode(ps[2])
    late.decode(ps[3])
    with pytest.raises(CodecError):
        make_stream(keyframe_interval=0)


def test_keyframe_frames_carry_no_temporal_context() -> None:
    # the per-tensor fallback off, so every non-keyframe does use the temporal context
    policy = Policy.default("grad", mode="rel", eb=1e-2, context_fallback=False)
    enc = make_stream(policy, keyframe_interval=2)
    for i, t in enumerate(rounds_of(n=4)):
        env = unpack(enc.encode(t))
        frame = env.frames[[e.name for e in env.tensors].index("conv.weight")]
        assert bool(frame[9] & F_TEMPORAL) == (i % 2 == 1)


def test_state_dict_resume_gives_identical_bytes() -> None:
    rs = rounds_of(n=4)
    a = make_stream(keyframe_interval=3)
    dec = StreamDecoder()
    for t in rs[:2]:
        dec.decode(a.encode(t))
    sd = copy.deepcopy(a.state_dict())
    b = make_stream(keyframe_interval=3)
    b.load_state_dict(sd)
    assert b.seq == a.seq == 2
    for t in rs[2:]:
        pa, pb = a.encode(t), b.encode(t)
        assert pa == pb
        dec.decode(pb)
    # the state dict is a snapshot: encoding more does not change it
    assert sd["seq"] == 2


def test_decoder_hub_routes_by_stream_id() -> None:
    hub = DecoderHub()
    encs = {
        sid: StreamEncoder(Policy.default("grad", mode="rel", eb=1e-2), sid)
        for sid in ["c0/up", "c1/up", "c2/up"]
    }
    data = {sid: rounds_of(seed=i) for i, sid in enumerate(encs)}
    for r in range(3):
        for sid, enc in reversed(list(encs.items())):
            got_sid, out = hub.decode(enc.encode(data[sid][r]))
            assert got_sid == sid
            x = data[sid][r]["conv.weight"]
            assert max_err(out["conv.weight"], x) <= ErrorBound("rel", 1e-2).absolute(x)
    assert set(hub.decoders) == set(encs)
    for sid, enc in encs.items():
        assert fingerprint(hub.decoders[sid].states) == fingerprint(enc.states)
    # a gap on one stream leaves the others alone
    encs["c1/up"].encode(data["c1/up"][3])
    with pytest.raises(StreamStateError):
        hub.decode(encs["c1/up"].encode(data["c1/up"][3]))
    assert hub.decode(encs["c0/up"].encode(data["c0/up"][3]))[0] == "c0/up"
    # a payload without stream information goes to "default"
    sid, out = hub.decode(Envelope([], [], None).pack())
    assert sid == "default" and out == {}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_error_leaves_encoder_unchanged(bad: float) -> None:
    rs = rounds_of()
    enc = make_stream()
    twin = make_stream()
    dec = StreamDecoder()
    dec.decode(enc.encode(rs[0]))
    twin.encode(rs[0])
    sd = copy.deepcopy(enc.state_dict())
    poisoned = dict(rs[1])
    poisoned["fc.weight"] = rs[1]["fc.weight"].copy()
    poisoned["fc.weight"][3, 7] = bad
    with pytest.raises(NonFiniteError, match="fc.weight"):
        enc.encode(poisoned)
    assert enc.seq == sd["seq"]
    assert fingerprint(enc.states) == fingerprint(sd["states"])
    # nothing was consumed: the next payload is what an untouched encoder sends
    assert enc.encode(rs[1]) == twin.encode(rs[1])


def test_nonfinite_lossless_sends_exactly_with_a_warning() -> None:
    rs = rounds_of()
    enc = make_stream(Policy.default("grad", mode="rel", eb=1e-2, nonfinite="lossless"))
    dec = StreamDecoder()
    dec.decode(enc.encode(rs[0]))
    poisoned = dict(rs[1])
    w = rs[1]["conv.weight"].copy()
    w[0, 0, 0, 0], w[1, 2, 1, 1], w[3, 3, 2, 0] = np.nan, np.inf, -np.inf
    poisoned["conv.weight"] = w
    with pytest.warns(UserWarning, match="conv.weight"):
        payload = enc.encode(poisoned)
    assert enc.last_stats.per_tensor["conv.weight"]["codec"] == "zstd"
    assert enc.last_stats.per_tensor["fc.weight"]["codec"] == "grad"
    out = dec.decode(payload)
    np.testing.assert_array_equal(out["conv.weight"], w)  # NaN where NaN, inf where inf
    assert "conv.weight" not in enc.states and "conv.weight" not in dec.states
    # the next round restarts that layer from a keyframe, and both sides still agree
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dec.decode(enc.encode(rs[2]))
    x = rs[2]["conv.weight"]
    assert max_err(out["conv.weight"], x) <= ErrorBound("rel", 1e-2).absolute(x)
    assert fingerprint(enc.states) == fingerprint(dec.states)


def test_nonfinite_in_lossless_routed_tensor_is_fine() -> None:
    enc, dec = make_stream(), StreamDecoder()
    t = {"fc.bias": np.array([np.nan, 1.0, np.inf], dtype=np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dec.decode(enc.encode(t))
    np.testing.assert_array_equal(out["fc.bias"], t["fc.bias"])


# ================================================================ routing


def routed(policy: Policy, name: str, x) -> str:
    return policy.route(name, np.asarray(x)).name


def test_default_policy_routes() -> None:
    p = Policy.default()
    big_w = np.zeros((64, 32, 3, 3), np.float32)
    assert routed(p, "layer1.conv.weight", big_w) == "grad"
    assert routed(p, "fc.weight", np.zeros((100, 50), np.float16)) == "grad"
    assert routed(p, "fc.weight", np.zeros((100, 50), np.float64)) == "grad"
    assert routed(p, "embedding", np.zeros(5000, np.float32)) == "grad"  # large float, 1-D
    assert routed(p, "fc.bias", np.zeros(5000, np.float32)) == "zstd"
    assert routed(p, "layer1.bn1.weight", np.zeros(5000, np.float32)) == "zstd"
    assert routed(p, "bn.running_mean", np.zeros(5000, np.float32)) == "zstd"
    assert routed(p, "encoder.layernorm.weight", np.zeros((64, 64), np.float32)) == "zstd"
    assert routed(p, "bn.num_batches_tracked", np.array(3, np.int64)) == "zstd"
    assert routed(p, "big_int_buffer", np.zeros((100, 100), np.int64)) == "zstd"
    assert routed(p, "mask", np.zeros((100, 100), bool)) == "zstd"
    assert routed(p, "small.weight", np.zeros((32, 32), np.float32)) == "zstd"  # 1024: small
    assert routed(p, "small.weight", np.zeros((1025,), np.float32)) == "grad"
    assert routed(p, "scalar", np.float32(1.0)) == "zstd"
    assert routed(Policy.default(small=10), "small.weight", np.zeros((4, 4), np.float32)) == "grad"
    codec = p.route("w", big_w)
    assert codec.params()["mode"] == "rel" and codec.params()["eb"] == 1e-2
    assert p.route("w", big_w) is codec  # cached


def test_tensor_roles() -> None:
    assert tensor_role("conv.weight", np.zeros((2, 2), np.float32)) == "weight"
    assert tensor_role("fc.bias", np.zeros(2, np.float32)) == "bias"
    assert tensor_role("BatchNorm.weight", np.zeros(2, np.float32)) == "norm"
    assert tensor_role("steps", np.zeros(2, np.int64)) == "buffer"
    assert tensor_role("v", np.zeros(2, np.float32)) == "other"


@pytest.mark.parametrize("codec", ["linear", "sz3", "zfp", "sz3-nopred"])
def test_default_policy_with_other_lossy_codecs(codec: str) -> None:
    p = Policy.default(codec, mode="abs", eb=1e-3)
    c = p.route("w", np.zeros((64, 64), np.float32))
    assert c.name == codec and c.params() == {"mode": "abs", "eb": 1e-3}
    assert routed(p, "b", np.zeros((64, 64), np.int32)) == "zstd"


def test_default_policy_with_codecs_without_a_bound() -> None:
    p = Policy.default("qsgd", levels=16)
    c = p.route("w", np.zeros((64, 64), np.float32))
    assert c.name == "qsgd" and c.params()["levels"] == 16
    assert Policy.default("zstd").route("w", np.zeros((64, 64), np.float32)).name == "zstd"


def test_lossless_and_uniform_policies() -> None:
    lossless = Policy.lossless()
    for x in [np.zeros((64, 64), np.float32), np.arange(5), np.float64(1.0)]:
        assert routed(lossless, "conv.weight", x) == "zstd"
    uni = Policy.uniform("linear", mode="rel", eb=1e-3)
    assert routed(uni, "fc.bias", np.zeros(3, np.float32)) == "linear"
    assert routed(uni, "ids", np.zeros(3, np.int64)) == "zstd"
    enc, dec = StreamEncoder(lossless), StreamDecoder()
    t = rounds_of()[0]
    out = dec.decode(enc.encode(t))
    for k, v in t.items():
        np.testing.assert_array_equal(out[k], v)


def test_custom_rules_first_match_wins() -> None:
    p = Policy(
        [
            Rule("raw", name="*.exact"),
            Rule("linear", {"mode": "abs", "eb": 0.5}, min_size=10, float_only=True),
            Rule("zstd"),
        ]
    )
    assert routed(p, "a.exact", np.zeros(100, np.float32)) == "raw"
    assert routed(p, "a", np.zeros(100, np.float32)) == "linear"
    assert routed(p, "a", np.zeros(5, np.float32)) == "zstd"
    assert routed(p, "a", np.zeros(100, np.int8)) == "zstd"
    none = Policy([Rule("zstd", name="keep.*")])
    with pytest.raises(CodecError, match="no routing rule"):
        none.route("other", np.zeros(3))


def test_unknown_codecs_and_params_are_refused() -> None:
    with pytest.raises(CodecError, match="unknown codec"):
        get_codec("nope")
    with pytest.raises(CodecError):
        get_codec("grad", bogus=1)
    with pytest.raises(CodecError):
        get_codec("zstd", mode="rel")
    with pytest.raises(CodecError):
        Policy.default("nope")
    with pytest.raises(CodecError):
        Policy.default("grad", bogus=1)
    with pytest.raises(CodecError):
        Policy.default("grad", mode="pct")
    with pytest.raises(CodecError):
        Policy.default("grad", eb=-1.0)
    with pytest.raises(CodecError):
        Policy([Rule("nope")])
    with pytest.raises(CodecError):
        Policy([Rule("linear", {"predictor": "kernel"})])
    with pytest.raises(CodecError):
        Policy([])
    with pytest.raises(CodecError):
        Policy([Rule("zstd")], nonfinite="ignore")
    with pytest.raises(CodecError):
        Policy.uniform("nope")
