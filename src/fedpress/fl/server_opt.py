"""Server optimizers: how an aggregated delta moves the global model (Reddi et al. 2021).

The aggregated delta ``d`` (``w_after - w_before`` convention) is a descent direction, so every
rule *adds* it: ``sgd`` is ``w + eta_g d`` (plain FedAvg with ``eta_g = 1``), ``momentum`` is
FedAvgM, ``adam`` is FedAdam.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .types import Tensors


class ServerOptimizer(ABC):
    def __init__(self, eta_g: float) -> None:
        if not eta_g > 0:
            raise ValueError(f"server learning rate eta_g must be > 0, got {eta_g}")
        self.eta_g = float(eta_g)

    @abstractmethod
    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        """Return new params (a new dict, params' dtypes); ``params`` is not modified."""


class ServerSGD(ServerOptimizer):
    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        return {
            k: (v.astype(np.float64) + self.eta_g * delta[k]).astype(v.dtype)
            for k, v in params.items()
        }


class ServerMomentum(ServerOptimizer):
    """FedAvgM: ``m <- beta m + d``, ``w <- w + eta_g m``."""

    def __init__(self, eta_g: float, beta1: float = 0.9) -> None:
        super().__init__(eta_g)
        self.beta = float(beta1)
        self.m: dict[str, np.ndarray] = {}

    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        out = {}
        for k, v in params.items():
            m = self.m.get(k)
            m = np.asarray(delta[k], np.float64).copy() if m is None else self.beta * m + delta[k]
            self.m[k] = m
            out[k] = (v.astype(np.float64) + self.eta_g * m).astype(v.dtype)
        return out


class ServerAdam(ServerOptimizer):
    """FedAdam: Adam moments of the aggregated delta, ``eps`` is the adaptivity ``tau``."""

    def __init__(self, eta_g: float, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__(eta_g)
        self.b1, self.b2, self.eps = float(beta1), float(beta2), float(eps)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        out = {}
        for k, w in params.items():
            d = np.asarray(delta[k], np.float64)
            m = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * d
            v = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * d * d
            self.m[k], self.v[k] = m, v
            out[k] = (w.astype(np.float64) + self.eta_g * m / (np.sqrt(v) + self.eps)).astype(w.dtype)
        return out


def make_server_optimizer(
    name: str, eta_g: float, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3
) -> ServerOptimizer:
    if name == "sgd":
        return ServerSGD(eta_g)
    if name == "momentum":
        return ServerMomentum(eta_g, beta1)
    if name == "adam":
        return ServerAdam(eta_g, beta1, beta2, eps)
    raise ValueError(f"unknown server optimizer {name!r}; known: adam, momentum, sgd")
