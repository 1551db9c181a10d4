"""``mlp``: flatten -> two ReLU hidden layers -> linear; the no-convolution baseline."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["MLP"]


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, int] = (256, 128)
                 ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden[0]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("mlp")
def build_mlp(in_channels: int, num_classes: int, image_size: int,
              hidden: tuple[int, int] = (256, 128)) -> MLP:
    return MLP(in_channels * image_size * image_size, num_classes, hidden=hidden)
