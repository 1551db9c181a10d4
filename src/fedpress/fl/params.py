"""Moving model state between torch modules and the engine's numpy tensors.

Only floating-point state entries travel (weights, biases, BatchNorm running statistics);
integer buffers such as ``num_batches_tracked`` stay with the local module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .types import Tensors


def get_params(model: nn.Module) -> Tensors:
    """A copy of the module's floating-point state as float arrays, in state-dict order."""
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in model.state_dict().items()
        if torch.is_floating_point(v)
    }


def set_params(model: nn.Module, params: Tensors) -> None:
    """Copy ``params`` into the module in place; names and shapes must match."""
    state = model.state_dict()
    with torch.no_grad():
        for k, v in params.items():
            if k not in state:
                raise KeyError(f"model has no state entry {k!r}")
            dst = state[k]
            if tuple(dst.shape) != tuple(np.shape(v)):
                raise ValueError(f"{k}: shape {np.shape(v)} does not match model {tuple(dst.shape)}")
            dst.copy_(torch.from_numpy(np.ascontiguousarray(v)))


def num_bytes(tensors: Tensors) -> int:
    return sum(int(np.asarray(v).nbytes) for v in tensors.values())
