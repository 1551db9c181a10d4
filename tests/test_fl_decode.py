"""Decode-time checks on the server: only the codecs the config names, only the model's names,
shapes and dtypes, all checked before any frame is decoded."""

from __future__ import annotations

import numpy as np
import pytest
from test_fl_support import mlp_digits_inputs, quick_config

from fedpress.codec.errors import PayloadError
from fedpress.experiment.build import build_server
from fedpress.fl.codec_adapter import (
    CodecSpec,
    accepted_codecs,
    decode_checked,
    make_decoder,
    make_encoder,
    model_limits,
)
from fedpress.transport.base import ClientResult

RNG = np.random.default_rng(3)
MODEL = {"a.weight": RNG.standard_normal((40, 40)).astype(np.float32),
         "a.bias": RNG.standard_normal(40).astype(np.float32)}


class NoDecode:
    """A decoder that fails the test if a frame would be decoded."""

    def __init__(self, real):
        self.limits = real.limits

    def decode(self, payload):
        raise AssertionError("decoded a payload that should have been refused first")


def test_accept_list_is_what_the_link_policy_routes_to():
    assert accepted_codecs(CodecSpec("grad")) == {"grad", "zstd"}
    assert accepted_codecs(CodecSpec("none")) == {"raw", "zstd"}
    assert accepted_codecs(CodecSpec("lossless")) == {"zstd"}


@pytest.mark.parametrize("what", ["codec", "shape", "dtype", "extra", "missing"])
def test_refused_before_decoding(what):
    tensors = {k: v.copy() for k, v in MODEL.items()}
    spec = CodecSpec("grad", "rel", 1e-2)
    if what == "codec":
        spec = CodecSpec("sz3", "rel", 1e-2)
    elif what == "shape":
        tensors["a.weight"] = tensors["a.weight"].reshape(20, 80)
    elif what == "dtype":
        tensors["a.bias"] = tensors["a.bias"].astype(np.float64)
    elif what == "extra":
        tensors["b.weight"] = np.zeros(3, np.float32)
    else:
        del tensors["a.bias"]
    payload = make_encoder(spec, "c0/up").encode(tensors)
    accept = accepted_codecs(CodecSpec("grad"))
    real = make_decoder(accept=accept, limits=model_limits(MODEL))
    with pytest.raises(PayloadError) as info:
        decode_checked(NoDecode(real), payload, MODEL, accept)
    assert "\n" not in str(info.value)
    # and a well-formed payload of the same link decodes through the same path
    ok = make_encoder(CodecSpec("grad", "rel", 1e-2), "c0/up").encode(MODEL)
    out, _ = decode_checked(real, ok, MODEL, accept)
    assert out.keys() == MODEL.keys()


def test_server_rejects_a_codec_its_config_does_not_name():
    cfg = quick_config("fedbuff", clients=4, strategy__K=2, run__max_updates=6,
                       codec__name="grad", clients__codec_mb_per_s=100)
    server = build_server(cfg, mlp_digits_inputs(clients=4))
    real = server.transport._factory
    params = server.params

    class SendsSz3:
        def run(self, payload, version, keyframe=False):
            up = make_encoder(CodecSpec("sz3"), "c0/up").encode({k: np.zeros_like(v) for k, v in params.items()})
            return ClientResult(0, version, up, 10, 10, 0, 0)

    server.transport._factory = lambda cid: SendsSz3() if cid == 0 else real(cid)
    reasons = []
    write = server.log.write

    def spy(kind, **f):
        if kind == "arrival" and f["client"] == 0:
            reasons.append((f["status"], f.get("reason", "")))
        return write(kind, **f)

    server.log.write = spy
    summary = server.run()
    assert reasons and all(s == "rejected" and "sz3" in r for s, r in reasons)
    assert summary["updates"] == 6
