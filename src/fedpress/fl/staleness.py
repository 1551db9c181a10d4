"""Staleness functions ``s(tau)`` that damp updates computed on an old global model.

``tau`` is the number of global versions published since the client downloaded its model.
Each function maps ``tau >= 0`` to a weight in ``(0, 1]`` with ``s(0) = 1`` (FedAsync, Xie et al.
2019, section 5.2; FedBuff uses ``polynomial`` with ``a = 0.5``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

StalenessFn = Callable[[int], float]

_REGISTRY: dict[str, Callable[..., StalenessFn]] = {}


def register_staleness(name: str) -> Callable[[Callable[..., StalenessFn]], Callable[..., StalenessFn]]:
    """Decorator: make a staleness-function factory available by name."""

    def deco(factory: Callable[..., StalenessFn]) -> Callable[..., StalenessFn]:
        if name in _REGISTRY:
            raise ValueError(f"staleness function {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_staleness() -> list[str]:
    return sorted(_REGISTRY)


def get_staleness(name: str, a: float = 0.5, b: float = 4.0) -> StalenessFn:
    """Build a staleness function; ``a`` and ``b`` mean what each function's docstring says."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown staleness function {name!r}; known: {', '.join(available_staleness())}"
        ) from None
    return factory(a=float(a), b=float(b))


def _check_tau(tau: int) -> int:
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    return tau


@register_staleness("constant")
def constant(a: float = 0.5, b: float = 4.0) -> StalenessFn:
    """``s(tau) = 1``: no damping (``a``, ``b`` unused)."""

    def fn(tau: int) -> float:
        _check_tau(tau)
        return 1.0

    return fn


@register_staleness("polynomial")
def polynomial(a: float = 0.5, b: float = 4.0) -> StalenessFn:
    """``s(tau) = (1 + tau)^-a``."""
    if a < 0:
        raise ValueError(f"polynomial staleness needs a >= 0, got {a}")
    return lambda tau: float((1.0 + _check_tau(tau)) ** (-a))


@register_staleness("hinge")
def hinge(a: float = 10.0, b: float = 4.0) -> StalenessFn:
    """``s(tau) = 1`` for ``tau <= b``, else ``1 / (a (tau - b) + 1)``."""
    if a < 0 or b < 0:
        raise ValueError(f"hinge staleness needs a, b >= 0, got a={a}, b={b}")
    return lambda tau: 1.0 if _check_tau(tau) <= b else 1.0 / (a * (tau - b) + 1.0)


@register_staleness("exponential")
def exponential(a: float = 0.5, b: float = 4.0) -> StalenessFn:
    """``s(tau) = exp(-a tau)``."""
    if a < 0:
        raise ValueError(f"exponential staleness needs a >= 0, got {a}")
    return lambda tau: math.exp(-a * _check_tau(tau))
