"""Name -> model builder registry, so configs and the CLI can pick a model by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["MODELS", "available_models", "build_model", "count_parameters", "register_model"]

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding ``builder(in_channels, num_classes, image_size, **kw)`` as ``name``."""

    def deco(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = builder
        return builder

    return deco


def available_models() -> list[str]:
    """Registered model names."""
    return sorted(MODELS)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model; seed with ``torch.manual_seed`` for repeatability.

    Parameters
    ----------
    name : one of :func:`available_models`.
    in_channels : image channels (1 for (fashion-)MNIST/digits, 3 for CIFAR).
    num_classes : size of the output layer.
    image_size : input height = width (8, 28, 32, ...).
    **kwargs : model-specific options (e.g. ``norm="gn"`` for ``cnn``).
    """
    key = name.strip().lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    for arg, val in (("in_channels", in_channels), ("num_classes", num_classes),
                     ("image_size", image_size)):
        if int(val) < 1:
            raise ValueError(f"{arg} must be >= 1, got {val}")
    return MODELS[key](int(in_channels), int(num_classes), int(image_size), **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
