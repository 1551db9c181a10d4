"""Model registry: shapes on every input size we use, sizes, determinism, kernel mix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedpress.models import available_models, build_model, count_parameters

SIZES = [(1, 8), (1, 28), (3, 32)]


@pytest.mark.parametrize("name", ["cnn", "cnn-fedavg", "mlp", "resnet8", "resnet18"])
@pytest.mark.parametrize(("channels", "size"), SIZES)
def test_forward_shapes(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels, 10, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_registry() -> None:
    assert set(available_models()) >= {"cnn", "mlp", "resnet8", "resnet18"}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 1, 10, 28)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", 1, 0, 28)


def test_parameter_counts() -> None:
    assert 50_000 <= count_parameters(build_model("cnn", 1, 10, 28)) <= 200_000
    assert 50_000 <= count_parameters(build_model("resnet8", 1, 10, 28)) <= 120_000
    assert count_parameters(build_model("resnet18", 3, 10, 32)) == 11_173_962  # CIFAR ResNet-18
    assert count_parameters(build_model("mlp", 1, 10, 28)) == (784 * 256 + 256) + (
        256 * 128 + 128) + (128 * 10 + 10)


def _kernels(model: nn.Module) -> set[int]:
    return {m.kernel_size[0] for m in model.modules() if isinstance(m, nn.Conv2d)}


def test_kernel_mix_and_norms() -> None:
    cnn = build_model("cnn", 1, 10, 28)
    assert _kernels(cnn) == {1, 3, 5}
    assert any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    gn = build_model("cnn", 1, 10, 28, norm="gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert _kernels(build_model("resnet8", 3, 10, 32)) == {1, 3}
    assert "layers.1.shortcut.0.weight" in build_model("resnet8", 3, 10, 32).state_dict()


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet8"])
def test_deterministic_and_trainable(name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(name, 1, 10, 28).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(0)
    model = build_model(name, 1, 10, 28)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cnn_fedavg_is_mcmahans_model() -> None:
    m = build_model("cnn-fedavg", 1, 10, 28)
    assert count_parameters(m) == 1_663_370  # as in McMahan et al. (2017) for MNIST
    assert not any(isinstance(x, nn.BatchNorm2d | nn.GroupNorm) for x in m.modules())
