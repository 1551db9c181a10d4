"""In-process transport on a virtual clock: clients run here, their round trips are simulated.

A dispatch runs the client at once (its result only depends on the model it was sent) and puts
the arrival on a heap at ``now + round trip`` (``fedpress.transport.sim.round_trip``); ties break
by dispatch order, so a run is deterministic for a seed when codec time is modeled. Memory held
is one encoded result per client in flight.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from .base import Arrival, ClientLike, ClientResult, Transport
from .sim import ClientProfile, CodecClock, WallCodecClock, pop_due, round_trip


class InProcessTransport(Transport):
    """Clients built on first use by ``client_factory``; arrivals ordered on a virtual clock."""

    def __init__(
        self,
        client_factory: Callable[[int], ClientLike],
        profiles: Sequence[ClientProfile],
        timing: CodecClock | None = None,
    ) -> None:
        self._factory = client_factory
        self._clients: dict[int, ClientLike] = {}
        self.profiles = list(profiles)
        self.timing: CodecClock = timing or WallCodecClock()
        self._heap: list[tuple[float, int, Arrival]] = []
        self._seq = 0
        self._busy: set[int] = set()
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def client(self, client_id: int) -> ClientLike:
        c = self._clients.get(client_id)
        if c is None:
            c = self._clients[client_id] = self._factory(client_id)
        return c

    def dispatch(self, client_id: int, payload: bytes, version: int, *, keyframe: bool = False) -> None:
        if client_id in self._busy:
            raise RuntimeError(f"client {client_id} is already busy")
        result = self.client(client_id).run(payload, version, keyframe=keyframe)
        t = result.timings
        clock = self.timing
        sim = round_trip(
            self.profiles[client_id],
            bytes_down=len(payload),
            bytes_up=len(result.payload),
            samples=result.samples,
            decode_s=clock.codec_seconds("down", "decode", result.raw_bytes_down,
                                         t.get("wall_decode_s", 0.0)),
            encode_s=clock.codec_seconds("up", "encode", result.raw_bytes_up,
                                         t.get("wall_encode_s", 0.0)),
            server_encode_s=clock.codec_seconds("down", "encode", result.raw_bytes_down),
            server_decode_s=clock.codec_seconds("up", "decode", result.raw_bytes_up),
        )
        arrival = Arrival(result, self._now + sim["total_s"], self._now, len(payload), sim)
        self._busy.add(client_id)
        heapq.heappush(self._heap, (arrival.time, self._seq, arrival))
        self._seq += 1

    def next_event(self, deadline: float | None = None) -> Arrival | None:
        arrival, self._now = pop_due(self._heap, deadline, self._now)
        if arrival is not None:
            self._busy.discard(arrival.result.client_id)
        return arrival

    def in_flight(self) -> frozenset[int]:
        return frozenset(self._busy)

    def close(self) -> None:
        self._heap.clear()
        self._busy.clear()

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Clock, arrivals in flight (payloads as uint8 arrays) and each built client's state
        (clients without ``state_dict`` are rebuilt fresh on restore)."""
        heap = []
        for t, seq, a in sorted(self._heap, key=lambda e: (e[0], e[1])):
            r = asdict(a.result)
            r["payload"] = np.frombuffer(a.result.payload, dtype=np.uint8).copy()
            heap.append({"time": t, "seq": seq, "dispatched_at": a.dispatched_at,
                         "bytes_down": a.bytes_down, "sim": dict(a.sim), "result": r})
        clients = {str(c): cl.state_dict() for c, cl in sorted(self._clients.items())
                   if hasattr(cl, "state_dict")}
        return {"now": self._now, "seq": self._seq, "busy": sorted(self._busy), "heap": heap,
                "clients": clients}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self._now = float(sd["now"])
        self._seq = int(sd["seq"])
        self._busy = {int(c) for c in sd["busy"]}
        self._heap = []
        for e in sd["heap"]:
            r = dict(e["result"])
            r["payload"] = np.asarray(r["payload"], dtype=np.uint8).tobytes()
            a = Arrival(ClientResult(**r), float(e["dispatched_at"]), float(e["dispatched_at"]),
                        int(e["bytes_down"]), dict(e["sim"]))
            a.time = float(e["time"])
            self._heap.append((a.time, int(e["seq"]), a))
        heapq.heapify(self._heap)
        for c, csd in sd["clients"].items():
            client = self.client(int(c))
            client.load_state_dict(csd)  # type: ignore[attr-defined]
