"""The transport interface the server loop is written against, and the messages it carries.

The loop never learns what kind of clock a transport runs: it asks ``now()``, sends with
``dispatch`` and waits with ``next_event(deadline)``. A virtual-clock transport jumps its clock
to the next event; a wall-clock (network) transport blocks until a message or the deadline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass
class ClientResult:
    """What a client sends back after one dispatch: the encoded delta and facts about the work.

    ``timings`` holds measured client-side wall seconds (``wall_decode_s``, ``wall_train_s``,
    ``wall_encode_s``); ``samples`` is the number of training samples processed (what compute
    time is charged for); ``raw_bytes_down``/``raw_bytes_up`` are the decoded model's and the
    delta's sizes before encoding (what modeled codec time is charged for).
    """

    client_id: int
    base_version: int
    payload: bytes
    num_samples: int
    samples: int
    raw_bytes_down: int
    raw_bytes_up: int
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Arrival:
    """A client result delivered to the server at clock time ``time``.

    ``sim`` holds the transport's account of the round trip (``download_s``, ``compute_s``,
    ``upload_s``, ...); empty for transports that do not model it.
    """

    result: ClientResult
    time: float
    dispatched_at: float
    bytes_down: int
    sim: dict[str, float] = field(default_factory=dict)


class Transport(ABC):
    @abstractmethod
    def now(self) -> float:
        """Current clock time in seconds since the run started."""

    @abstractmethod
    def dispatch(self, client_id: int, payload: bytes, version: int) -> None:
        """Send the encoded global model of ``version`` to a client to train on."""

    @abstractmethod
    def next_event(self, deadline: float | None = None) -> Arrival | None:
        """The next arrival, or None when ``deadline`` came first (the clock is then at the
        deadline) or when nothing is in flight and no deadline was given."""

    @abstractmethod
    def in_flight(self) -> frozenset[int]:
        """Clients dispatched whose results have not been returned by ``next_event`` yet."""

    def close(self) -> None:
        """Abandon work in flight and free resources."""
        return None
