"""Payload limits, the typed header, the manifest and the codec allow-list.

Crafted payloads are built here byte by byte (msgpack + zstd + the 16-byte prefix), independently
of ``wire.Envelope.pack``. The expensive ones (issue 11's crafted cases) are decoded in a child
process under an address-space cap, so a regression shows up as a failed test, not a dead pytest.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zstandard

from fedpress.codec.errors import CodecError, PayloadError
from fedpress.codec.limits import PayloadLimits
from fedpress.codec.routing import Policy
from fedpress.codec.stream import DecoderHub, StreamDecoder, StreamEncoder
from fedpress.codec.wire import read_manifest

PREFIX = struct.Struct("<4sHHII")
GIB = 2**30


def craft(header: bytes, frames: bytes = b"", compress: bool = False) -> bytes:
    """A payload from raw header bytes: prefix (magic, version 1, flags, length, crc32)."""
    flags = 0
    if compress:
        header, flags = zstandard.ZstdCompressor(level=3).compress(header), 1
    return PREFIX.pack(b"FPZ\x00", 1, flags, len(header), zlib.crc32(header)) + header + frames


def header(tensors: list, codecs: list | None = None, meta: dict | None = None,
           stream: dict | None = None) -> bytes:
    return msgpack.packb({"s": stream, "m": meta or {}, "c": codecs or [["zstd", {}]],
                          "t": tensors}, use_bin_type=True)


def corrupt_frame_payload(entries: list, codecs: list | None = None) -> bytes:
    """Entries whose frames are garbage with wrong CRCs: a refusal must come from the header."""
    frames = b"".join(b"\xAB" * e[4] for e in entries)
    return craft(header(entries, codecs), frames)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def run_child(code: str, payload: bytes, tmp_path: Path, as_gib: float = 1.0) -> tuple[str, float]:
    """Decode ``payload`` in a child under RLIMIT_AS; returns (its last output line, seconds)."""
    path = tmp_path / "payload.fpz"
    path.write_bytes(payload)
    prelude = textwrap.dedent(f"""
        import resource, sys
        cap = int({as_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        payload = open({str(path)!r}, "rb").read()
    """)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout.strip().splitlines()[-1], seconds


DECODE_IN_CHILD = """
    from fedpress.codec.errors import PayloadError
    from fedpress.codec.stream import StreamDecoder
    try:
        out = StreamDecoder().decode(payload)
        print("decoded", len(out))
    except PayloadError as exc:
        print("refused:", exc)
"""


# ------------------------------------------------------------------ the limits object
def test_limits_validate_and_raise() -> None:
    with pytest.raises(CodecError, match="max_tensors"):
        PayloadLimits(max_tensors=0)
    with pytest.raises(CodecError, match="max_meta_depth"):
        PayloadLimits(max_meta_depth=True)  # type: ignore[arg-type]
    raised = PayloadLimits().replace(max_total_bytes=64 * GIB)
    assert raised.max_total_bytes == 64 * GIB and raised.max_tensors == PayloadLimits().max_tensors


def test_defaults_fit_a_2gb_model() -> None:
    """A 2 GB bfloat16 model decodes to 4 GB of float32; a 2 GB float32 model to 2 GB."""
    lim = PayloadLimits()
    assert lim.max_total_bytes >= 4 * 10**9
    assert lim.max_total_elements >= 2 * 10**9 // 2  # 1e9 two-byte parameters
    assert lim.max_tensor_bytes >= 1 * GIB


# ------------------------------------------------------------------ each limit, before any frame
@pytest.mark.parametrize(
    ("limits", "entries", "needle"),
    [
        (PayloadLimits(max_tensors=3), [[f"t{i}", "float32", [2], 0, 4, 0] for i in range(4)],
         "max_tensors"),
        (PayloadLimits(max_tensor_bytes=1000), [["w", "float32", [251], 0, 4, 0]],
         "max_tensor_bytes"),
        (PayloadLimits(max_tensor_bytes=1000), [["w", "bfloat16", [251], 0, 4, 0]],
         "max_tensor_bytes"),  # bfloat16 counts as the float32 it decodes to
        (PayloadLimits(max_total_bytes=1000), [["a", "float64", [100], 0, 4, 0],
                                               ["b", "float64", [26], 0, 4, 0]], "max_total_bytes"),
        (PayloadLimits(max_total_elements=100), [["a", "int8", [60], 0, 4, 0],
                                                 ["b", "int8", [41], 0, 4, 0]], "max_total_elements"),
    ],
)
def test_limits_refuse_before_frames(limits: PayloadLimits, entries: list, needle: str) -> None:
    payload = corrupt_frame_payload(entries)
    with pytest.raises(PayloadError, match=needle) as info:
        StreamDecoder(limits=limits).decode(payload)
    one_line(info.value)
    with pytest.raises(PayloadError, match=needle):
        read_manifest(payload, limits)
    # within the limits, the same payload reaches its (corrupt) frames
    with pytest.raises(PayloadError, match="checksum"):
        StreamDecoder().decode(payload)


def test_header_size_limits() -> None:
    entries = [[f"tensor_{i:05d}", "float32", [0], 0, 1, zlib.crc32(b"\x00")] for i in range(2000)]
    raw = header(entries)
    with pytest.raises(PayloadError, match="max_header_bytes"):
        StreamDecoder(limits=PayloadLimits(max_header_bytes=len(raw) - 1)).decode(craft(raw))
    packed = craft(raw, compress=True) + b"\x00" * 2000
    assert len(packed) < len(raw) // 4
    with pytest.raises(PayloadError, match="over the limit"):
        StreamDecoder(limits=PayloadLimits(max_inflated_header_bytes=len(raw) - 1)).decode(packed)
    out = StreamDecoder().decode(packed)
    assert len(out) == 2000 and all(v.size == 0 for v in out.values())


def test_meta_size_and_depth_limits() -> None:
    big = craft(header([], meta={"blob": "x" * 5000}))
    with pytest.raises(PayloadError, match="max_meta_bytes"):
        StreamDecoder(limits=PayloadLimits(max_meta_bytes=4096)).decode(big)
    nested: dict = {}
    node = nested
    for _ in range(20):
        node["k"] = {}
        node = node["k"]
    deep = craft(header([], meta=nested))
    with pytest.raises(PayloadError, match="max_meta_depth"):
        StreamDecoder().decode(deep)
    assert StreamDecoder(limits=PayloadLimits(max_meta_depth=30)).decode(deep) == {}
    very_deep = craft(b"\x84\xa1s\xc0\xa1m\x81\xa1k" + b"\x91" * 300_000 + b"\xc0\xa1c\x90\xa1t\x90")
    with pytest.raises(PayloadError):
        StreamDecoder().decode(very_deep)


# ------------------------------------------------------------------ typed header schema
@pytest.mark.parametrize(
    "bad",
    [
        [["w", "float32", ["4"], 0, 16, 0]],  # shape of strings
        [["w", "float32", [-1], 0, 16, 0]],  # negative dimension
        [["w", "float32", [2**40], 0, 16, 0]],  # absurd dimension
        [["w", "complex64", [4], 0, 16, 0]],  # unknown dtype
        [["w", "float32", [4], 0, 16, -1]],  # negative crc
        [["w", "float32", [4], 5, 16, 0]],  # codec index out of the table
        [["w", "float32", [4], True, 16, 0]],  # bool where an int belongs
        [[7, "float32", [4], 0, 16, 0]],  # name not a string
        [["w", "float32", [4], 0, 16]],  # short entry
        [["w", "float32", [4], 0, 16, 0], ["w", "float32", [4], 0, 16, 0]],  # duplicate name
    ],
)
def test_typed_header_refuses_bad_entries(bad: list) -> None:
    with pytest.raises(PayloadError) as info:
        StreamDecoder().decode(corrupt_frame_payload(bad) if all(len(e) == 6 and
                                                                isinstance(e[4], int) for e in bad)
                               else craft(header(bad)))
    one_line(info.value)


@pytest.mark.parametrize(
    "hdr",
    [
        {"s": None, "m": {}, "c": [["zstd", {"x": [1, 2]}]], "t": []},  # param value not a scalar
        {"s": None, "m": {}, "c": [["zstd"]], "t": []},  # codec ref without params
        {"s": {"id": "a", "seq": -1, "fingerprint": "0"}, "m": {}, "c": [], "t": []},
        {"s": {"id": "a", "seq": 0, "fingerprint": "0", "extra": 1}, "m": {}, "c": [], "t": []},
        {"s": None, "m": [], "c": [], "t": []},  # meta not a map
        {"s": None, "m": {1: 2}, "c": [], "t": []},  # meta key not a string
        {"s": None, "m": {}, "c": [], "t": [], "x": 1},  # unknown field
        {"s": None, "m": {}, "c": []},  # no tensor list
    ],
)
def test_typed_header_refuses_bad_fields(hdr: dict) -> None:
    payload = craft(msgpack.packb(hdr, use_bin_type=True, strict_types=False))
    with pytest.raises(PayloadError) as info:
        StreamDecoder().decode(payload)
    one_line(info.value)


def test_zstd_header_without_declared_size_is_refused() -> None:
    raw = header([])
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    packed = cobj.compress(raw * 1) + cobj.flush()
    payload = PREFIX.pack(b"FPZ\x00", 1, 1, len(packed), zlib.crc32(packed)) + packed
    with pytest.raises(PayloadError, match="declare"):
        StreamDecoder().decode(payload)


# ------------------------------------------------------------------ manifest
def test_manifest_reads_names_shapes_codecs_without_frames() -> None:
    tensors = {
        "conv.weight": np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32),
        "conv.bias": np.zeros(8, np.float32),
        "steps": np.arange(3, dtype=np.int64),
    }
    payload = StreamEncoder(Policy.default("grad", small=16)).encode(tensors)
    manifest = read_manifest(payload)
    assert [(e.name, e.dtype, e.shape, e.codec) for e in manifest] == [
        ("conv.weight", "float32", (8, 4, 3, 3), "grad"),
        ("conv.bias", "float32", (8,), "zstd"),
        ("steps", "int64", (3,), "zstd"),
    ]
    assert manifest[0].params["eb"] == 1e-2 and manifest[0].nbytes == 8 * 4 * 9 * 4
    # the manifest never reads the frames: flip the last frame byte, it still reads; decode refuses
    broken = payload[:-1] + bytes([payload[-1] ^ 0xFF])
    assert [e.name for e in read_manifest(broken)] == list(tensors)
    with pytest.raises(PayloadError, match="checksum"):
        StreamDecoder().decode(broken)


# ------------------------------------------------------------------ allow-list
def test_allow_list_refuses_other_codecs_before_their_frames() -> None:
    x = {"w": np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)}
    payload = StreamEncoder(Policy.uniform("zfp", mode="abs", eb=1e-3), "c0/up").encode(x)
    broken = payload[:-10] + b"\x00" * 10  # a corrupt zfp frame: must never be touched
    for dec in (StreamDecoder("c0/up", accept={"grad", "zstd"}),):
        with pytest.raises(PayloadError, match="'zfp'.*does not accept") as info:
            dec.decode(broken)
        one_line(info.value)
    hub = DecoderHub(accept=["fast", "zstd"])
    with pytest.raises(PayloadError, match="does not accept"):
        hub.decode(broken)
    assert hub.decoders == {}
    with pytest.raises(PayloadError, match="does not accept"):
        read_manifest(payload, accept=())
    sid, out = DecoderHub(accept={"zfp"}).decode(payload)
    assert sid == "c0/up" and np.abs(out["w"] - x["w"]).max() <= 1e-3
    assert np.abs(StreamDecoder(accept={"zfp", "zstd"}).decode(payload)["w"] - x["w"]).max() <= 1e-3


def test_hub_applies_limits_to_every_stream() -> None:
    x = {"w": np.zeros((40, 40), np.float32)}
    payload = StreamEncoder(Policy.uniform("fast"), "c1/up").encode(x)
    with pytest.raises(PayloadError, match="max_tensor_bytes"):
        DecoderHub(limits=PayloadLimits(max_tensor_bytes=1000)).decode(payload)
    hub = DecoderHub(limits=PayloadLimits(max_tensor_bytes=40 * 40 * 4))
    assert hub.decode(payload)[0] == "c1/up"
    assert hub.decoders["c1/up"].limits.max_tensor_bytes == 6400


def test_old_keyword_max_tensor_bytes_still_works() -> None:
    payload = StreamEncoder(Policy.uniform("raw")).encode({"w": np.zeros(100, np.float32)})
    with pytest.raises(PayloadError, match="max_tensor_bytes"):
        StreamDecoder(max_tensor_bytes=399).decode(payload)
    assert StreamDecoder(max_tensor_bytes=400).decode(payload)["w"].shape == (100,)


# ------------------------------------------------------------------ issue 11's crafted payloads
def test_crafted_meta_of_67m_empty_maps(tmp_path: Path) -> None:
    n = 67_000_000
    raw = (b"\x84\xa1s\xc0\xa1m\x81\xa1x\xdd" + struct.pack(">I", n) + b"\x80" * n
           + b"\xa1c\x90\xa1t\x90")
    payload = craft(raw, compress=True)
    del raw
    assert len(payload) < 64_000
    line, seconds = run_child(DECODE_IN_CHILD, payload, tmp_path)
    assert line.startswith("refused:") and "over the limit" in line, line
    assert seconds < 10


def test_crafted_meta_just_under_the_header_cap(tmp_path: Path) -> None:
    n = 20_000_000  # inflates to 20 MB, under max_inflated_header_bytes: meta size refuses it
    raw = (b"\x84\xa1s\xc0\xa1m\x81\xa1x\xdd" + struct.pack(">I", n) + b"\x80" * n
           + b"\xa1c\x90\xa1t\x90")
    line, seconds = run_child(DECODE_IN_CHILD, craft(raw, compress=True), tmp_path)
    assert line.startswith("refused:") and "max_meta_bytes" in line, line
    assert seconds < 10


def test_crafted_three_fast_tensors_of_almost_2gib(tmp_path: Path) -> None:
    n = (2 * GIB - 1) // 4
    fake = b"\x02" + b"\x00" * 100
    entries = [[f"t{i}", "float32", [n], 0, len(fake), zlib.crc32(fake)] for i in range(3)]
    codecs = [["fast", {"mode": "rel", "eb": 0.01, "contexts": True}]]
    payload = craft(header(entries, codecs), fake * 3)
    line, seconds = run_child(DECODE_IN_CHILD, payload, tmp_path)
    assert line.startswith("refused:") and "max_total_bytes" in line, line
    assert seconds < 10


def test_crafted_100k_empty_tensors(tmp_path: Path) -> None:
    empty = b"\x00"
    entries = [[f"t{i}", "float32", [0], 0, 1, zlib.crc32(empty)] for i in range(100_000)]
    payload = craft(header(entries, [["grad", {"mode": "rel", "eb": 0.01}]]), empty * 100_000,
                    compress=True)
    line, seconds = run_child(DECODE_IN_CHILD, payload, tmp_path)
    assert line.startswith("refused:") and "max_tensors" in line, line
    assert seconds < 10


def test_empty_tensors_at_the_count_limit_decode_quickly(tmp_path: Path) -> None:
    n = PayloadLimits().max_tensors
    empty = b"\x00"
    entries = [[f"t{i}", "float32", [0], 0, 1, zlib.crc32(empty)] for i in range(n)]
    payload = craft(header(entries, [["grad", {"mode": "rel", "eb": 0.01}]]), empty * n,
                    compress=True)
    line, seconds = run_child(DECODE_IN_CHILD, payload, tmp_path)
    assert line == f"decoded {n}", line
    assert seconds < 10


def test_policy_codec_names_is_the_accept_set() -> None:
    policy = Policy.default("grad", mode="rel", eb=1e-2)
    assert policy.codec_names() == {"grad", "zstd"}
    assert Policy.uniform("raw").codec_names() == {"raw", "zstd"}
    assert Policy([*Policy.uniform("fast").rules[:1]], nonfinite="lossless").codec_names() == {
        "fast", "zstd"}
    tensors = {"w": np.random.default_rng(2).standard_normal((40, 40)).astype(np.float32),
               "b": np.zeros(40, np.float32), "n": np.arange(4)}
    payload = StreamEncoder(policy).encode(tensors)
    out = StreamDecoder(accept=policy.codec_names()).decode(payload)
    assert set(out) == set(tensors)
