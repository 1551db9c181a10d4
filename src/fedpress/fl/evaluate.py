"""Accuracy and loss of the global model on a held-out set."""

from __future__ import annotations

import torch
from torch import nn

from .params import set_params
from .types import Tensors


class Evaluator:
    """Evaluates parameter dicts with one reusable module (no grad, eval mode, batched)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000):
        self.model = model
        self.x = x
        self.y = y
        self.batch_size = batch_size

    def __call__(self, params: Tensors) -> dict[str, float]:
        set_params(self.model, params)
        self.model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        loss, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.y), self.batch_size):
                xb, yb = self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
                out = self.model(xb)
                loss += float(loss_fn(out, yb))
                correct += int((out.argmax(1) == yb).sum())
        n = max(len(self.y), 1)
        return {"accuracy": correct / n, "loss": loss / n}
