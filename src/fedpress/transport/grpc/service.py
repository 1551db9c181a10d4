"""The gRPC handlers of ``fedpress.v1.Federation``: they move chunks between the network and a
:class:`~fedpress.transport.grpc.transport.GrpcTransport`, and start/stop the gRPC server.

Handlers only run for calls the token interceptor let through; the client id comes from the
checked metadata, never from a request body. Results stream to the journal chunk by chunk and
the client hears "accepted" only once the result is durable.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from . import fedpress_v1_pb2 as pb
from . import fedpress_v1_pb2_grpc as pb_grpc
from .auth import TokenInterceptor, client_id_of
from .transport import GrpcTransport, wire_size

PROTOCOL = "fedpress.v1"
CHUNK = 1 << 20
#: initial-metadata key of an Upload: the server has a transfer slot for it, send the payload
SLOT_GRANTED = "x-fedpress-slot"
log = logging.getLogger("fedpress.grpc")

_KEY = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: fields of the server's arrival event a client's metrics must not overwrite
_RESERVED = {
    "event", "t", "client", "base_version", "version", "staleness", "status", "reason",
    "num_samples", "samples", "bytes_up", "raw_bytes_up", "bytes_down", "raw_bytes_down",
    "dispatched_at", "server_decode_s", "wall_server_decode_s", "lost",
}
_MAX_KEYS = 64


#: the largest chunk either end may send; receivers accept up to this whatever their own size
MAX_CHUNK = 16 << 20


#: the most a connection's socket reads at once: a bound on the buffer each connection's pending
#: read holds (gRPC grows it up to 4 MiB after large reads). A bound, not a measured saving: its
#: effect on the server's peak was within the noise of ``bench_grpc_memory.py``
MAX_READ_CHUNK = 256 * 1024


def channel_options() -> list[tuple[str, Any]]:
    """Options both ends use: room for one chunk per message, socket reads of at most
    ``MAX_READ_CHUNK``, and keepalive pings so a dead peer is noticed even while a long
    transfer or training step is under way."""
    return [
        ("grpc.experimental.tcp_max_read_chunk_size", MAX_READ_CHUNK),
        ("grpc.max_receive_message_length", MAX_CHUNK + 64 * 1024),
        ("grpc.max_send_message_length", MAX_CHUNK + 64 * 1024),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]


def clean_fields(values: Mapping[str, float], what: str, *, timings: bool) -> dict[str, float]:
    """A client's metrics/timings, refused if they could overwrite the server's own fields."""
    if len(values) > _MAX_KEYS:
        raise ValueError(f"{what}: more than {_MAX_KEYS} entries")
    out = {}
    for k, v in values.items():
        if not _KEY.match(k) or k in _RESERVED:
            raise ValueError(f"{what}: key {k[:48]!r} is not allowed")
        if timings != k.startswith("wall_") or k.startswith("wire_"):
            raise ValueError(f"{what}: key {k!r} is not allowed here")
        out[k] = float(v)
    return out


class TransferSlots:
    """At most ``limit`` payload transfers (task downloads and result uploads) at once.

    Why: every transfer in progress holds gRPC's buffers for its stream (up to an HTTP/2 window,
    which BDP probing sizes to the link: megabytes on a fast one) and a chunk or two. With a
    limit, the server's memory is bounded by ``limit`` transfers whatever the number of
    clients. A transfer past the limit waits, and costs nothing meanwhile: a download's header is
    not sent yet, and an upload's client sends its header, then waits for the server's initial
    metadata (``SLOT_GRANTED``, sent once the slot is held) before any payload byte. Its client
    keeps heartbeating. The price is time when clients sit behind independent slow links:
    transfers that could have overlapped queue instead. ``limit=0`` means no limit.
    """

    def __init__(self, limit: int = 0) -> None:
        if limit < 0:
            raise ValueError(f"max_transfers must be >= 0 (0: no limit), got {limit}")
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit) if limit else None
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.waited = 0

    @contextmanager
    def hold(self, alive: Callable[[], bool], poll_s: float = 0.5) -> Iterator[bool]:
        """Hold a slot for the body of the ``with``; yields False (holding nothing) if the
        caller's call ended while it waited."""
        if self._sem is not None and not self._sem.acquire(blocking=False):
            with self._lock:
                self.waited += 1
            while not self._sem.acquire(timeout=poll_s):
                if not alive():
                    yield False
                    return
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield True
        finally:
            with self._lock:
                self.active -= 1
            if self._sem is not None:
                self._sem.release()


class FederationService(pb_grpc.FederationServicer):
    def __init__(self, transport: GrpcTransport, chunk: int = CHUNK, slots: TransferSlots | None = None) -> None:
        self.t = transport
        self.chunk = chunk
        self.slots = slots or TransferSlots(0)

    def _refuse(self, context: grpc.ServicerContext, cid: int, task_id: str, why: str) -> None:
        """A malformed upload: the task is given up (the loop must not wait for it) and the
        client hears why."""
        log.warning("client %d: malformed upload: %s", cid, why)
        self.t.give_up(cid, task_id, why)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        cid = client_id_of(context.invocation_metadata())
        if request.protocol != PROTOCOL:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol {request.protocol[:32]!r} is not supported (server speaks {PROTOCOL})",
            )
        self.t.joined(cid)
        log.info("client %d joined from %s", cid, context.peer())
        reply = pb.JoinReply(run_id=self.t.run_id, heartbeat_s=self.t.heartbeat_s, num_clients=self.t.num_clients)
        self.t.count_control(wire_size(request.ByteSize()) + wire_size(reply.ByteSize()))
        return reply

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        cid = client_id_of(context.invocation_metadata())
        self.t.touch(cid)
        stop = self.t.closed
        if stop:
            self.t.stop_sent(cid)
        reply = pb.HeartbeatReply(stop=stop)
        self.t.count_control(wire_size(request.ByteSize()) + wire_size(reply.ByteSize()))
        return reply

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskChunk]:
        cid = client_id_of(context.invocation_metadata())
        got = self.t.wait_task(cid, request.wait_s, context.is_active)
        if got == "stop":
            self.t.stop_sent(cid)
            yield pb.TaskChunk(stop=True)
            return
        if got is None or isinstance(got, str) or got.payload is None:
            yield pb.TaskChunk(idle=True)
            return
        task, payload = got, got.payload
        with self.slots.hold(context.is_active) as held:
            if not held:
                return  # the client went away while its download waited for a slot
            started = self.t.now()
            head = pb.TaskChunk(
                header=pb.TaskHeader(task_id=task.task_id, version=task.version, keyframe=task.keyframe,
                                     size=len(payload))
            )
            nbytes = wire_size(head.ByteSize())
            yield head
            view = memoryview(payload)
            for off in range(0, len(payload), self.chunk):
                msg = pb.TaskChunk(data=bytes(view[off : off + self.chunk]))
                nbytes += wire_size(msg.ByteSize())
                yield msg  # gRPC pulls the next chunk only once this one is sent (flow control)
            self.t.task_sent(task, nbytes, started)
        log.info("client %d: sent task %s (v%d, %d bytes)", cid, task.task_id, task.version, len(payload))

    def Upload(self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext) -> pb.UploadReply:
        cid = client_id_of(context.invocation_metadata())
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload must start with a result header")
        h = first.header
        ok, why = self.t.check_upload(cid, h.task_id, h.size)
        if not ok:
            log.warning("client %d: upload refused: %s", cid, why)
            return pb.UploadReply(accepted=False, reason=why)
        if why == "dup":
            return pb.UploadReply(accepted=True, reason="already received")
        try:
            header = {
                "base_version": int(h.base_version),
                "num_samples": int(h.num_samples),
                "samples": int(h.samples),
                "raw_bytes_down": int(h.raw_bytes_down),
                "raw_bytes_up": int(h.raw_bytes_up),
                "metrics": clean_fields(h.metrics, "metrics", timings=False),
                "timings": clean_fields(h.timings, "timings", timings=True),
            }
        except ValueError as exc:
            self._refuse(context, cid, h.task_id, f"bad result header: {exc}")
        with self.slots.hold(context.is_active) as held:
            if not held:
                context.abort(grpc.StatusCode.CANCELLED, "the upload ended while it waited for a transfer slot")
            # the client sends its payload only after this: a waiting upload costs its header alone
            context.send_initial_metadata(((SLOT_GRANTED, "1"),))
            t0 = time.monotonic()
            nbytes = wire_size(first.ByteSize())
            writer = self.t.journal.begin()
            try:
                for msg in request_iterator:
                    if msg.WhichOneof("kind") != "data":
                        self._refuse(context, cid, h.task_id, "a second header inside one upload")
                    if writer.size + len(msg.data) > h.size:
                        self._refuse(context, cid, h.task_id, f"upload is longer than the {h.size} bytes announced")
                    writer.write(msg.data)
                    nbytes += wire_size(msg.ByteSize())
                if writer.size != h.size:
                    # the client closed the stream early: a broken client, not a broken link
                    self._refuse(context, cid, h.task_id, f"upload ended after {writer.size} of {h.size} bytes")
            except BaseException:
                writer.abort()
                raise
            extra = {"wall_upload_s": time.monotonic() - t0, "wire_bytes_up": float(nbytes)}
        self.t.count_up(nbytes)
        ok, why = self.t.commit_upload(cid, h.task_id, header, writer, extra)
        if ok:
            log.info("client %d: result of %s durable (%d bytes)", cid, h.task_id, h.size)
        else:
            log.warning("client %d: upload not accepted: %s", cid, why)
        return pb.UploadReply(accepted=ok, reason=why)


def start_server(
    transport: GrpcTransport,
    address: str,
    *,
    interceptor: TokenInterceptor,
    credentials: grpc.ServerCredentials | None = None,
    chunk: int = CHUNK,
    slots: TransferSlots | None = None,
) -> tuple[grpc.Server, int]:
    """Serve ``transport`` on ``address`` (``HOST:0`` picks a free port); returns the server
    and the port it listens on. ``slots`` bounds the payload transfers in progress at once
    (default: no bound; see :class:`TransferSlots`)."""
    if not 0 < chunk <= MAX_CHUNK:
        raise ValueError(f"chunk size must be in 1..{MAX_CHUNK} bytes")
    workers = 2 * transport.num_clients + 8  # each client holds at most a poll and a heartbeat
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedpress-grpc"),
        interceptors=[interceptor],
        options=channel_options(),
        maximum_concurrent_rpcs=4 * transport.num_clients + 16,
    )
    pb_grpc.add_FederationServicer_to_server(FederationService(transport, chunk, slots), server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
