"""The server side of the gRPC transport: the :class:`Transport` the server loop drives, on a
real clock, with clients in other processes.

``dispatch`` queues a task for the client's next ``GetTask`` call; ``next_event(deadline)``
blocks until an upload is durable (journaled) or the deadline passes. A client that stops
talking (no heartbeat for ``client_timeout`` seconds), never shows up (``join_timeout``), or
asks for new work while its task is out (it restarted) is reported as a *lost* arrival: a
result with an empty payload and ``metrics["lost"] = 1``, which the loop rejects like any
undecodable payload, so sync strategies stop waiting for it and async ones free its slot (and
the next dispatch to it carries a keyframe).

Everything here is thread-safe: gRPC handler threads and the server loop meet under one
condition variable. Memory: one queued payload reference per task (the raw downlink is one
shared object), and uploads go to disk as they stream in.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedpress.transport.base import Arrival, ClientResult, Transport

from .journal import Journal

log = logging.getLogger("fedpress.grpc")

#: gRPC length prefix per message, HTTP/2 DATA frame header per 16 KiB frame
GRPC_PREFIX = 5
H2_FRAME = 9
H2_MAX_FRAME = 16384


def wire_size(message_bytes: int) -> int:
    """Bytes one gRPC message occupies in HTTP/2 DATA frames (protobuf + framing; the HPACK
    header blocks and TCP/IP headers are not counted here)."""
    n = message_bytes + GRPC_PREFIX
    return n + H2_FRAME * max(1, -(-n // H2_MAX_FRAME))


@dataclass
class Task:
    """One dispatch, from queueing until its result (or its loss) reaches the loop."""

    task_id: str
    client_id: int
    version: int
    keyframe: bool
    dispatched_at: float
    bytes_down: int
    payload: bytes | None = field(default=None, repr=False)
    sent: bool = False  # the whole payload went out at least once
    received: int = 0  # journal sequence number once the result is durable (-1: lost)
    fetched_at: float = 0.0
    download_s: float = 0.0
    wire_down: int = 0

    def state(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("payload")
        return d


@dataclass
class _Pending:
    task: Task
    time: float
    header: dict[str, Any]
    path: Path | None
    seq: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class GrpcTransport(Transport):
    """See the module docstring. ``shard_sizes`` (the server's own partition) replaces the
    sample counts clients claim, so a client cannot inflate its FedAvg weight."""

    def __init__(
        self,
        num_clients: int,
        journal: Journal,
        *,
        heartbeat_s: float = 2.0,
        client_timeout: float = 10.0,
        join_timeout: float = 120.0,
        max_payload_bytes: int = 4 * 1024**3,
        shard_sizes: Sequence[int] | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self.num_clients = num_clients
        self.journal = journal
        self.heartbeat_s = heartbeat_s
        self.client_timeout = client_timeout
        self.join_timeout = join_timeout
        self.max_payload_bytes = max_payload_bytes
        self.shard_sizes = list(shard_sizes) if shard_sizes is not None else None
        self.checkpoint = checkpoint
        self.run_id = uuid.uuid4().hex[:12]
        self._cond = threading.Condition()
        self._t0 = time.monotonic()
        self._offset = 0.0
        self._started = self.now()
        self._next_task = 1
        self._tasks: dict[int, Task] = {}
        self._queue: deque[_Pending] = deque()
        self._last_seen: dict[int, float] = {}
        self._last_received: dict[int, str] = {}
        self._consumed = 0  # journal seq of the last result handed to the loop
        self._dirty = True
        self._closed = False
        self._stopped_clients: set[int] = set()
        self._restarted: set[int] = set()  # clients that joined again: codec streams lost
        self._served: set[int] = set()  # clients that fetched a task from this process
        self._restored = False
        self.wire = {"down": 0, "up": 0, "control": 0}
        self.lost = 0

    # -- Transport ----------------------------------------------------------------------------
    def now(self) -> float:
        return self._offset + time.monotonic() - self._t0

    def dispatch(self, client_id: int, payload: bytes, version: int, *, keyframe: bool = False) -> None:
        with self._cond:
            if client_id in self._tasks:
                raise RuntimeError(f"client {client_id} is already busy")
            task = Task(
                f"{self.run_id}-{self._next_task}", client_id, version, keyframe, self.now(),
                len(payload), payload,
            )
            self._next_task += 1
            self._tasks[client_id] = task
            self._dirty = True
            self._cond.notify_all()

    def next_event(self, deadline: float | None = None) -> Arrival | None:
        if self.checkpoint is not None and self._dirty:
            self._dirty = False
            self.checkpoint()  # the loop is between events: its state is consistent now
        with self._cond:
            while True:
                if self._queue:
                    p = self._queue.popleft()
                    break
                self._expire()
                if self._queue:
                    continue
                now = self.now()
                if deadline is not None and now >= deadline:
                    return None
                if not self._tasks and deadline is None:
                    return None
                wait = self.heartbeat_s
                if deadline is not None:
                    wait = min(wait, deadline - now)
                self._cond.wait(max(wait, 0.0))
        return self._arrival(p)

    def in_flight(self) -> frozenset[int]:
        with self._cond:
            return frozenset(self._tasks)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._tasks.clear()
            self._queue.clear()
            self._cond.notify_all()

    def restarted_clients(self) -> set[int]:
        with self._cond:
            restarted, self._restarted = self._restarted, set()
        return restarted

    # -- arrivals -----------------------------------------------------------------------------
    def _arrival(self, p: _Pending) -> Arrival:
        h, task = p.header, p.task
        payload = p.path.read_bytes() if p.path is not None else b""
        if p.path is not None and self.checkpoint is None:
            self.journal.trim(p.seq)  # nothing to resume from: the entry has done its job
        cid = task.client_id
        claimed = int(h.get("num_samples", 0))
        num_samples = self.shard_sizes[cid] if self.shard_sizes is not None else claimed
        result = ClientResult(
            client_id=cid,
            base_version=task.version,  # what the server sent, not what the client says
            payload=payload,
            num_samples=num_samples,
            samples=int(h.get("samples", 0)),
            raw_bytes_down=int(h.get("raw_bytes_down", 0)),
            raw_bytes_up=int(h.get("raw_bytes_up", 0)),
            metrics={str(k): float(v) for k, v in h.get("metrics", {}).items()},
            timings={str(k): float(v) for k, v in h.get("timings", {}).items()},
        )
        with self._cond:
            if self._tasks.get(cid) is task:
                del self._tasks[cid]
            if p.seq:
                self._consumed = max(self._consumed, p.seq)
            self._dirty = True
        sim = {
            **p.extra,
            "wall_fetch_wait_s": max(0.0, task.fetched_at - task.dispatched_at) if task.sent else 0.0,
            "wall_download_s": task.download_s,
            "wire_bytes_down": float(task.wire_down),
            "task_seq": float(task.task_id.rsplit("-", 1)[-1]),
        }
        return Arrival(result, p.time, task.dispatched_at, task.bytes_down, sim)

    def _lose(self, task: Task, why: str) -> None:
        """Report ``task``'s client as lost (lock held)."""
        if task.received:
            return
        task.received = -1
        self.lost += 1
        log.warning("client %d lost (%s); task %s given up", task.client_id, why, task.task_id)
        header = {"metrics": {"lost": 1.0}}
        self._queue.append(_Pending(task, self.now(), header, None))
        self._cond.notify_all()

    def _expire(self) -> None:
        """Give up tasks whose clients went silent (lock held)."""
        now = self.now()
        for task in list(self._tasks.values()):
            if task.received:
                continue
            seen = self._last_seen.get(task.client_id)
            if seen is not None:
                if now - seen > self.client_timeout:
                    self._lose(task, f"silent for {now - seen:.1f}s")
            elif now - max(task.dispatched_at, self._started) > self.join_timeout:
                self._lose(task, f"never connected within {self.join_timeout:.0f}s")

    # -- called by the gRPC service -----------------------------------------------------------
    def joined(self, client_id: int) -> None:
        """A client process called Join: it starts with empty codec streams (a client joins
        once per process). If this server already streamed to that id (it fetched a task, or
        the server resumed from a checkpoint and the id joins again), both streams must
        restart from a keyframe."""
        with self._cond:
            if client_id in self._served or self._restored:
                self._restarted.add(client_id)
            self._last_seen[client_id] = self.now()

    def touch(self, client_id: int) -> None:
        with self._cond:
            self._last_seen[client_id] = self.now()

    @property
    def closed(self) -> bool:
        return self._closed

    def stop_sent(self, client_id: int) -> None:
        with self._cond:
            self._stopped_clients.add(client_id)
            self._cond.notify_all()

    def wait_stopped(self, clients: Sequence[int], timeout: float) -> bool:
        """After ``close``: wait until every client in ``clients`` was told to stop."""
        end = time.monotonic() + timeout
        with self._cond:
            while not set(clients) <= self._stopped_clients:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def seen_clients(self) -> list[int]:
        with self._cond:
            return sorted(self._last_seen)

    def wait_task(self, client_id: int, wait_s: float, alive: Callable[[], bool]) -> Task | str | None:
        """The client's task (``Task``), ``"stop"`` when the run is over, or None after
        ``wait_s`` without work."""
        end = time.monotonic() + max(0.0, min(wait_s, 60.0))
        with self._cond:
            self._last_seen[client_id] = self.now()
            while True:
                if self._closed:
                    return "stop"
                task = self._tasks.get(client_id)
                if task is not None and not task.received:
                    if task.payload is None:
                        # it had this task already and asks again: it restarted and lost it
                        self._lose(task, "asked for new work while its task was out (restarted)")
                        return None
                    return task
                left = end - time.monotonic()
                if left <= 0 or not alive():
                    return None
                self._cond.wait(min(left, 1.0))
                self._last_seen[client_id] = self.now()

    def task_sent(self, task: Task, wire_bytes: int, started: float) -> None:
        with self._cond:
            task.sent = True
            task.fetched_at = started
            task.download_s = self.now() - started
            task.wire_down = wire_bytes
            task.payload = None  # the client has it; a second request means it lost it
            self._served.add(task.client_id)
            self.wire["down"] += wire_bytes
            self._dirty = True

    def check_upload(self, client_id: int, task_id: str, size: int) -> tuple[bool, str]:
        """May ``client_id`` upload the result of ``task_id``? (False, why) if not; (True, "dup")
        for a result the server already holds."""
        if size > self.max_payload_bytes:
            return False, f"payload of {size} bytes is over the server's limit of {self.max_payload_bytes}"
        with self._cond:
            self._last_seen[client_id] = self.now()
            if self._last_received.get(client_id) == task_id:
                return True, "dup"
            task = self._tasks.get(client_id)
            if task is None or task.task_id != task_id or task.received:
                return False, f"task {task_id} is not outstanding for client {client_id} (stale or given up)"
            return True, ""

    def give_up(self, client_id: int, task_id: str, why: str) -> None:
        """Report a task lost because its upload was malformed."""
        with self._cond:
            task = self._tasks.get(client_id)
            if task is not None and task.task_id == task_id:
                self._lose(task, why)

    def commit_upload(
        self, client_id: int, task_id: str, header: dict[str, Any], writer: Any, extra: dict[str, float]
    ) -> tuple[bool, str]:
        """Journal a fully received upload, then queue it for the loop; the reply to the client
        says "accepted" only after this returns True."""
        with self._cond:
            task = self._tasks.get(client_id)
            if self._last_received.get(client_id) == task_id:
                writer.abort()
                return True, "already received"
            if task is None or task.task_id != task_id or task.received:
                writer.abort()
                return False, f"task {task_id} was given up while it uploaded"
            seq, path = writer.commit({"client_id": client_id, "task_id": task_id, **header, "extra": extra})
            task.received = seq
            self._last_received[client_id] = task_id
            self._last_seen[client_id] = self.now()
            self._queue.append(_Pending(task, self.now(), header, path, seq, extra))
            self._cond.notify_all()
        return True, ""

    def count_control(self, nbytes: int) -> None:
        with self._cond:
            self.wire["control"] += nbytes

    def count_up(self, nbytes: int) -> None:
        with self._cond:
            self.wire["up"] += nbytes

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data: enough to continue after a restart. Payloads of queued tasks are not
        kept: a client that had not fetched its task, or whose loss the loop had not consumed
        yet, is reported lost again after the restart (and re-dispatched by the strategy)."""
        with self._cond:
            return {
                "run_id": self.run_id,
                "now": self.now(),
                "next_task": self._next_task,
                "consumed": self._consumed,
                "tasks": [t.state() for t in self._tasks.values()],
                "last_received": {str(k): v for k, v in self._last_received.items()},
                "wire": dict(self.wire),
                "lost": self.lost,
            }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`, then queue the journaled results the checkpoint had
        not consumed yet (they were acknowledged to their clients)."""
        with self._cond:
            self._restored = True  # live clients do not join again; one that does restarted
            self.run_id = sd["run_id"]
            self._offset = float(sd["now"])
            self._t0 = time.monotonic()
            self._started = self.now()
            self._next_task = int(sd["next_task"])
            self._consumed = int(sd["consumed"])
            self.journal.advance(self._consumed)
            self._tasks = {}
            for t in sd["tasks"]:
                task = Task(**{**t, "received": 0})
                self._tasks[task.client_id] = task
            self._last_received = {int(k): v for k, v in sd["last_received"].items()}
            self.wire = {k: int(v) for k, v in sd["wire"].items()}
            self.lost = int(sd["lost"])
            self._queue.clear()
            for seq, meta, path in self.journal.entries(after=self._consumed):
                task = self._tasks.get(int(meta["client_id"]))
                if task is None or task.task_id != meta["task_id"]:
                    continue
                task.received = seq
                self._last_received[task.client_id] = task.task_id
                self._queue.append(_Pending(task, self.now(), meta, path, seq, meta.get("extra", {})))
            self._dirty = True

    @property
    def consumed(self) -> int:
        return self._consumed
