"""Codec adapter, raw packing, client profiles and the round-trip time model."""

from __future__ import annotations

import numpy as np
import pytest

from fedpress.codec.errors import CodecError
from fedpress.fl.codec_adapter import (
    CodecSpec,
    decode_update,
    encode_update,
    make_decoder,
    make_encoder,
)
from fedpress.fl.profiles import ClientProfile, load_trace, make_profiles, round_trip
from fedpress.fl.timing import CodecSpeed, TimingModel


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(8).astype(np.float32),
        "fc.weight": rng.standard_normal((10, 300)).astype(np.float32) * 0.01,
    }


@pytest.mark.parametrize("name", ["none", "lossless"])
def test_lossless_links_are_exact(name):
    enc, dec = make_encoder(CodecSpec(name), "c0/up"), make_decoder()
    t = tensors()
    for _ in range(2):
        payload, stats = encode_update(enc, t)
        assert stats.raw_bytes == sum(v.nbytes for v in t.values())
        assert stats.encoded_bytes == len(payload)
        out, secs = decode_update(dec, payload)
        assert secs >= 0
        for k in t:
            assert np.array_equal(out[k], t[k])


def test_lossy_link_respects_its_bound_and_compresses():
    spec = CodecSpec("grad", "rel", 1e-2)
    enc, dec = make_encoder(spec, "c1/up"), make_decoder()
    for r in range(3):  # stateful: several payloads of the same stream in order
        t = tensors(r)
        payload, stats = encode_update(enc, t)
        out, _ = decode_update(dec, payload)
        w = t["fc.weight"]
        bound = 1e-2 * float(w.max() - w.min())
        assert np.abs(out["fc.weight"] - w).max() <= bound * (1 + 1e-5)
        assert stats.encoded_bytes < stats.raw_bytes


def test_unknown_codec_is_a_clear_error():
    with pytest.raises(CodecError, match="unknown codec"):
        make_encoder(CodecSpec("nosuchcodec"), "c0/up")


def test_profiles_are_deterministic_and_follow_the_config():
    from fedpress.config import ClientsConfig

    cfg = ClientsConfig.model_validate(
        {
            "compute": {"dist": "lognormal", "s_per_sample": 0.01, "sigma": 0.5},
            "network": {"tiers": [{"up_mbps": 1, "down_mbps": 2, "weight": 1},
                                  {"up_mbps": 100, "down_mbps": 200, "weight": 3}]},
        }
    )
    a, b = make_profiles(400, cfg, seed=5), make_profiles(400, cfg, seed=5)
    assert a == b and make_profiles(400, cfg, seed=6) != a
    speeds = np.array([p.s_per_sample for p in a])
    assert np.median(speeds) == pytest.approx(0.01, rel=0.15)
    fast = sum(p.up_mbps == 100 for p in a) / len(a)
    assert 0.65 < fast < 0.85  # weight 3 of 4
    const = ClientsConfig.model_validate({"compute": {"dist": "constant", "s_per_sample": 0.2}})
    assert {p.s_per_sample for p in make_profiles(5, const, 0)} == {0.2}


def test_trace_profiles(tmp_path):
    from fedpress.config import ClientsConfig

    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,s_per_sample,up_mbps\n1,0.5,3\n0,0.25,\n")
    rows = load_trace(trace)
    assert rows == [{"s_per_sample": 0.25}, {"s_per_sample": 0.5, "up_mbps": 3.0}]
    cfg = ClientsConfig.model_validate({"compute": {"dist": "trace", "trace": str(trace)}})
    ps = make_profiles(3, cfg, 0)
    assert [p.s_per_sample for p in ps] == [0.25, 0.5, 0.25]
    assert ps[1].up_mbps == 3.0 and ps[0].up_mbps == 10.0
    with pytest.raises(ValueError, match="does not exist"):
        load_trace(tmp_path / "missing.csv")


def test_round_trip_arithmetic():
    p = ClientProfile(0, s_per_sample=0.01, up_mbps=8.0, down_mbps=16.0, latency_s=0.1)
    rt = round_trip(p, bytes_down=2_000_000, bytes_up=1_000_000, samples=50, decode_s=0.2, encode_s=0.3)
    assert rt["download_s"] == pytest.approx(1.0 + 0.1)
    assert rt["upload_s"] == pytest.approx(1.0 + 0.1)
    assert rt["compute_s"] == pytest.approx(0.5)
    assert rt["total_s"] == pytest.approx(1.1 + 0.2 + 0.5 + 0.3 + 1.1)
    rt2 = round_trip(p, bytes_down=0, bytes_up=0, samples=0, decode_s=0.0, encode_s=0.0,
                     server_encode_s=0.25, server_decode_s=0.5)
    assert rt2["total_s"] == pytest.approx(0.1 + 0.1 + 0.25 + 0.5)


def test_timing_model_charges_each_codec_its_own_speed():
    up, down = CodecSpeed(50.0, 200.0), CodecSpeed(10.0, 20.0)
    modeled = TimingModel("modeled", up=up, down=down)
    # 100 MB: uplink encode at 50 MB/s, decode at 200 MB/s; downlink 10 / 20 MB/s
    assert modeled.codec_seconds("up", "encode", 100_000_000, 123.0) == pytest.approx(2.0)
    assert modeled.codec_seconds("up", "decode", 100_000_000) == pytest.approx(0.5)
    assert modeled.codec_seconds("down", "encode", 100_000_000) == pytest.approx(10.0)
    assert modeled.codec_seconds("down", "decode", 100_000_000) == pytest.approx(5.0)
    raw = TimingModel("modeled")  # no speeds: raw links cost nothing
    assert raw.codec_seconds("up", "encode", 10**9, 5.0) == 0.0
    measured = TimingModel("measured", up=up)
    assert measured.codec_seconds("up", "encode", 1, measured_s=0.7) == 0.7
    assert measured.codec_seconds("up", "decode", 100_000_000) == pytest.approx(0.5)  # unmeasured
    with pytest.raises(ValueError):
        TimingModel("sometimes")
    with pytest.raises(ValueError):
        modeled.codec_seconds("sideways", "encode", 1)
    old = TimingModel("modeled", 50.0)  # the older two-argument form: one throughput, both links
    assert old.codec_seconds("down", "decode", 100_000_000) == pytest.approx(2.0)


def _imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the package
                pkg = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[: -node.level])
                out.add(f"{pkg}.{node.module}")
            else:
                out.add(node.module)
    return out


SRC = __import__("pathlib").Path(__file__).resolve().parents[1] / "src" / "fedpress"


def test_dependencies_point_downward():
    """transport never imports the engine (the engine imports transport.base); config never
    imports the engine (the engine's run entry point imports config); codec imports neither."""
    for path in (SRC / "transport").glob("*.py"):
        assert not any(m.startswith("fedpress.fl") for m in _imports(path)), path.name
    assert not any(m.startswith("fedpress.fl") for m in _imports(SRC / "config.py"))
    for path in (SRC / "codec").glob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(("fedpress.fl", "fedpress.transport", "fedpress.config"))]
        assert not bad, (path.name, bad)
