"""Ray transport: the in-process virtual clock, with the clients' work run on a Ray actor pool.

``dispatch`` submits the client's work to its actor and returns at once, so every client in
flight trains in parallel. The virtual clock is the in-process one (``transport.sim.round_trip``),
but an arrival's time depends on the result (the upload size), so futures are resolved lazily:
a pending dispatch cannot arrive before ``dispatched_at + download + compute + latency``
(:func:`lower_bound`), and ``next_event`` waits only on the futures whose bound could precede
the best arrival known, ties broken by dispatch order. The event log, the bytes and the model
are therefore the same as in-process for a seed (modeled timing); only wall fields differ.

Faults: an actor whose process dies is restarted by Ray (``max_restarts=-1``); its clients'
dispatches in flight are re-submitted (``on_failure: retry``, up to ``max_retries`` times) or
delivered as failed arrivals (an empty payload the server rejects, ``client_failed=1`` in the
log) so the run goes on either way.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpress.fl.client import TrainSpec, planned_samples
from fedpress.transport.base import Arrival, ClientResult, Transport
from fedpress.transport.sim import (
    ClientProfile,
    CodecClock,
    WallCodecClock,
    pop_due,
    round_trip,
    transfer_seconds,
)

from .config import SimulationConfig
from .ray_actor import ClientPool, ClientRecipe

_log = logging.getLogger(__name__)


def samples_per_dispatch(num_indices: int, spec: TrainSpec) -> int:
    """Training samples one dispatch processes (the trainer's own count, known up front)."""
    return planned_samples(num_indices, spec)


def lower_bound(p: ClientProfile, bytes_down: int, samples: int) -> float:
    """Seconds a round trip takes at least: download, compute and the upload's latency (codec
    time and upload size are known only from the result)."""
    return (
        transfer_seconds(bytes_down, p.down_mbps, p.latency_s)
        + samples * p.s_per_sample
        + p.latency_s
    )


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to get it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "simulation.backend=ray needs Ray: pip install 'fedpress[ray]' (or pip install ray)"
        ) from None
    return ray


def ensure_ray(sim: SimulationConfig) -> None:
    """Connect to ``sim.ray_address``, or start a local instance; reuse one already running."""
    ray = import_ray()

    if ray.is_initialized():
        if sim.ray_address not in (None, "auto"):
            _log.info("reusing the Ray instance of this process (ray_address %s)", sim.ray_address)
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if sim.ray_address:
        ray.init(address=sim.ray_address, **kw)
    else:
        if sim.object_store_mb is not None:
            kw["object_store_memory"] = sim.object_store_mb * 1024 * 1024
        ray.init(**kw)


def pool_size(sim: SimulationConfig, num_clients: int, resources: dict[str, float]) -> int:
    """Actors to start: ``num_actors``, or as many as the cluster's CPUs (and GPUs) fit, never
    more than there are clients; a pool that cannot be placed is refused (it would hang)."""
    fits = math.floor(resources.get("CPU", 0.0) / sim.num_cpus + 1e-9)
    if sim.num_gpus > 0:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / sim.num_gpus + 1e-9))
    if fits < 1:
        raise ValueError(
            f"simulation: the Ray cluster ({resources.get('CPU', 0)} CPU, {resources.get('GPU', 0)} "
            f"GPU) cannot hold one client of num_cpus={sim.num_cpus}, num_gpus={sim.num_gpus}"
        )
    if sim.num_actors is not None:
        if sim.num_actors > fits:
            raise ValueError(
                f"simulation.num_actors={sim.num_actors} does not fit the Ray cluster: at most "
                f"{fits} actors of num_cpus={sim.num_cpus}, num_gpus={sim.num_gpus}"
            )
        return min(sim.num_actors, num_clients)
    return min(fits, num_clients)


@dataclass
class _Pending:
    seq: int
    client_id: int
    version: int
    payload_ref: Any
    bytes_down: int
    dispatched_at: float
    bound: float  # earliest possible arrival time
    keyframe: bool = False
    attempts: int = 0
    ref: Any = None


def _could_precede(p: _Pending, deadline: float | None, limit: tuple[float, int] | None) -> bool:
    """Whether pending ``p`` might arrive by ``deadline`` and before ``limit`` (time, seq)."""
    if deadline is not None and p.bound > deadline:
        return False
    return limit is None or (p.bound, p.seq) < limit


class RayTransport(Transport):
    """Virtual-clock transport whose clients run on a pool of Ray actors (see module doc)."""

    def __init__(
        self,
        recipe: ClientRecipe,
        train_x: np.ndarray,
        train_y: np.ndarray,
        parts: Sequence[np.ndarray],
        profiles: Sequence[ClientProfile],
        timing: CodecClock | None = None,
        sim: SimulationConfig | None = None,
    ) -> None:
        ray = import_ray()
        self.sim = sim or SimulationConfig(backend="ray")
        ensure_ray(self.sim)
        self._ray = ray
        self.profiles = list(profiles)
        self.timing: CodecClock = timing or WallCodecClock()
        self.spec = recipe.spec
        self._shard_sizes = [len(p) for p in parts]
        n = len(parts)
        # data go to the object store once; every actor on a node maps the same copy
        x_ref = ray.put(np.ascontiguousarray(train_x))
        y_ref = ray.put(np.ascontiguousarray(train_y))
        parts_ref = ray.put([np.asarray(p, dtype=np.int64) for p in parts])
        size = pool_size(self.sim, n, ray.cluster_resources())
        self._actor_cls = ray.remote(ClientPool).options(
            num_cpus=self.sim.num_cpus,
            num_gpus=self.sim.num_gpus,
            max_restarts=-1,  # a dead actor comes back (its clients are rebuilt from our account)
            max_task_retries=0,  # retries are ours: counted, and reported per config
        )
        self._recipe = recipe
        self.actors = [self._actor_cls.remote(recipe, x_ref, y_ref, parts_ref) for _ in range(size)]
        self._replaced = [0] * size  # actors given up by Ray and started anew
        self.pool_size = size
        self._data_refs = (x_ref, y_ref, parts_ref)  # kept: a restarted actor re-reads them
        self._rounds = [0] * n  # results each client has returned
        self._up_seq = [0] * n  # each client's uplink stream position
        self._pending: dict[Any, _Pending] = {}  # ObjectRef -> dispatch
        self._ready: list[tuple[float, int, Arrival]] = []
        self._busy: set[int] = set()
        self._seq = itertools.count()
        self._now = 0.0
        self._down: tuple[int, bytes, Any] | None = None  # (version, payload, ObjectRef)
        self._recovering: dict[int, Any] = {}  # actor index -> probe ObjectRef
        self._deferred: dict[int, list[_Pending]] = {}  # actor index -> dispatches held back
        self.crash_on: set[tuple[int, int]] = set()  # (client, round): fault injection
        self.counters = {
            "dispatches": 0,
            "puts": 0,
            "retries": 0,
            "failed": 0,
            "waits": 0,
            "probes_failed": 0,
            "actors_replaced": 0,
        }

    @classmethod
    def from_inputs(
        cls,
        sim: SimulationConfig,
        inputs: Any,
        spec: TrainSpec,
        uplink: Any,
        seed: int,
        profiles: Sequence[ClientProfile],
        timing: CodecClock,
        threads: int | None = 1,
    ) -> RayTransport:
        """Build from a ``SimulationInputs`` the way ``fl.simulation`` builds in-process clients."""
        recipe = ClientRecipe(inputs.model_fn, spec, uplink, seed, threads)
        return cls(recipe, inputs.train_x, inputs.train_y, inputs.parts, profiles, timing, sim)

    # -- Transport ------------------------------------------------------------------------
    def now(self) -> float:
        return self._now

    def dispatch(
        self, client_id: int, payload: bytes, version: int, *, keyframe: bool = False
    ) -> None:
        if client_id in self._busy:
            raise RuntimeError(f"client {client_id} is already busy")
        samples = samples_per_dispatch(self._shard_sizes[client_id], self.spec)
        bound = self._now + lower_bound(self.profiles[client_id], len(payload), samples)
        p = _Pending(
            next(self._seq),
            client_id,
            version,
            self._put_model(payload, version),
            len(payload),
            self._now,
            bound,
            keyframe,
        )
        self._busy.add(client_id)
        self.counters["dispatches"] += 1
        self._submit(p)

    def next_event(self, deadline: float | None = None) -> Arrival | None:
        while True:
            best = self._ready[0] if self._ready else None
            limit = None if best is None else (best[0], best[1])

            blocking = [
                ref for ref, p in self._pending.items() if _could_precede(p, deadline, limit)
            ]
            blocking += [
                self._recovering[i]
                for i, ps in self._deferred.items()
                if any(_could_precede(p, deadline, limit) for p in ps)
            ]
            if not blocking:
                break
            self.counters["waits"] += 1
            self._ray.wait(blocking, num_returns=1)
            everything = [*self._pending, *self._recovering.values()]
            done, _ = self._ray.wait(everything, num_returns=len(everything), timeout=0)
            for ref in done:
                self._resolve(ref)
        arrival, self._now = pop_due(self._ready, deadline, self._now)
        if arrival is not None:
            self._busy.discard(arrival.result.client_id)
        return arrival

    def in_flight(self) -> frozenset[int]:
        return frozenset(self._busy)

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        self._data_refs = ()
        self._pending.clear()
        self._recovering.clear()
        self._deferred.clear()
        self._ready.clear()
        self._busy.clear()
        self._down = None

    # -- internals ------------------------------------------------------------------------
    def actor_of(self, client_id: int) -> Any:
        """The actor hosting ``client_id`` (fixed routing: its streams live there)."""
        return self.actors[client_id % len(self.actors)]

    def _put_model(self, payload: bytes, version: int) -> Any:
        """The payload's object-store ref: one put per model version when clients share bytes
        (a raw or stateless downlink), one per dispatch when each client's bytes differ."""
        d = self._down
        if d is not None and d[0] == version and (d[1] is payload or d[1] == payload):
            return d[2]
        ref = self._ray.put(payload)
        self.counters["puts"] += 1
        self._down = (version, payload, ref)
        return ref

    def _submit(self, p: _Pending) -> None:
        c = p.client_id
        idx = c % len(self.actors)
        if idx in self._recovering:  # its actor is restarting: hold the work until it is back
            self._deferred.setdefault(idx, []).append(p)
            return
        crash = p.attempts == 0 and (c, self._rounds[c]) in self.crash_on
        p.ref = self.actors[idx].run.remote(
            c, p.payload_ref, p.version, self._rounds[c], self._up_seq[c], p.keyframe, crash
        )
        self._pending[p.ref] = p

    def _probe(self, idx: int) -> None:
        """Ask a lost actor for a sign of life; its held-back work goes when it answers."""
        self._recovering[idx] = self.actors[idx].info.remote()

    def _on_probe(self, idx: int, ref: Any) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        del self._recovering[idx]
        try:
            self._ray.get(ref)
        except ActorUnavailableError:
            self.counters["probes_failed"] += 1
            self._probe(idx)  # still restarting
            return
        except RayActorError as exc:
            # dead for good (its node is gone, or Ray gave it up): start a new one in its place;
            # one that cannot even start is a set-up error, not a client fault
            if self._replaced[idx] >= 2:
                raise RuntimeError(
                    f"Ray actor {idx} of the client pool keeps dying and cannot be replaced: {exc}"
                ) from None
            self._replaced[idx] += 1
            self.counters["actors_replaced"] += 1
            _log.warning("actor %d is dead (%s); starting a new one", idx, type(exc).__name__)
            self.actors[idx] = self._actor_cls.remote(self._recipe, *self._data_refs)
            self._probe(idx)
            return
        for p in self._deferred.pop(idx, []):
            self._submit(p)

    def _resolve(self, ref: Any) -> None:
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        for idx, probe in self._recovering.items():
            if probe == ref:
                self._on_probe(idx, ref)
                return
        p = self._pending.pop(ref)
        try:
            result, up_seq = self._ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            self._on_lost(p, exc)
            return
        except RayTaskError as exc:  # the client's own error: raise it as in-process would
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            raise cause from None
        if result is None:  # a rebuilt client could not resume its downlink stream
            self._fail(p, "lost_stream_state")
            return
        c = p.client_id
        self._rounds[c] += 1
        self._up_seq[c] = up_seq
        t = result.timings
        clock = self.timing  # exactly the in-process transport's account of the round trip
        sim = round_trip(
            self.profiles[c],
            bytes_down=p.bytes_down,
            bytes_up=len(result.payload),
            samples=result.samples,
            decode_s=clock.codec_seconds(
                "down", "decode", result.raw_bytes_down, t.get("wall_decode_s", 0.0)
            ),
            encode_s=clock.codec_seconds(
                "up", "encode", result.raw_bytes_up, t.get("wall_encode_s", 0.0)
            ),
            server_encode_s=clock.codec_seconds("down", "encode", result.raw_bytes_down),
            server_decode_s=clock.codec_seconds("up", "decode", result.raw_bytes_up),
        )
        arrival = Arrival(
            result, p.dispatched_at + sim["total_s"], p.dispatched_at, p.bytes_down, sim
        )
        if arrival.time < p.bound * (1 - 1e-12) - 1e-12:
            raise RuntimeError(
                f"client {c}: arrival at {arrival.time} precedes its bound {p.bound}; the Ray "
                "transport's lower bound no longer matches the client model (order would change)"
            )
        heapq.heappush(self._ready, (arrival.time, p.seq, arrival))

    def _on_lost(self, p: _Pending, exc: Exception) -> None:
        """The actor running ``p`` died: re-submit once Ray has restarted it, or fail the client."""
        idx = p.client_id % len(self.actors)
        if idx not in self._recovering:
            self._probe(idx)
        if self.sim.on_failure == "retry" and p.attempts < self.sim.max_retries:
            p.attempts += 1
            self.counters["retries"] += 1
            _log.warning(
                "client %d: actor lost (%s); retry %d", p.client_id, type(exc).__name__, p.attempts
            )
            self._submit(p)  # held back until the probe answers
            return
        _log.warning("client %d: actor lost (%s); reported failed", p.client_id, type(exc).__name__)
        self._fail(p, "actor_lost")

    def _fail(self, p: _Pending, why: str) -> None:
        """Deliver ``p`` as a failed arrival at its lower bound; the server rejects it."""
        self.counters["failed"] += 1
        c = p.client_id
        result = ClientResult(
            client_id=c,
            base_version=p.version,
            payload=b"",  # the server refuses it: the update is rejected, the run goes on
            num_samples=self._shard_sizes[c],
            samples=0,
            raw_bytes_down=0,
            raw_bytes_up=0,
            metrics={
                "client_failed": 1.0,
                f"client_failed_{why}": 1.0,
                "client_attempts": float(p.attempts + 1),
            },
        )
        heapq.heappush(
            self._ready, (p.bound, p.seq, Arrival(result, p.bound, p.dispatched_at, p.bytes_down))
        )

    def stats(self) -> dict[str, Any]:
        """Counters (dispatches, model puts, retries, failed, waits), the pool size and, while
        the pool is up, each actor's ``info()`` (node, pid, clients hosted)."""
        out: dict[str, Any] = {**self.counters, "actors": self.pool_size}
        if self.actors:
            out["actor_info"] = self._ray.get([a.info.remote() for a in self.actors])
        return out
