"""LoRA adapters as the engine's tensors: attach with ``peft``, read and write A and B as numpy.

Only adapter tensors travel. Names are short and stable across processes:
``<module path>.lora_A`` (shape ``r x d_in``) and ``<module path>.lora_B`` (``d_out x r``), e.g.
``model.layers.0.self_attn.q_proj.lora_A``. With ``freeze_a`` the A factors stay at their seeded
initial values on every client (identical, since the seed is shared) and only B trains and travels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedpress.fl.types import Tensors

_PREFIX = "base_model.model."
_SUFFIX = ".default.weight"


class AdapterError(ValueError):
    """An adapter whose names, ranks, shapes or values do not fit the model (one-line message)."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters: rank, scaling ``alpha / rank``, target module names, dropout."""

    rank: int = 4
    alpha: float = 8.0
    targets: Sequence[str] = field(default=("q_proj", "v_proj"))
    dropout: float = 0.0
    freeze_a: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise AdapterError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise AdapterError("LoRA needs at least one target module")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def attach_lora(model: Any, spec: LoraSpec, seed: int = 0) -> Any:
    """Wrap ``model`` in a ``peft`` LoRA model; the A init is seeded so every client agrees."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.targets),
        lora_dropout=spec.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        peft_model = get_peft_model(model, cfg)
    except ValueError as e:
        raise AdapterError(f"cannot attach LoRA to {list(spec.targets)}: {str(e).splitlines()[0]}") from None
    finally:
        torch.random.set_rng_state(gen_state)
    if spec.freeze_a:
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return peft_model


def _short(name: str) -> str:
    if name.startswith(_PREFIX):
        name = name[len(_PREFIX) :]
    if name.endswith(_SUFFIX):
        name = name[: -len(_SUFFIX)]
    return name


def adapter_parameters(peft_model: Any, trainable_only: bool = False) -> dict[str, torch.nn.Parameter]:
    """Short name -> LoRA parameter, in module order (A before B of each module)."""
    out: dict[str, torch.nn.Parameter] = {}
    for name, p in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            if trainable_only and not p.requires_grad:
                continue
            out[_short(name)] = p
    return out


def get_adapter(peft_model: Any, trainable_only: bool = True) -> Tensors:
    """A float32 numpy copy of the adapter tensors that travel (only B when A is frozen)."""
    return {
        k: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, p in adapter_parameters(peft_model, trainable_only).items()
    }


def check_adapter(tensors: Tensors, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`AdapterError` unless names and shapes match ``shapes`` and values are finite."""
    if tensors.keys() != shapes.keys():
        diff = sorted(set(tensors) ^ set(shapes))
        raise AdapterError(f"adapter tensor names differ from the model's: {diff[:3]}")
    for k, v in tensors.items():
        got, want = tuple(np.shape(v)), tuple(shapes[k])
        if got != want:
            rank_only = len(got) == 2 and (
                (k.endswith("lora_A") and got[1] == want[1]) or (k.endswith("lora_B") and got[0] == want[0])
            )
            what = "rank" if rank_only else "shape"
            raise AdapterError(f"{k}: adapter {what} mismatch, got shape {got}, model has {want}")
        if not np.isfinite(v).all():
            raise AdapterError(f"{k}: adapter holds NaN/Inf")


def adapter_shapes(peft_model: Any, trainable_only: bool = True) -> dict[str, tuple[int, ...]]:
    """Short name -> shape of the adapter tensors that travel."""
    return {k: tuple(p.shape) for k, p in adapter_parameters(peft_model, trainable_only).items()}


def set_adapter(peft_model: Any, tensors: Tensors) -> None:
    """Copy adapter tensors (all, or only the trainable ones) into the model after checking them."""
    params = adapter_parameters(peft_model)
    if tensors.keys() != params.keys():
        params = adapter_parameters(peft_model, trainable_only=True)
    check_adapter(tensors, {k: tuple(p.shape) for k, p in params.items()})
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)))


def module_pairs(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(module, A name, B name)`` for every adapted module in ``names`` order."""
    mods = [n[: -len(".lora_A")] for n in names if n.endswith(".lora_A")]
    return [(m, f"{m}.lora_A", f"{m}.lora_B") for m in mods]
