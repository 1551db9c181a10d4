"""In-process transport on a virtual clock: clients run here, their round trips are simulated.

A dispatch runs the client at once (its result only depends on the model it was sent) and puts
the arrival on a heap at ``now + round trip`` (``fedpress.fl.profiles.round_trip``); ties break
by dispatch order, so a run is deterministic for a seed when timing is modeled. Memory held is
one encoded result per client in flight.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Protocol

from fedpress.fl.profiles import ClientProfile, TimingModel, round_trip

from .base import Arrival, ClientResult, Transport


class ClientLike(Protocol):
    def run(self, payload: bytes, version: int) -> ClientResult: ...


class InProcessTransport(Transport):
    def __init__(
        self,
        client_factory: Callable[[int], ClientLike],
        profiles: Sequence[ClientProfile],
        timing: TimingModel | None = None,
    ) -> None:
        self._factory = client_factory
        self._clients: dict[int, ClientLike] = {}
        self.profiles = list(profiles)
        self.timing = timing or TimingModel()
        self._heap: list[tuple[float, int, Arrival]] = []
        self._seq = itertools.count()
        self._busy: set[int] = set()
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def client(self, client_id: int) -> ClientLike:
        c = self._clients.get(client_id)
        if c is None:
            c = self._clients[client_id] = self._factory(client_id)
        return c

    def dispatch(self, client_id: int, payload: bytes, version: int) -> None:
        if client_id in self._busy:
            raise RuntimeError(f"client {client_id} is already busy")
        result = self.client(client_id).run(payload, version)
        t = result.timings
        sim = round_trip(
            self.profiles[client_id],
            bytes_down=len(payload),
            bytes_up=len(result.payload),
            samples=result.samples,
            decode_s=self.timing.codec_seconds(result.raw_bytes_down, t.get("wall_decode_s", 0.0)),
            encode_s=self.timing.codec_seconds(result.raw_bytes_up, t.get("wall_encode_s", 0.0)),
        )
        arrival = Arrival(result, self._now + sim["total_s"], self._now, len(payload), sim)
        self._busy.add(client_id)
        heapq.heappush(self._heap, (arrival.time, next(self._seq), arrival))

    def next_event(self, deadline: float | None = None) -> Arrival | None:
        if not self._heap or (deadline is not None and self._heap[0][0] > deadline):
            if deadline is not None:
                self._now = max(self._now, deadline)
            return None
        t, _, arrival = heapq.heappop(self._heap)
        self._now = max(self._now, t)
        self._busy.discard(arrival.result.client_id)
        return arrival

    def in_flight(self) -> frozenset[int]:
        return frozenset(self._busy)

    def close(self) -> None:
        self._heap.clear()
        self._busy.clear()
