"""Adapter routing: every LoRA factor reaches the lossy codec and keeps its pointwise bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder
from fedpress.fl.codec_adapter import CodecSpec
from fedpress.llm.codecs import adapter_encoder, adapter_policy


def _adapter(rng):
    # SmolLM2-like shapes at rank 4: q_proj 576x576, v_proj 576 -> 192
    return {
        "model.layers.0.self_attn.q_proj.lora_A": rng.normal(0, 0.02, (4, 576)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.lora_B": rng.normal(0, 1e-4, (576, 4)).astype(np.float32),
        "model.layers.0.self_attn.v_proj.lora_A": rng.normal(0, 0.02, (4, 576)).astype(np.float32),
        "model.layers.0.self_attn.v_proj.lora_B": rng.normal(0, 1e-4, (192, 4)).astype(np.float32),
    }


def test_small_b_factor_is_routed_to_the_lossy_codec():
    x = np.zeros((192, 4), np.float32)
    name = "model.layers.0.self_attn.v_proj.lora_B"
    assert type(Policy.default("sz3").route(name, x)).__name__ != type(adapter_policy("sz3").route(name, x)).__name__
    assert type(adapter_policy("sz3").route(name, x)) is type(Policy.default("sz3").route("w", np.zeros((64, 64), np.float32)))


@pytest.mark.parametrize("codec", ["sz3", "sz3-nopred", "grad", "fast"])
def test_adapter_round_trip_respects_relative_bound(codec):
    rng = np.random.default_rng(0)
    eb = 1e-2
    enc = adapter_encoder(CodecSpec(codec, "rel", eb), "c0/up")
    dec = StreamDecoder()
    for _ in range(2):  # two rounds: stateful codecs use the first as context
        t = _adapter(rng)
        payload = enc.encode(t)
        out = dec.decode(payload)
        raw = sum(v.nbytes for v in t.values())
        assert len(payload) < raw
        for k, v in t.items():
            bound = eb * float(v.max() - v.min())
            assert np.abs(out[k].astype(np.float64) - v).max() <= bound * (1 + 1e-6)
