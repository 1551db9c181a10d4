"""Server optimizers: how an aggregated delta moves the global model (Reddi et al. 2021).

The aggregated delta ``d`` (``w_after - w_before`` convention) is a descent direction, so every
rule *adds* it: ``sgd`` is ``w + eta_g d`` (plain FedAvg with ``eta_g = 1``), ``momentum`` is
FedAvgM, ``adam``/``yogi``/``adagrad`` are FedAdam/FedYogi/FedAdagrad ("Adaptive Federated
Optimization", Reddi et al., ICLR 2021, Algorithm 2)::

    m <- beta1 m + (1 - beta1) d
    v <- v + d^2                                   (adagrad)
    v <- v - (1 - beta2) d^2 sign(v - d^2)         (yogi)
    v <- beta2 v + (1 - beta2) d^2                 (adam)
    w <- w + eta_g m / (sqrt(v) + tau)

with ``m`` and ``v`` starting at zero (as Flower does; no bias correction, as in the paper).
Each rule has its own defaults (:data:`DEFAULTS`): the adaptive ones take steps of about
``eta_g`` per weight whatever the delta's scale, so they need ``eta_g`` near 1e-2, not 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .types import Tensors

#: per-rule defaults: eta_g, beta1, beta2, tau (Reddi et al. 2021: tau 1e-3, eta_g ~ 1e-2;
#: FedAvgM with eta_g = 1 - beta1 takes FedAvg's step once the momentum has built up)
DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"eta_g": 1.0, "beta1": 0.0, "beta2": 0.0, "eps": 0.0},
    "momentum": {"eta_g": 0.1, "beta1": 0.9, "beta2": 0.0, "eps": 0.0},
    "adam": {"eta_g": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3},
    "yogi": {"eta_g": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3},
    "adagrad": {"eta_g": 1e-2, "beta1": 0.9, "beta2": 0.0, "eps": 1e-3},
}


def _copy(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64, copy=True) for k, v in d.items()}


class ServerOptimizer(ABC):
    """Moves the global model by an aggregated delta; keeps its own state between steps."""

    name = ""

    def __init__(self, eta_g: float) -> None:
        if not eta_g > 0:
            raise ValueError(f"server learning rate eta_g must be > 0, got {eta_g}")
        self.eta_g = float(eta_g)

    @abstractmethod
    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        """Return new params (a new dict, params' dtypes); ``params`` is not modified."""

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's moments (float64 arrays per tensor name)."""
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        return None


class ServerSGD(ServerOptimizer):
    """``w <- w + eta_g d``."""

    name = "sgd"

    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        return {
            k: (v.astype(np.float64) + self.eta_g * delta[k]).astype(v.dtype)
            for k, v in params.items()
        }


class ServerMomentum(ServerOptimizer):
    """FedAvgM: ``m <- beta m + d``, ``w <- w + eta_g m``."""

    name = "momentum"

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

    def state_dict(self) -> dict[str, Any]:
        return {"m": _copy(self.m)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.m = _copy(sd["m"])


class _Adaptive(ServerOptimizer):
    """Shared shape of FedAdam, FedYogi and FedAdagrad; subclasses define the ``v`` update."""

    def __init__(self, eta_g: float, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__(eta_g)
        if not eps > 0:
            raise ValueError(f"adaptivity tau (eps) must be > 0, got {eps}")
        self.b1, self.b2, self.eps = float(beta1), float(beta2), float(eps)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    @abstractmethod
    def _second(self, v: np.ndarray | float, d2: np.ndarray) -> np.ndarray: ...

    def step(self, params: Tensors, delta: dict[str, np.ndarray]) -> Tensors:
        out = {}
        for k, w in params.items():
            d = np.asarray(delta[k], np.float64)
            m = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * d
            v = self._second(self.v.get(k, 0.0), d * d)
            self.m[k], self.v[k] = m, v
            out[k] = (w.astype(np.float64) + self.eta_g * m / (np.sqrt(v) + self.eps)).astype(w.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"m": _copy(self.m), "v": _copy(self.v)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.m, self.v = _copy(sd["m"]), _copy(sd["v"])


class ServerAdam(_Adaptive):
    """FedAdam: ``v <- beta2 v + (1 - beta2) d^2``."""

    name = "adam"

    def _second(self, v: np.ndarray | float, d2: np.ndarray) -> np.ndarray:
        return self.b2 * v + (1 - self.b2) * d2


class ServerYogi(_Adaptive):
    """FedYogi: ``v <- v - (1 - beta2) d^2 sign(v - d^2)`` (v grows only where needed)."""

    name = "yogi"

    def _second(self, v: np.ndarray | float, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.b2) * d2 * np.sign(v - d2)


class ServerAdagrad(_Adaptive):
    """FedAdagrad: ``v <- v + d^2`` (``beta2`` unused)."""

    name = "adagrad"

    def _second(self, v: np.ndarray | float, d2: np.ndarray) -> np.ndarray:
        return v + d2


_RULES: dict[str, type[ServerOptimizer]] = {
    c.name: c for c in (ServerSGD, ServerMomentum, ServerAdam, ServerYogi, ServerAdagrad)
}


def available_server_optimizers() -> list[str]:
    return sorted(_RULES)


def make_server_optimizer(
    name: str,
    eta_g: float | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
    eps: float | None = None,
) -> ServerOptimizer:
    """Build a server optimizer; a parameter left ``None`` takes the rule's default."""
    if name not in _RULES:
        raise ValueError(
            f"unknown server optimizer {name!r}; known: {', '.join(available_server_optimizers())}"
        )
    d = DEFAULTS[name]
    eta = d["eta_g"] if eta_g is None else eta_g
    b1 = d["beta1"] if beta1 is None else beta1
    b2 = d["beta2"] if beta2 is None else beta2
    tau = d["eps"] if eps is None else eps
    if name == "sgd":
        return ServerSGD(eta)
    if name == "momentum":
        return ServerMomentum(eta, b1)
    return _RULES[name](eta, b1, b2, tau)  # type: ignore[call-arg]
