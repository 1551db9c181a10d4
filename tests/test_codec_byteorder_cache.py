"""Byte order, the codec instance cache and Ctrl-C inside the entropy decoder."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fedpress.codec import base
from fedpress.codec.base import available_codecs, get_codec
from fedpress.codec.entropy import AnsReader, AnsWriter, _model
from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder, StreamEncoder

POINTWISE = sorted(n for n, c in available_codecs().items() if c.pointwise_bound)


def max_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0.0))


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_bound_holds_for_big_endian(name: str, dtype: str) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((32, 40)) * 100).astype(dtype)
    abs_eb = 1e-3 * float(x.astype(np.float64).max() - x.astype(np.float64).min())
    for tensors in ({"w": x}, {"w": np.full((32, 40), 7.25, dtype=dtype)}):
        enc = StreamEncoder(Policy.uniform(name, mode="rel", eb=1e-3))
        out = StreamDecoder().decode(enc.encode(tensors))["w"]
        assert out.dtype.isnative and out.dtype == np.dtype(dtype).newbyteorder("=")
        src = tensors["w"]
        bound = 1e-3 * float(src.astype(np.float64).max() - src.astype(np.float64).min())
        assert max_err(src, out) <= bound
        if bound == 0:  # a constant tensor decodes exactly (it used to decode to about 0)
            assert np.array_equal(out.astype(np.float64), src.astype(np.float64))
    # the codec called directly (no stream) normalises too
    codec = get_codec(name, mode="abs", eb=abs_eb)
    state = {} if codec.stateful else None
    frame = codec.encode(x, state)
    y = get_codec(name, mode="abs", eb=abs_eb).decode(frame, x.shape, x.dtype, {} if state is not None else None)
    assert max_err(x, y) <= abs_eb


def test_big_endian_lossless_roundtrip_is_exact() -> None:
    x = np.arange(-20, 20, dtype=">i4").reshape(4, 10)
    out = StreamDecoder().decode(StreamEncoder(Policy.lossless()).encode({"ids": x}))["ids"]
    assert out.dtype == np.dtype("int32") and np.array_equal(out, x)


def test_get_codec_caches_instances(monkeypatch) -> None:
    a = get_codec("grad", mode="rel", eb=1e-2)
    assert get_codec("grad", eb=1e-2, mode="rel") is a  # parameter order does not matter
    assert get_codec("grad", mode="rel", eb=1e-3) is not a
    # True and 1 build different codecs
    assert get_codec("fast", contexts=True).contexts is True
    assert get_codec("fast", contexts=1).contexts is True
    assert get_codec("fast", contexts=True) is not get_codec("fast", contexts=1)
    # qsgd owns a random stream: never shared
    assert get_codec("qsgd", seed=3) is not get_codec("qsgd", seed=3)
    # no signature inspection once a codec is cached
    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(1) or real(*a, **k))
    payload = StreamEncoder(Policy.uniform("fast")).encode(
        {f"t{i}": np.ones(10, np.float32) * i for i in range(50)})
    StreamDecoder().decode(payload)
    StreamDecoder().decode(payload)
    assert calls == []


def test_cache_is_bounded() -> None:
    for i in range(base._MAX_INSTANCES + 10):
        get_codec("linear", mode="abs", eb=1.0 + i)
    assert len(base._INSTANCES) <= base._MAX_INSTANCES


def test_keyboard_interrupt_propagates_from_the_entropy_decoder() -> None:
    w = AnsWriter()
    w.write(np.arange(10, dtype=np.int32) % 7, _model.Uniform(8))
    r = AnsReader(w.finish())

    class Interrupting:
        def decode(self, model, n):
            raise KeyboardInterrupt

    r._coder = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        r.read(10, _model.Uniform(8))
