"""Pre-flight checks: refuse bad input with one line before any weights are loaded.

A dense model, a budget below one expert, an unknown codec or a bound the fixed-rate codec
cannot hold are all visible from ``config.json`` and the config alone, so the user learns
about them in a second instead of after a minute of loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedpress.codec.errors import CodecError

from .layout import check_moe_config
from .runtime import parse_budget
from .weight_codec import CodecSpec

#: config keys of the per-expert intermediate size, by family
INTER_KEYS = ("moe_intermediate_size", "expert_intermediate_size", "intermediate_size")
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def expert_shape(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(hidden size, per-expert intermediate size, number of MoE layers) from a config dict."""
    inter = next(int(cfg[k]) for k in INTER_KEYS if cfg.get(k))
    layers = int(cfg.get("num_hidden_layers", 1)) - len(cfg.get("mlp_only_layers") or [])
    layers -= int(cfg.get("first_k_dense_replace") or 0)
    return int(cfg["hidden_size"]), inter, max(layers, 1)


def check_codec_can_hold(spec: CodecSpec) -> None:
    """A relative bound finer than 16-bit fixed-rate levels, or forced bits too few, cannot hold."""
    if spec.name != "fixedrate":
        return
    c = spec.codec()
    if c.bound.mode != "rel":
        return  # an absolute bound depends on the weights: checked when the store is built
    bits = c.bits or 16
    if 2 * c.bound.value * ((1 << bits) - 1) < 1:
        raise CodecError(
            f"codec {spec}: a relative bound of {c.bound.value:g} cannot hold with {bits}-bit "
            f"levels (needs eb >= {1 / (2 * ((1 << bits) - 1)):.3g})"
        )


def preflight(model_dir: str | Path, plan: dict[str, Any], budget: str) -> dict[str, Any]:
    """Check model directory, codecs and budget; returns the expert size and slot count."""
    specs = [CodecSpec.parse(v) for k, v in plan.items() if k != "layers" and v]
    specs += [CodecSpec.parse(v) for v in (plan.get("layers") or {}).values()]
    for s in specs:
        check_codec_can_hold(s)
    cfg = check_moe_config(model_dir)
    hidden, inter, layers = expert_shape(cfg)
    experts = max(int(cfg.get(k) or 0) for k in EXPERT_KEYS)
    expert_bytes = 3 * hidden * inter * 4
    slots = parse_budget(budget, expert_bytes, experts * layers)
    return {"expert_bytes": expert_bytes, "total_experts": experts * layers, "slots": slots}
