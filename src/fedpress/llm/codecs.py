"""Routing rules that fit LoRA factors, for the one codec layer.

The engine's default policy sends every tensor of at most 1,024 values losslessly; LoRA factors
of a small model are often that small (SmolLM2's v_proj B is 192 x 4 = 768 values), so under the
default rules half of an adapter would never be compressed. The adapter policy routes every
``*.lora_A`` and ``*.lora_B`` tensor of at least ``small`` values (default 64) to the configured
codec; with ``mode='rel'`` each factor's bound follows its own value range, which matters because A
and B deltas differ in scale by orders of magnitude (B starts at zero). Anything else is lossless.
"""

from __future__ import annotations

from typing import Any

from fedpress.codec.base import available_codecs, codec_parameters, get_codec
from fedpress.codec.routing import Policy, Rule
from fedpress.codec.stream import StreamEncoder
from fedpress.fl.codec_adapter import CodecSpec, TensorEncoder, accepted_codecs, make_encoder


def adapter_policy(codec: str, mode: str = "rel", eb: float = 1e-2, small: int = 64, **params: Any) -> Policy:
    """Policy: LoRA A and B factors (``>= small`` values) through ``codec``, the rest zstd."""
    lossy = dict(params)
    if get_codec(codec, **params).lossy and {"mode", "eb"} <= set(codec_parameters(available_codecs()[codec])):
        lossy.update(mode=mode, eb=eb)
    return Policy([
        Rule("zstd", max_size=small - 1),
        Rule(codec, lossy, name="*.lora_A", float_only=True),
        Rule(codec, lossy, name="*.lora_B", float_only=True),
        Rule("zstd"),
    ])


def adapter_encoder(spec: CodecSpec | None, stream_id: str) -> TensorEncoder:
    """An uplink encoder for adapter tensors: raw/lossless as the engine does, lossy via
    :func:`adapter_policy`."""
    if spec is None or spec.is_raw or spec.name in ("lossless", "zstd"):
        return make_encoder(spec, stream_id)
    return StreamEncoder(adapter_policy(spec.name, spec.mode, spec.eb), stream_id=stream_id)


def adapter_codecs(spec: CodecSpec | None) -> frozenset[str]:
    """The codecs :func:`adapter_encoder` can put in a payload: what the server accepts (any
    other codec in an upload is refused before a frame is decoded)."""
    if spec is None or spec.is_raw or spec.name in ("lossless", "zstd"):
        return accepted_codecs(spec)
    return adapter_policy(spec.name, spec.mode, spec.eb).codec_names()
