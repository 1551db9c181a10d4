"""The one server loop: every strategy, every transport.

After each event (an arrival, or a deadline with none) the loop asks the strategy to accept the
update, whether to publish a new global model, and whom to dispatch. It only talks to a
:class:`~fedpress.transport.base.Transport` (``now``, ``dispatch``, ``next_event``) and never
learns whether the clock is virtual or real.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpress.codec.errors import CodecError
from fedpress.metrics.events import EventLog
from fedpress.transport.base import Arrival, Transport

from .codec_adapter import (
    CodecSpec,
    TensorDecoder,
    TensorEncoder,
    decode_update,
    encode_update,
    make_decoder,
    make_encoder,
)
from .context import ServerContext
from .params import num_bytes
from .profiles import TimingModel
from .strategies import Strategy
from .types import GlobalState, Tensors, Update
from .versions import VersionStore

Evaluator = Callable[[Tensors], dict[str, float]]


@dataclass(frozen=True)
class StopRule:
    """When a run ends; any rule that fires ends it. ``max_updates`` counts accepted client
    updates, ``rounds`` counts global versions, ``max_sim_time`` is clock seconds."""

    max_updates: int | None = None
    rounds: int | None = None
    max_sim_time: float | None = None
    target_accuracy: float | None = None
    stop_at_target: bool = False

    def __post_init__(self) -> None:
        if self.max_updates is None and self.rounds is None and self.max_sim_time is None:
            if not (self.stop_at_target and self.target_accuracy is not None):
                raise ValueError("set at least one of max_updates, rounds, max_sim_time")


def check_update(tensors: Tensors, params: Tensors) -> None:
    """Refuse an update whose names, shapes or values cannot be aggregated."""
    if tensors.keys() != params.keys():
        diff = sorted(set(tensors) ^ set(params))
        raise ValueError(f"update tensor names differ from the model's: {diff[:5]}")
    for k, v in tensors.items():
        if v.shape != params[k].shape:
            raise ValueError(f"{k}: update shape {v.shape} != model shape {params[k].shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"{k}: update holds NaN/Inf")


class Server:
    def __init__(
        self,
        strategy: Strategy,
        transport: Transport,
        params: Tensors,
        num_samples: list[int],
        stop: StopRule,
        *,
        log: EventLog | None = None,
        evaluator: Evaluator | None = None,
        eval_every: int | None = 1,
        eval_every_time: float | None = None,
        downlink: CodecSpec | None = None,
        timing: TimingModel | None = None,
        seed: int = 0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.transport = transport
        self.stop = stop
        self.log = log or EventLog(None, stop.target_accuracy)
        self.evaluator = evaluator
        self.eval_every = eval_every
        self.eval_every_time = eval_every_time
        self.downlink = downlink
        self.timing = timing or TimingModel()
        self.on_progress = on_progress
        versions = VersionStore(keep_old=strategy.needs_base_model)
        self.ctx = ServerContext(
            state=GlobalState(dict(params), 0),
            num_samples=list(num_samples),
            rng=np.random.default_rng([seed, 1]),
            versions=versions,
        )
        versions.publish(0, self.ctx.state.params)
        self._decoders: dict[int, TensorDecoder] = {}
        self._down_encoders: dict[int, TensorEncoder] = {}
        self._down_cache: tuple[int, bytes, float] | None = None
        self.updates = 0  # accepted client updates
        self._last_eval_version = -1
        self._next_eval_time = eval_every_time
        self._target_hit = False
        self._raw_model_bytes = num_bytes(params)

    # -- public -----------------------------------------------------------------------------
    @property
    def params(self) -> Tensors:
        return self.ctx.state.params

    @property
    def version(self) -> int:
        return self.ctx.state.version

    def run(self) -> dict[str, Any]:
        """Run until a stop rule fires; returns the summary."""
        wall0 = time.perf_counter()
        self.log.write(
            "start",
            t=self.transport.now(),
            strategy=self.strategy.name,
            num_clients=self.ctx.num_clients,
            target_accuracy=self.stop.target_accuracy,
            strategy_params=self.strategy.describe(),
            model_bytes=self._raw_model_bytes,
        )
        self._evaluate()
        self._dispatch_all(self.strategy.select(self.ctx, None))
        reason = self._stop_reason()
        while reason is None:
            deadline = self._deadline()
            ev = self.transport.next_event(deadline)
            self.ctx.now = self.transport.now()
            arrived: int | None = None
            if ev is None and deadline is None:
                reason = "stalled"  # nothing in flight and nothing to wait for
                break
            if ev is not None:
                arrived = self._on_arrival(ev)
            if self.strategy.ready(self.ctx):
                self._publish(self.strategy.apply(self.ctx))
            reason = self._stop_reason()
            if reason is None:
                self._dispatch_all(self.strategy.select(self.ctx, arrived))
        if self._last_eval_version != self.version:
            self._evaluate()
        self.transport.close()
        self.log.write(
            "end",
            t=self.ctx.now,
            version=self.version,
            updates=self.updates,
            reason=reason,
            wall_s=time.perf_counter() - wall0,
        )
        self.log.flush()
        return self.log.summary.result()

    # -- internals --------------------------------------------------------------------------
    def _deadline(self) -> float | None:
        cands = [d for d in (self.strategy.deadline(self.ctx), self.stop.max_sim_time) if d is not None]
        return min(cands) if cands else None

    def _stop_reason(self) -> str | None:
        s = self.stop
        if s.stop_at_target and self._target_hit:
            return "target_accuracy"
        if s.max_updates is not None and self.updates >= s.max_updates:
            return "max_updates"
        if s.rounds is not None and self.version >= s.rounds:
            return "rounds"
        if s.max_sim_time is not None and self.ctx.now >= s.max_sim_time:
            return "max_sim_time"
        return None

    def _model_payload(self, client_id: int) -> tuple[bytes, float]:
        """The encoded global model for a client and the server's encode wall seconds."""
        v = self.version
        if self.downlink is None or self.downlink.is_raw:
            if self._down_cache is None or self._down_cache[0] != v:
                payload, stats = encode_update(make_encoder(None, ""), self.params)
                self._down_cache = (v, payload, stats.seconds)
            return self._down_cache[1], self._down_cache[2]
        enc = self._down_encoders.get(client_id)
        if enc is None:
            enc = self._down_encoders[client_id] = make_encoder(self.downlink, f"c{client_id}/down")
        payload, stats = encode_update(enc, self.params)
        return payload, stats.seconds

    def _dispatch_all(self, clients: list[int]) -> None:
        for c in clients:
            payload, enc_s = self._model_payload(c)
            self.ctx.versions.acquire(self.version)
            self.transport.dispatch(c, payload, self.version)
            self.ctx.in_flight.add(c)
            self.log.write(
                "dispatch",
                t=self.ctx.now,
                client=c,
                version=self.version,
                bytes_down=len(payload),
                raw_bytes_down=self._raw_model_bytes,
                server_encode_s=self.timing.codec_seconds(self._raw_model_bytes, enc_s),
                wall_server_encode_s=enc_s,
            )

    def _on_arrival(self, ev: Arrival) -> int:
        r = ev.result
        c = r.client_id
        self.ctx.in_flight.discard(c)
        dec = self._decoders.get(c)
        if dec is None:
            dec = self._decoders[c] = make_decoder()
        staleness = self.version - r.base_version
        status, reason, dec_s = "accepted", None, 0.0
        try:
            # decode every payload, even one we drop: stateful streams must stay in sync
            tensors, dec_s = decode_update(dec, r.payload)
            check_update(tensors, self.params)
        except (CodecError, ValueError) as exc:
            status, reason = "rejected", str(exc)
        if status == "accepted":
            update = Update(
                client_id=c,
                base_version=r.base_version,
                tensors=tensors,
                num_samples=r.num_samples,
                metrics=r.metrics,
                timings=r.timings,
                bytes_up=len(r.payload),
                staleness=staleness,
                arrived_at=ev.time,
            )
            if self.strategy.accept(update, self.ctx):
                self.updates += 1
            else:
                status = "dropped"
        else:
            self.strategy.on_reject(c, self.ctx)
        self.ctx.versions.release(r.base_version)
        fields: dict[str, Any] = {
            "t": ev.time,
            "client": c,
            "base_version": r.base_version,
            "version": self.version,
            "staleness": staleness,
            "status": status,
            "num_samples": r.num_samples,
            "samples": r.samples,
            "bytes_up": len(r.payload),
            "raw_bytes_up": r.raw_bytes_up,
            "bytes_down": ev.bytes_down,
            "raw_bytes_down": r.raw_bytes_down,
            "dispatched_at": ev.dispatched_at,
            **ev.sim,
            "server_decode_s": self.timing.codec_seconds(r.raw_bytes_up, dec_s),
            "wall_server_decode_s": dec_s,
            **r.timings,
            **{k: v for k, v in r.metrics.items()},
        }
        if reason is not None:
            fields["reason"] = reason
        self.log.write("arrival", **fields)
        if self.on_progress is not None:
            self.on_progress({"updates": self.updates, "t": ev.time, "version": self.version})
        return c

    def _publish(self, params: Tensors) -> None:
        st = self.ctx.state
        st.params = params
        st.version += 1
        self.ctx.versions.publish(st.version, params)
        self.log.write("update", t=self.ctx.now, version=st.version, updates=self.updates)
        due = self.eval_every is not None and st.version % self.eval_every == 0
        if self._next_eval_time is not None and self.ctx.now >= self._next_eval_time:
            due = True
            step = self.eval_every_time or 1.0
            while self._next_eval_time <= self.ctx.now:
                self._next_eval_time += step
        if due:
            self._evaluate()

    def _evaluate(self) -> None:
        if self.evaluator is None:
            return
        w0 = time.perf_counter()
        res = self.evaluator(self.params)
        self._last_eval_version = self.version
        acc = res.get("accuracy")
        if self.stop.target_accuracy is not None and acc is not None:
            self._target_hit = self._target_hit or acc >= self.stop.target_accuracy
        self.log.write(
            "eval",
            t=self.ctx.now,
            version=self.version,
            updates=self.updates,
            **res,
            wall_eval_s=time.perf_counter() - w0,
        )
        if self.on_progress is not None:
            self.on_progress({"updates": self.updates, "t": self.ctx.now, "accuracy": acc})
