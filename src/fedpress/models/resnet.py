"""CIFAR-style ResNets (He et al. 2016): ``resnet8`` (16/32/64 wide, fast on CPU) and the
standard CIFAR ``resnet18`` (BasicBlock [2, 2, 2, 2], 64..512 wide, ~11.2M parameters).

Written here because torchvision is not a dependency. The stem is a single 3x3 stride-1 conv
(no max-pool), so small images keep their resolution; downsampling uses 1x1 stride-2 shortcut
convs, which give the codecs 1x1 kernels to handle.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 -> stages of BasicBlocks (first block of stage i>0 has stride 2) -> GAP ->
    linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...],
                 blocks: tuple[int, ...]) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


@register_model("resnet8")
def build_resnet8(in_channels: int, num_classes: int, image_size: int) -> ResNet:
    """Stem + one BasicBlock per stage at widths 16/32/64 (8 weighted layers, ~78k params)."""
    return ResNet(in_channels, num_classes, widths=(16, 32, 64), blocks=(1, 1, 1))


@register_model("resnet18")
def build_resnet18(in_channels: int, num_classes: int, image_size: int) -> ResNet:
    """Standard CIFAR ResNet-18."""
    return ResNet(in_channels, num_classes, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2))
