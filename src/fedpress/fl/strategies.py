"""Aggregation rules plugged into the one server loop (``server.py``).

A strategy answers four questions the loop asks after every event: whom to dispatch now
(``select``), whether to take an arrived update (``accept``, which streams it into running sums
so memory does not grow with the cohort), whether to publish a new global model (``ready``) and
what that model is (``apply``). Deltas follow ``delta = w_after - w_before`` (see ``types.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any, ClassVar

import numpy as np

from .aggregate import RunningSum, cast_like
from .checkpoint import copy_tensors
from .context import ServerContext
from .server_opt import ServerOptimizer, ServerSGD, make_server_optimizer
from .staleness import StalenessFn, get_staleness
from .types import Tensors, Update, add_delta

_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no strategy name")
    _REGISTRY[cls.name] = cls
    return cls


def available_strategies() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(available_strategies())}"
        ) from None


def build_strategy(cfg: Any, num_clients: int) -> Strategy:
    """Build from a ``StrategyConfig`` (``fedpress.config``)."""
    return strategy_class(cfg.name).from_config(cfg, num_clients)


def _optimizer(cfg: Any) -> ServerOptimizer:
    """The server optimizer a strategy section names; unset parameters take its defaults."""
    o = cfg.server_opt
    return make_server_optimizer(o.name, cfg.eta_g, o.beta1, o.beta2, o.eps)


def _staleness(cfg: Any) -> StalenessFn:
    s = cfg.staleness
    return get_staleness(s.fn, a=s.a, b=s.b)


class Strategy(ABC):
    name: ClassVar[str] = ""
    #: True when ``accept`` needs the global model the client started from.
    needs_base_model: bool = False

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any, num_clients: int) -> Strategy: ...

    @abstractmethod
    def select(self, ctx: ServerContext, arrived: int | None) -> list[int]:
        """Clients to dispatch now; ``arrived`` is the client whose event was just handled."""

    @abstractmethod
    def accept(self, update: Update, ctx: ServerContext) -> bool:
        """Take an update into the aggregate; False drops it (e.g. a straggler of a past round)."""

    @abstractmethod
    def ready(self, ctx: ServerContext) -> bool:
        """Whether ``apply`` should publish a new global model now."""

    @abstractmethod
    def apply(self, ctx: ServerContext) -> Tensors:
        """The next global model (a new dict); the loop bumps the version and publishes it."""

    def deadline(self, ctx: ServerContext) -> float | None:
        """A clock time at which the loop must wake up even without an arrival."""
        return None

    def on_reject(self, client_id: int, ctx: ServerContext) -> None:
        """An arrival from ``client_id`` could not be decoded or validated."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the rule exactly (arrays and plain types only)."""
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a strategy built with the same settings."""
        return None


def _fill(ctx: ServerContext, concurrency: int, first: int | None = None) -> list[int]:
    """Keep ``concurrency`` clients busy: ``first`` (if idle) then uniform picks among idle."""
    picks: list[int] = []
    if first is not None and first not in ctx.in_flight and len(ctx.in_flight) < concurrency:
        picks.append(first)
    need = concurrency - len(ctx.in_flight) - len(picks)
    if need > 0:
        pool = [c for c in ctx.idle_clients() if c not in picks]
        n = min(need, len(pool))
        if n:
            idx = ctx.rng.choice(len(pool), size=n, replace=False)
            picks.extend(pool[int(i)] for i in idx)
    return picks


@register_strategy
class FedAvg(Strategy):
    """Synchronous rounds: ``w <- opt(w, sum_i p_i delta_i)``, ``p_i = n_i / sum n``.

    A round ends when every cohort member answered, or once ``min_responses`` answered and
    ``timeout`` (clock seconds since the round started) passed; later answers are dropped.
    With ``timeout = 0`` the first ``min_responses`` answers close the round (over-selection).
    """

    name = "fedavg"

    def __init__(
        self,
        optimizer: ServerOptimizer | None = None,
        clients_per_round: int | None = None,
        min_responses: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.opt = optimizer or ServerSGD(1.0)
        self.clients_per_round = clients_per_round
        self.min_responses = min_responses
        self.timeout = timeout
        self.acc = RunningSum()
        self.round_open = False
        self.round_version = -1
        self.round_start = 0.0
        self.cohort: set[int] = set()
        self.expected = 0
        self.received = 0

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> FedAvg:
        return cls(_optimizer(cfg), cfg.clients_per_round, cfg.min_responses, cfg.timeout)

    def select(self, ctx: ServerContext, arrived: int | None) -> list[int]:
        if self.round_open:
            return []
        cohort = ctx.sample_idle(self.clients_per_round or ctx.num_clients)
        if not cohort:
            return []
        self.round_open = True
        self.round_version = ctx.state.version
        self.round_start = ctx.now
        self.cohort = set(cohort)
        self.expected = len(cohort)
        self.received = 0
        self.acc.reset()
        return cohort

    def _needed(self) -> int:
        return min(self.min_responses or self.expected, self.expected)

    def accept(self, update: Update, ctx: ServerContext) -> bool:
        if not self.round_open or update.base_version != self.round_version:
            return False
        if update.client_id not in self.cohort:
            return False
        self.cohort.discard(update.client_id)
        self.acc.add(update.tensors, update.num_samples)
        self.received += 1
        return True

    def ready(self, ctx: ServerContext) -> bool:
        if not self.round_open or self.received == 0:
            return False
        if self.received >= self.expected:
            return True
        if self.timeout is None or self.received < self._needed():
            return False
        return ctx.now >= self.round_start + self.timeout

    def deadline(self, ctx: ServerContext) -> float | None:
        if not self.round_open or self.timeout is None:
            return None
        t = self.round_start + self.timeout
        return t if ctx.now < t else None

    def on_reject(self, client_id: int, ctx: ServerContext) -> None:
        if self.round_open and client_id in self.cohort:
            self.cohort.discard(client_id)
            self.expected -= 1
            if self.expected <= 0:
                self.round_open = False  # nobody left to wait for: the next select opens a round

    def apply(self, ctx: ServerContext) -> Tensors:
        new = self.opt.step(ctx.state.params, self.acc.mean())
        self.acc.reset()
        self.round_open = False
        self.cohort = set()
        return new

    def state_dict(self) -> dict[str, Any]:
        return {
            "opt": self.opt.state_dict(), "acc": self.acc.state_dict(),
            "round_open": self.round_open, "round_version": self.round_version,
            "round_start": self.round_start, "cohort": sorted(self.cohort),
            "expected": self.expected, "received": self.received,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd["opt"])
        self.acc.load_state_dict(sd["acc"])
        self.round_open = bool(sd["round_open"])
        self.round_version = int(sd["round_version"])
        self.round_start = float(sd["round_start"])
        self.cohort = {int(c) for c in sd["cohort"]}
        self.expected = int(sd["expected"])
        self.received = int(sd["received"])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "server_opt": self.opt.name,
            "eta_g": self.opt.eta_g,
            "clients_per_round": self.clients_per_round,
            "min_responses": self.min_responses,
            "timeout": self.timeout,
        }


@register_strategy
class FedAsync(Strategy):
    """Every arrival: ``w <- (1 - a_tau) w + a_tau w_i``, ``a_tau = alpha s(tau)``.

    ``w_i = w_base + delta_i`` is rebuilt from the exact global model the client started from.
    """

    name = "fedasync"
    needs_base_model = True

    def __init__(
        self,
        alpha: float = 0.6,
        staleness: StalenessFn | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"fedasync alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.s = staleness or get_staleness("constant")
        self.max_in_flight = max_in_flight
        self._pending: tuple[Tensors, float] | None = None

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> FedAsync:
        return cls(cfg.alpha, _staleness(cfg), cfg.max_in_flight)

    def select(self, ctx: ServerContext, arrived: int | None) -> list[int]:
        return _fill(ctx, self.max_in_flight or ctx.num_clients)

    def accept(self, update: Update, ctx: ServerContext) -> bool:
        base = ctx.versions.get(update.base_version)
        a = self.alpha * self.s(update.staleness)
        self._pending = (add_delta(base, update.tensors), a)
        return True

    def ready(self, ctx: ServerContext) -> bool:
        return self._pending is not None

    def apply(self, ctx: ServerContext) -> Tensors:
        assert self._pending is not None
        client_model, a = self._pending
        self._pending = None
        mixed = {
            k: (1.0 - a) * w.astype(np.float64) + a * client_model[k].astype(np.float64)
            for k, w in ctx.state.params.items()
        }
        return cast_like(mixed, ctx.state.params)

    def state_dict(self) -> dict[str, Any]:
        if self._pending is None:
            return {"pending": None}
        model, a = self._pending
        return {"pending": {"model": copy_tensors(model), "a": a}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        p = sd["pending"]
        self._pending = None if p is None else (copy_tensors(p["model"]), float(p["a"]))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "max_in_flight": self.max_in_flight}


@register_strategy
class FedBuff(Strategy):
    """Buffer K arrivals, then ``w <- opt(w, (1/K) sum_j s(tau_j) delta_j)`` (Nguyen et al. 2022).

    ``max_in_flight`` clients train at once; each arrival frees a slot that goes to an idle
    client drawn at random (the one that just arrived included).
    """

    name = "fedbuff"

    def __init__(
        self,
        K: int = 10,
        optimizer: ServerOptimizer | None = None,
        staleness: StalenessFn | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if K < 1:
            raise ValueError(f"fedbuff K must be >= 1, got {K}")
        self.K = int(K)
        self.opt = optimizer or ServerSGD(1.0)
        self.s = staleness or get_staleness("constant")
        self.max_in_flight = max_in_flight
        self.acc = RunningSum()

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> FedBuff:
        return cls(cfg.K, _optimizer(cfg), _staleness(cfg), cfg.max_in_flight)

    def select(self, ctx: ServerContext, arrived: int | None) -> list[int]:
        return _fill(ctx, self.max_in_flight or ctx.num_clients)

    def accept(self, update: Update, ctx: ServerContext) -> bool:
        self.acc.add(update.tensors, self.s(update.staleness))
        return True

    def ready(self, ctx: ServerContext) -> bool:
        return self.acc.count >= self.K

    def apply(self, ctx: ServerContext) -> Tensors:
        new = self.opt.step(ctx.state.params, self.acc.mean(denominator=self.K))
        self.acc.reset()
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "acc": self.acc.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd["opt"])
        self.acc.load_state_dict(sd["acc"])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "K": self.K, "max_in_flight": self.max_in_flight,
                "server_opt": self.opt.name, "eta_g": self.opt.eta_g}


@register_strategy
class FedFa(Strategy):
    """Fully asynchronous FIFO window of the K most recent client results (FedFa, 2024).

    ``max_in_flight`` clients train at once (default: every client). Every arrival enters the
    window (evicting the oldest once K are held; a fast client may hold several slots) and, once
    the window is full, the global model is updated on *every* arrival:

    * ``variant="model"``: ``w = mean(window client models)``, client model ``w_base + delta``;
    * ``variant="delta"``: ``w <- opt(w, (1/K) sum(window deltas))``. A delta stays in the
      window for K consecutive updates, each time with weight ``eta_g / K``, so its total
      weight is ``eta_g``: ``eta_g = 1`` applies each delta once in all (FedBuff with the same
      ``eta_g`` gives each delta ``eta_g / K`` in all).

    Re-dispatch: ``"same"`` hands the arriving client the new model at once (nobody waits for
    anybody). Read literally with ``max_in_flight = K < clients``, that keeps the first K
    clients drawn as the only participants for the whole run; ``"random"`` hands the freed slot
    to an idle client drawn at random (the arriving one included), so every client takes part.
    With the default ``max_in_flight`` (all clients) both rules are the same and no client is
    ever idle. With ``staleness`` the mean is weighted by ``s(tau)`` taken at arrival (model
    variant: normalized by the weight sum; delta variant: by K, like FedBuff).
    """

    name = "fedfa"

    def __init__(
        self,
        K: int = 10,
        variant: str = "model",
        optimizer: ServerOptimizer | None = None,
        staleness: StalenessFn | None = None,
        max_in_flight: int | None = None,
        redispatch: str = "same",
    ) -> None:
        if K < 1:
            raise ValueError(f"fedfa K must be >= 1, got {K}")
        if redispatch not in ("same", "random"):
            raise ValueError(f"fedfa redispatch must be 'same' or 'random', got {redispatch!r}")
        self.redispatch = redispatch
        if variant not in ("model", "delta"):
            raise ValueError(f"fedfa variant must be 'model' or 'delta', got {variant!r}")
        self.K = int(K)
        self.variant = variant
        self.needs_base_model = variant == "model"
        self.opt = optimizer or ServerSGD(1.0)
        self.s = staleness  # None: unweighted (the base rule)
        self.max_in_flight = max_in_flight
        self.window: deque[tuple[int, Tensors, float]] = deque(maxlen=self.K)
        self._fresh = False

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> FedFa:
        s = _staleness(cfg) if cfg.staleness_weighting else None
        return cls(cfg.K, cfg.variant, _optimizer(cfg), s, cfg.max_in_flight, cfg.redispatch)

    def select(self, ctx: ServerContext, arrived: int | None) -> list[int]:
        first = arrived if self.redispatch == "same" else None
        return _fill(ctx, self.max_in_flight or ctx.num_clients, first=first)

    def accept(self, update: Update, ctx: ServerContext) -> bool:
        if self.variant == "model":
            entry = add_delta(ctx.versions.get(update.base_version), update.tensors)
        else:
            entry = update.tensors
        weight = 1.0 if self.s is None else self.s(update.staleness)
        self.window.append((update.client_id, entry, weight))
        self._fresh = True
        return True

    def window_clients(self) -> list[int]:
        return [c for c, _, _ in self.window]

    def ready(self, ctx: ServerContext) -> bool:
        return self._fresh and len(self.window) == self.K

    def apply(self, ctx: ServerContext) -> Tensors:
        self._fresh = False
        acc = RunningSum()
        for _, entry, weight in self.window:
            acc.add(entry, weight)
        if self.variant == "model":
            return cast_like(acc.mean(), ctx.state.params)
        return self.opt.step(ctx.state.params, acc.mean(denominator=self.K))

    def state_dict(self) -> dict[str, Any]:
        return {
            "opt": self.opt.state_dict(),
            "window": [{"client": c, "entry": copy_tensors(e), "weight": w} for c, e, w in self.window],
            "fresh": self._fresh,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd["opt"])
        self.window.clear()
        for item in sd["window"]:
            self.window.append((int(item["client"]), copy_tensors(item["entry"]), float(item["weight"])))
        self._fresh = bool(sd["fresh"])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "K": self.K,
            "variant": self.variant,
            "staleness_weighting": self.s is not None,
            "max_in_flight": self.max_in_flight,
            "redispatch": self.redispatch,
        }

