"""Find the MoE blocks of a Hugging Face causal LM and read their experts, in either layout.

Why a layout layer: ``transformers`` 5 holds a layer's experts as two fused 3-D parameters
(``experts.gate_up_proj[E, 2I, H]``, ``experts.down_proj[E, H, I]``, called as
``experts(hidden, top_k_index, top_k_weights)``) for Qwen2/3-MoE, Mixtral, OLMoE, DeepSeek-V3,
Phi-MoE...; older versions and custom models keep one module per expert in an ``nn.ModuleList``.
The runtime and the study see one thing: per (layer, expert) a dict of named float tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: config keys that hold the number of routed experts, by model family
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
FUSED = ("gate_up_proj", "down_proj")


class NotMoeError(ValueError):
    """The model (or model directory) has no mixture-of-experts layers."""


def check_moe_config(model_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json`` and refuse a dense model before any weights are loaded."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    n = max((int(cfg.get(k) or 0) for k in EXPERT_KEYS), default=0)
    if n <= 1:
        raise NotMoeError(
            f"{model_dir} is not a mixture-of-experts model (model_type {cfg.get('model_type')!r}, "
            f"no {'/'.join(EXPERT_KEYS)} > 1)"
        )
    return cfg


@dataclass
class MoeLayer:
    """One MoE block: its decoder-layer index, the block, its experts container and router."""

    index: int
    decoder: Any
    block: Any
    experts: Any
    router: Any
    fused: bool

    @property
    def num_experts(self) -> int:
        return int(self.experts.gate_up_proj.shape[0]) if self.fused else len(self.experts)

    def expert_tensors(self, e: int) -> dict[str, np.ndarray]:
        """Expert ``e``'s weights as float32 numpy arrays (copies)."""
        if self.fused:
            return {k: getattr(self.experts, k)[e].detach().float().cpu().numpy().copy() for k in FUSED}
        return {k: v.detach().float().cpu().numpy().copy() for k, v in self.experts[e].state_dict().items()}

    def set_expert(self, e: int, tensors: dict[str, Any]) -> None:
        """Write expert ``e``'s weights back into a resident model (used by the study)."""
        import torch

        with torch.no_grad():
            if self.fused:
                for k in FUSED:
                    p = getattr(self.experts, k)
                    p[e].copy_(torch.as_tensor(tensors[k], dtype=p.dtype))
            else:
                for k, p in self.experts[e].state_dict().items():
                    p.copy_(torch.as_tensor(tensors[k], dtype=p.dtype))

    def expert_numel(self) -> int:
        return sum(a.size for a in self.expert_tensors(0).values())


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a causal LM (``model.model.layers`` for every family we know)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise NotMoeError(f"{type(model).__name__} has no decoder layers at .model.layers")
    return list(layers)


def find_moe_layers(model: Any) -> list[MoeLayer]:
    """Every decoder layer whose MLP is a sparse MoE block; ``NotMoeError`` if there is none."""
    import torch
    import torch.nn as nn

    out = []
    for i, layer in enumerate(decoder_layers(model)):
        block = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
        experts = getattr(block, "experts", None)
        router = getattr(block, "gate", None) or getattr(block, "router", None)
        if experts is None or router is None:
            continue
        if all(isinstance(getattr(experts, k, None), torch.Tensor) and getattr(experts, k).dim() == 3
               for k in FUSED):
            out.append(MoeLayer(i, layer, block, experts, router, fused=True))
        elif isinstance(experts, nn.ModuleList) and len(experts) > 1:
            out.append(MoeLayer(i, layer, block, experts, router, fused=False))
    if not out:
        raise NotMoeError(f"{type(model).__name__} has no mixture-of-experts layers")
    return out


def layer_group(position: int, count: int) -> str:
    """``shallow``, ``middle`` or ``deep``: thirds of the MoE layers, by position among them."""
    third = position * 3 // max(count, 1)
    return ("shallow", "middle", "deep")[min(third, 2)]


def iter_experts(layers: list[MoeLayer]) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    for layer in layers:
        for e in range(layer.num_experts):
            yield layer.index, e, layer.expert_tensors(e)
