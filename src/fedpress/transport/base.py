"""The transport interface the server loop is written against, and the messages it carries.

The loop never learns what kind of clock a transport runs: it asks ``now()``, sends with
``dispatch`` and waits with ``next_event(deadline)``. A virtual-clock transport jumps its clock
to the next event; a wall-clock (network) transport blocks until a message or the deadline.

Dependencies point one way: the engine (``fedpress.fl``) imports this module; nothing in
``fedpress.transport`` imports the engine.

Keyframe contract (stateful uplink streams): when the server could not decode a client's uplink
(a corrupted payload, or a lost/reordered one that the stream refuses), it calls
``dispatch(..., keyframe=True)`` on that client's next dispatch. The transport must deliver the
flag with the model, and the client must reset its uplink stream encoder *before* encoding its
next update, so that update is a keyframe the server can decode from scratch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol


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


class ClientLike(Protocol):
    """A client as transports drive it (``fedpress.fl.client.ClientRunner`` is the real one)."""

    def run(self, payload: bytes, version: int, keyframe: bool = False) -> ClientResult:
        """Decode the model ``payload`` of global ``version``, train, return the encoded delta.

        Parameters
        ----------
        payload : bytes
            The encoded global model (the server's downlink stream for this client).
        version : int
            The global version the model is; echoed as ``ClientResult.base_version``.
        keyframe : bool
            Reset the uplink stream encoder before encoding, so the result is a keyframe.
        """
        ...


class Transport(ABC):
    """Moves encoded models to clients and their results back, on some clock."""

    @abstractmethod
    def now(self) -> float:
        """Current clock time in seconds since the run started."""

    @abstractmethod
    def dispatch(self, client_id: int, payload: bytes, version: int, *, keyframe: bool = False) -> None:
        """Send the encoded global model of ``version`` to a client to train on.

        Parameters
        ----------
        client_id : int
            The client; it must not be in flight already.
        payload : bytes
            The encoded global model.
        version : int
            Its global version (the client echoes it as ``base_version``).
        keyframe : bool
            The server could not follow this client's uplink stream: the client must reset its
            uplink encoder before encoding, so its next payload is a keyframe.
        """

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

    def restarted_clients(self) -> set[int]:
        """Clients whose process started afresh since the last call (their codec stream states
        are gone); the server sends each of them its next model as a keyframe, both ways.
        Transports whose clients cannot restart (simulations) have none."""
        return set()

    def state_dict(self) -> dict[str, Any]:
        """State to resume this transport exactly (arrays and plain types); transports whose
        work in flight cannot be saved (network clients) raise ``NotImplementedError``, and a
        restored server then re-dispatches."""
        raise NotImplementedError(f"{type(self).__name__} cannot checkpoint work in flight")

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore work in flight")
