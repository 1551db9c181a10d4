"""Core value types of the federated engine.

Delta convention (used everywhere in ``fedpress.fl``): a client's update tensors are
``delta = w_after - w_before``, the locally trained model minus the model the client received.
Trace recorders elsewhere use the pseudo-gradient ``g = w_before - w_after = -delta``; convert
with :func:`to_pseudo_gradient`, never by assuming a sign.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: A model or an update: tensor name -> array (float entries only).
Tensors = dict[str, np.ndarray]


@dataclass
class Update:
    """One client's contribution, as the server holds it after decoding the uplink payload.

    ``tensors`` are deltas (``w_after - w_before``). ``num_samples`` is the size of the client's
    shard (the FedAvg weight), ``staleness`` is set by the server on arrival as the current
    global version minus ``base_version``.
    """

    client_id: int
    base_version: int
    tensors: Tensors
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    staleness: int = 0
    arrived_at: float = 0.0


@dataclass
class GlobalState:
    """The global model (float tensors) and its version, bumped on every global update."""

    params: Tensors
    version: int = 0


def to_pseudo_gradient(delta: Tensors) -> Tensors:
    """``g = w_before - w_after`` from a delta ``w_after - w_before`` (the trace convention)."""
    return {k: np.negative(v) for k, v in delta.items()}


def from_pseudo_gradient(grad: Tensors) -> Tensors:
    """Inverse of :func:`to_pseudo_gradient`."""
    return {k: np.negative(v) for k, v in grad.items()}


def add_delta(params: Tensors, delta: Tensors) -> Tensors:
    """``params + delta`` as a new dict in the params' dtypes (the client model on the server)."""
    return {k: (v + delta[k]).astype(v.dtype, copy=False) for k, v in params.items()}
