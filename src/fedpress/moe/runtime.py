"""Offloaded MoE inference: swap each MoE block's experts for a cache-backed container.

Why replace the experts container and nothing else: attention, routers, norms and the generate
loop stay the model's own (``transformers`` code), so the only difference from the resident
model is where expert weights come from. ``OffloadedExperts.forward`` does the same arithmetic,
in the same order, as the eager forward of ``transformers``' fused experts, so with a lossless
codec greedy generation is token-for-token identical (tested).

Router lookahead: a pre-hook on decoder layer ``l`` applies layer ``l+1``'s post-attention norm
and router to ``l``'s input hidden state, and prefetches the experts it picks while layers
``l`` and ``l+1``'s attention compute (the residual stream changes little between layers).
"""

from __future__ import annotations

import math
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import ExpertCache
from .layout import FUSED, MoeLayer, find_moe_layers, iter_experts
from .store import CodecPlan, ExpertStore


class BudgetError(ValueError):
    """The decoded-expert budget cannot hold even one expert, or is malformed."""


def parse_budget(budget: int | float | str, expert_bytes: int, total_experts: int) -> int:
    """Slots from ``8`` (slots), ``"25%"`` / ``0.25`` (share of all experts) or ``"64MB"`` (bytes)."""
    text = str(budget).strip()
    m = re.fullmatch(r"([0-9.]+)\s*([kKmMgG]i?B|B)", text)
    if m:
        scale = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
        nbytes = float(m.group(1)) * scale[m.group(2).lower()]
        if nbytes < expert_bytes:
            raise BudgetError(
                f"budget {text} is smaller than one decoded expert ({expert_bytes} bytes)"
            )
        return min(int(nbytes // expert_bytes), total_experts)
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
        else:
            value = float(text)
            if value >= 1 and value == int(value):
                slots = int(value)
                if slots < 1:
                    raise BudgetError("budget must be at least one expert slot")
                return min(slots, total_experts)
            share = value
    except ValueError:
        raise BudgetError(f"budget {text!r} is not slots, a share ('25%') or bytes ('64MB')") from None
    slots = math.floor(share * total_experts + 1e-9)
    if slots < 1:
        raise BudgetError(
            f"budget {text} of {total_experts} experts is smaller than one expert"
        )
    return min(slots, total_experts)


class OffloadedExperts(nn.Module):
    """Drop-in for a fused experts container: weights come from the cache on each use."""

    def __init__(self, layer: int, num_experts: int, act_fn: Any, cache: ExpertCache) -> None:
        super().__init__()
        self.layer, self.num_experts, self.act_fn, self.cache = layer, num_experts, act_fn, cache

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            if expert_idx == self.num_experts:
                continue
            w = self.cache.get((self.layer, int(expert_idx)))
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[token_idx]
            gate, up = F.linear(current_state, w["gate_up_proj"]).chunk(2, dim=-1)
            current = self.act_fn(gate) * up
            current = F.linear(current, w["down_proj"])
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current.to(final_hidden_states.dtype))
        return final_hidden_states


class LazyExpert(nn.Module):
    """Drop-in for one expert module of a ``ModuleList`` layout: runs it on cached weights."""

    def __init__(self, template: nn.Module, key: tuple[int, int], cache: ExpertCache) -> None:
        super().__init__()
        self.template = [template.to("meta")]  # a list: not registered, holds no real weights
        self.key, self.cache = key, cache

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        weights = self.cache.get(self.key)
        return torch.func.functional_call(self.template[0], weights, args, kwargs)


@dataclass
class Lookahead:
    """Predicts layer ``nxt``'s experts from the hidden state entering layer ``cur``."""

    nxt: MoeLayer
    cache: ExpertCache
    predicted: int = 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs.get("hidden_states")
        if h is None:
            return
        with torch.no_grad():
            h = h.reshape(-1, h.shape[-1])
            norm = getattr(self.nxt.decoder, "post_attention_layernorm", None)
            x = norm(h) if norm is not None else h
            out = self.nxt.router(x)
            idx = next(t for t in (out if isinstance(out, tuple) else (out,))
                       if not torch.is_floating_point(t))
        keys = [(self.nxt.index, int(e)) for e in torch.unique(idx).tolist()]
        self.predicted += len(keys)
        self.cache.prefetch(keys[: self.cache.slots])


class OffloadRuntime:
    """A model whose experts live in an ``ExpertStore`` and a budgeted ``ExpertCache``."""

    def __init__(self, model: nn.Module, store: ExpertStore, slots: int, policy: str = "lru",
                 prefetch: bool = False, device: Any = "cpu", keep: bool = False) -> None:
        self.model, self.store, self.device = model, store, torch.device(device)
        self.layers = find_moe_layers(model)
        self.cache = ExpertCache(
            lambda key: store.load(key[0], key[1], self.device), slots, policy,
            expert_bytes=store.expert_raw_bytes(),
        )
        self._hooks: list[Any] = []
        self.lookaheads: list[Lookahead] = []
        #: with ``keep`` the resident experts are kept so that ``close`` puts them back (benchmarks)
        self._kept = [(x, x.block.experts) for x in self.layers if x.fused] if keep else []
        for layer in self.layers:
            if layer.fused:
                act = layer.experts.act_fn
                layer.block.experts = OffloadedExperts(layer.index, layer.num_experts, act, self.cache)
                layer.experts = layer.block.experts  # drop the last reference to the weights
            else:
                for e in range(len(layer.experts)):
                    layer.experts[e] = LazyExpert(layer.experts[e], (layer.index, e), self.cache)
        if prefetch:
            for cur, nxt in zip(self.layers, self.layers[1:], strict=False):
                la = Lookahead(nxt, self.cache)
                self.lookaheads.append(la)
                self._hooks.append(cur.decoder.register_forward_pre_hook(la, with_kwargs=True))

    def close(self) -> None:
        """Stop prefetching, drop the cache and (with ``keep``) restore the resident experts."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.cache.close()
        self.cache.clear()
        for layer, experts in self._kept:
            layer.block.experts = experts
        self._kept.clear()


def offload(model: nn.Module, plan: CodecPlan | str, budget: int | float | str = "25%",
            policy: str = "lru", prefetch: bool = False, store_dir: str | Path | None = None,
            device: Any = "cpu") -> OffloadRuntime:
    """Compress ``model``'s experts into a store (memory, or ``store_dir`` memory-mapped), then
    swap in cache-backed containers; the resident expert weights are released."""
    layers = find_moe_layers(model)
    plan = CodecPlan.parse(plan) if not isinstance(plan, CodecPlan) else plan
    expert_bytes = layers[0].expert_numel() * 4
    total = sum(x.num_experts for x in layers)
    slots = parse_budget(budget, expert_bytes, total)
    store = ExpertStore.build(iter_experts(layers), plan, [x.index for x in layers], store_dir)
    return OffloadRuntime(model, store, slots, policy, prefetch, device)


def peak_rss_bytes() -> int:
    """The process's peak resident set (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding through the model's own ``generate`` (cache on, no sampling)."""
    with torch.no_grad():
        return model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=0,
        )


def measure_generation(model: nn.Module, prompts: list[torch.Tensor], max_new_tokens: int,
                       runtime: OffloadRuntime | None = None) -> dict[str, Any]:
    """Generate from each prompt; per-token bytes moved, decode/copy time, hit rate, tokens/s."""
    if runtime is not None:
        runtime.cache.reset_stats()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tokens, outputs = 0, []
    t0 = time.perf_counter()
    for ids in prompts:
        out = greedy_generate(model, ids, max_new_tokens)
        tokens += out.shape[1] - ids.shape[1]
        outputs.append(out[0, ids.shape[1]:].tolist())
    wall = time.perf_counter() - t0
    res: dict[str, Any] = {"tokens": tokens, "seconds": wall, "tokens_per_s": tokens / max(wall, 1e-9),
                           "peak_rss_bytes": peak_rss_bytes(), "outputs": outputs}
    if torch.cuda.is_available():
        res["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    if runtime is not None:
        runtime.cache.drain()
        s = runtime.cache.stats
        res.update(
            cache=s.as_dict(),
            bytes_per_token=s.bytes_moved / max(tokens, 1),
            decode_ms_per_token=1e3 * s.decode_s / max(tokens, 1),
            copy_ms_per_token=1e3 * s.copy_s / max(tokens, 1),
            stall_ms_per_token=1e3 * s.stall_s / max(tokens, 1),
            hit_rate=s.hit_rate,
            peak_cache_bytes=s.peak_bytes,
            slots=runtime.cache.slots,
        )
    return res


__all__ = ["FUSED", "BudgetError", "OffloadRuntime", "OffloadedExperts", "measure_generation",
           "offload", "parse_budget"]
