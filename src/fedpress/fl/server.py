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
from fedpress.codec.stream import StreamDecoder, StreamEncoder
from fedpress.metrics.events import EventLog
from fedpress.transport.base import Arrival, Transport

from .checkpoint import copy_tensors, load_rng_state, rng_state
from .codec_adapter import (
    CodecSpec,
    accepted_codecs,
    decode_checked,
    decoder_state,
    encode_update,
    load_decoder_state,
    make_decoder,
    make_encoder,
    model_limits,
)
from .context import ServerContext
from .params import num_bytes
from .strategies import Strategy
from .timing import TimingModel
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
    """The event loop: dispatch, wait for arrivals, decode and check them, let the strategy
    aggregate and publish, evaluate, stop.

    Decoding is guarded: a payload must name only codecs in ``accept`` (default: those the
    ``uplink`` spec routes to; ``None`` with no uplink given accepts any) and exactly the
    model's tensor names, shapes and dtypes, checked before any frame is decoded. A client whose
    uplink could not be decoded (corrupted, lost or reordered payload) is flagged and its next
    dispatch carries ``keyframe=True`` (see ``fedpress.transport.base``).
    """

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
        uplink: CodecSpec | None = None,
        accept: frozenset[str] | None = None,
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
        if accept is None and uplink is not None:
            accept = accepted_codecs(uplink)
        self.accept = accept
        self.limits = model_limits(params)
        self.needs_keyframe: set[int] = set()
        self._decoders: dict[int, StreamDecoder] = {}
        self._down_encoders: dict[int, StreamEncoder] = {}
        self._down_cache: tuple[int, bytes, float] | None = None
        self.updates = 0  # accepted client updates
        self._last_eval_version = -1
        self._next_eval_time = eval_every_time
        self._target_hit = False
        self._raw_model_bytes = num_bytes(params)
        self._started = False
        self._wall0 = time.perf_counter()

    # -- public -----------------------------------------------------------------------------
    @property
    def params(self) -> Tensors:
        return self.ctx.state.params

    @property
    def version(self) -> int:
        return self.ctx.state.version

    def run(self) -> dict[str, Any]:
        """Run until a stop rule fires; returns the summary. A server restored with
        :meth:`load_state_dict` continues where the checkpoint was taken."""
        if not self._started:
            self.start()
        reason = self._stop_reason()
        while reason is None:
            reason = self.step()
        return self.finish(reason)

    def start(self) -> None:
        """Log the start, evaluate the initial model and make the first dispatches."""
        self._wall0 = time.perf_counter()
        self._started = True
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

    def step(self) -> str | None:
        """Handle one event (an arrival, or a deadline without one); returns why the run
        should stop now, or None to go on."""
        deadline = self._deadline()
        ev = self.transport.next_event(deadline)
        self.ctx.now = self.transport.now()
        arrived: int | None = None
        if ev is None and deadline is None:
            return "stalled"  # nothing in flight and nothing to wait for
        if ev is not None:
            arrived = self._on_arrival(ev)
        if self.strategy.ready(self.ctx):
            self._publish(self.strategy.apply(self.ctx))
        reason = self._stop_reason()
        if reason is None:
            self._dispatch_all(self.strategy.select(self.ctx, arrived))
        return reason

    def finish(self, reason: str) -> dict[str, Any]:
        """Final evaluation, close the transport, log the end; returns the summary."""
        if self._last_eval_version != self.version:
            self._evaluate()
        self.transport.close()
        self.log.write(
            "end",
            t=self.ctx.now,
            version=self.version,
            updates=self.updates,
            reason=reason,
            wall_s=time.perf_counter() - self._wall0,
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
        # a client process that started afresh holds no codec state: resync it by keyframes
        self.needs_keyframe |= self.transport.restarted_clients()
        for c in clients:
            keyframe = c in self.needs_keyframe
            if keyframe and c in self._down_encoders:
                # a client out of sync one way may be out of sync both ways (a lost message,
                # a reconnect): its model payload is a keyframe too
                self._down_encoders[c].reset()
            payload, enc_s = self._model_payload(c)
            self.ctx.versions.acquire(self.version)
            self.transport.dispatch(c, payload, self.version, keyframe=keyframe)
            self.needs_keyframe.discard(c)
            self.ctx.in_flight.add(c)
            self.log.write(
                "dispatch",
                t=self.ctx.now,
                client=c,
                version=self.version,
                bytes_down=len(payload),
                raw_bytes_down=self._raw_model_bytes,
                keyframe=keyframe,
                wall_server_encode_s=enc_s,
            )

    def _on_arrival(self, ev: Arrival) -> int:
        r = ev.result
        c = r.client_id
        self.ctx.in_flight.discard(c)
        dec = self._decoders.get(c)
        if dec is None:
            dec = self._decoders[c] = make_decoder(accept=self.accept, limits=self.limits)
        staleness = self.version - r.base_version
        status, reason, dec_s = "accepted", None, 0.0
        try:
            # decode every payload, even one we drop: stateful streams must stay in sync
            tensors, dec_s = decode_checked(dec, r.payload, self.params, self.accept)
        except CodecError as exc:
            # the decoder kept its state; the client's encoder moved on: resync by a keyframe
            status, reason = "rejected", str(exc)
            self.needs_keyframe.add(c)
        else:
            try:
                check_update(tensors, self.params)
            except ValueError as exc:
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

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The server's complete state (numpy arrays and plain types; see
        ``fedpress.fl.checkpoint.split_arrays`` to save it without pickle): global model,
        version and counters, clock, RNG, old models still referenced, clients in flight and
        awaiting a keyframe, codec stream states and the strategy's state (buffers, window,
        server-optimizer moments). The event log is not included: append to the same file."""
        vs = self.ctx.versions
        return {
            "format": 1,
            "strategy_name": self.strategy.name,
            "version": self.version,
            "params": copy_tensors(self.params),
            "updates": self.updates,
            "now": self.ctx.now,
            "rng": rng_state(self.ctx.rng),
            "in_flight": sorted(self.ctx.in_flight),
            "needs_keyframe": sorted(self.needs_keyframe),
            "old_models": {str(v): copy_tensors(m) for v, m in vs._models.items() if v != vs.current},
            "version_refs": {str(v): n for v, n in vs._refs.items()},
            "decoders": {str(c): decoder_state(d) for c, d in sorted(self._decoders.items())},
            "down_encoders": {str(c): e.state_dict() for c, e in sorted(self._down_encoders.items())},
            "eval": {
                "last_version": self._last_eval_version,
                "next_time": self._next_eval_time,
                "target_hit": self._target_hit,
            },
            "started": self._started,
            "strategy": self.strategy.state_dict(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a server built with the same settings; a later
        :meth:`run` continues from there (without a new start event or initial dispatch)."""
        if sd.get("format") != 1:
            raise ValueError(f"unknown server checkpoint format {sd.get('format')!r}")
        if sd["strategy_name"] != self.strategy.name:
            raise ValueError(
                f"checkpoint is of strategy {sd['strategy_name']!r}, this server runs {self.strategy.name!r}"
            )
        params = copy_tensors(sd["params"])
        check_update(params, self.params)
        st = self.ctx.state
        st.params, st.version = params, int(sd["version"])
        vs = VersionStore(keep_old=self.ctx.versions.keep_old)
        for v, m in sd["old_models"].items():
            vs._models[int(v)] = copy_tensors(m)
        vs._refs = {int(v): int(n) for v, n in sd["version_refs"].items()}
        vs.publish(st.version, params)
        self.ctx.versions = vs
        self.updates = int(sd["updates"])
        self.ctx.now = float(sd["now"])
        load_rng_state(self.ctx.rng, sd["rng"])
        self.ctx.in_flight = {int(c) for c in sd["in_flight"]}
        self.needs_keyframe = {int(c) for c in sd["needs_keyframe"]}
        self._decoders = {}
        for c, dsd in sd["decoders"].items():
            dec = self._decoders[int(c)] = make_decoder(accept=self.accept, limits=self.limits)
            load_decoder_state(dec, dsd)
        self._down_encoders = {}
        for c, esd in sd["down_encoders"].items():
            enc = self._down_encoders[int(c)] = make_encoder(self.downlink, f"c{c}/down")
            enc.load_state_dict(esd)
        self._down_cache = None
        ev = sd["eval"]
        self._last_eval_version = int(ev["last_version"])
        self._next_eval_time = None if ev["next_time"] is None else float(ev["next_time"])
        self._target_hit = bool(ev["target_hit"])
        self._started = bool(sd["started"])
        self.strategy.load_state_dict(sd["strategy"])
