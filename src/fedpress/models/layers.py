"""Small building blocks shared by the models."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_norm_relu", "make_norm"]


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"bn"``: BatchNorm2d; ``"gn"``: GroupNorm with up to 8 groups (batch-size independent,
    the usual choice under strong non-IID splits)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


def conv_norm_relu(cin: int, cout: int, kernel: int, norm: str, stride: int = 1) -> nn.Sequential:
    """Same-padding convolution (no bias: the norm has one) -> norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        make_norm(norm, cout),
        nn.ReLU(inplace=True),
    )
