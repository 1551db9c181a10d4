"""``cnn``: a small CNN mixing 3x3, 5x5 and 1x1 kernels (~78k parameters, ~6M MACs at 28x28).

The kernel mix matters to the codecs (kernel-structured contexts see all three shapes); the
early pooling keeps a 28x28 training step cheap on two CPU cores. Adaptive pooling makes the
same network work on 8x8 digits, 28x28 MNIST and 32x32 CIFAR.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import conv_norm_relu
from .registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """conv3x3(16) -> pool -> conv5x5(32) -> pool -> conv3x3(64) -> conv3x3(64) -> conv1x1(128)
    -> global average pool -> linear (each conv followed by norm and ReLU)."""

    def __init__(self, in_channels: int, num_classes: int, norm: str = "bn") -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_norm_relu(in_channels, 16, 3, norm),
            nn.MaxPool2d(2, ceil_mode=True),
            conv_norm_relu(16, 32, 5, norm),
            nn.MaxPool2d(2, ceil_mode=True),
            conv_norm_relu(32, 64, 3, norm),
            conv_norm_relu(64, 64, 3, norm),
            conv_norm_relu(64, 128, 1, norm),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


@register_model("cnn")
def build_cnn(in_channels: int, num_classes: int, image_size: int, norm: str = "bn") -> SmallCNN:
    if image_size < 4:
        raise ValueError(f"cnn needs image_size >= 4 (two 2x poolings), got {image_size}")
    return SmallCNN(in_channels, num_classes, norm=norm)


class FedAvgCNN(nn.Module):
    """The CNN of McMahan et al. (2017), the classic FL benchmark model: conv5x5(32) -> pool ->
    conv5x5(64) -> pool -> linear(512) -> linear; ReLU, no normalisation layers."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        )
        side = math.ceil(math.ceil(image_size / 2) / 2)  # two ceil-mode 2x poolings
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn-fedavg")
def build_cnn_fedavg(in_channels: int, num_classes: int, image_size: int) -> FedAvgCNN:
    if image_size < 4:
        raise ValueError(f"cnn-fedavg needs image_size >= 4 (two 2x poolings), got {image_size}")
    return FedAvgCNN(in_channels, num_classes, image_size)
