"""The client side of the gRPC transport: join, then fetch a task, train, upload, until told
to stop; heartbeats run beside it.

A result is kept until the server acknowledges it (durable there) and re-sent after a
reconnect, so a server restart loses nothing the client finished. The server refusing the
client's identity (token, id) is final and raised as :class:`RefusedError`; a server that stays
unreachable for ``reconnect_timeout`` seconds raises ``ConnectionError``.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from fedpress.codec.errors import CodecError
from fedpress.transport.base import ClientResult

from . import fedpress_v1_pb2 as pb
from . import fedpress_v1_pb2_grpc as pb_grpc
from .auth import call_metadata
from .service import CHUNK, MAX_CHUNK, PROTOCOL, channel_options
from .transport import wire_size

log = logging.getLogger("fedpress.grpc.client")
T = TypeVar("T")

_FINAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION)
_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
          grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED)


class RefusedError(RuntimeError):
    """The server refused this client (wrong/missing token, an id it does not own, protocol)."""


class Runner(Protocol):
    def run(self, payload: bytes, version: int) -> ClientResult: ...


@dataclass
class ClientStats:
    tasks: int = 0
    uploads: int = 0
    refused_uploads: int = 0
    reconnects: int = 0
    desyncs: int = 0
    wire: dict[str, int] = field(default_factory=lambda: {"down": 0, "up": 0})


def run_with_keyframe(runner: Any, payload: bytes, version: int, keyframe: bool) -> ClientResult:
    """``runner.run`` with the keyframe flag when it takes one; otherwise reset its uplink
    encoder first (the same effect)."""
    if "keyframe" in inspect.signature(runner.run).parameters:
        return runner.run(payload, version, keyframe=keyframe)
    if keyframe and hasattr(getattr(runner, "encoder", None), "reset"):
        runner.encoder.reset()
    return runner.run(payload, version)


class GrpcClient:
    """One federated client process talking to ``target`` (``HOST:PORT``)."""

    def __init__(
        self,
        target: str,
        client_id: int,
        runner: Any,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        reconnect_timeout: float = 60.0,
        wait_s: float = 10.0,
        chunk: int = CHUNK,
        max_payload_bytes: int = 4 * 1024**3,
        on_event: Callable[[str], None] | None = None,
        on_join: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.client_id = client_id
        self.runner = runner
        self.md = call_metadata(client_id, token)
        self.reconnect_timeout = reconnect_timeout
        self.wait_s = wait_s
        self.chunk = chunk
        self.max_payload_bytes = max_payload_bytes
        self.on_event = on_event or (lambda msg: log.info("%s", msg))
        self.on_join = on_join
        if not 0 < chunk <= MAX_CHUNK:
            raise ValueError(f"chunk size must be in 1..{MAX_CHUNK} bytes")
        opts = channel_options()
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        if credentials is not None:
            self.channel = grpc.secure_channel(target, credentials, options=opts)
        else:
            self.channel = grpc.insecure_channel(target, options=opts)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.stats = ClientStats()
        self.heartbeat_s = 2.0
        self._stop = threading.Event()
        self._task_id = ""
        self._phase = "wait"

    # -- plumbing -----------------------------------------------------------------------------
    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it succeeds; transient failures are retried for up to
        ``reconnect_timeout`` seconds, refusals raise at once."""
        first_fail: float | None = None
        delay = 0.1
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code in _FINAL:
                    raise RefusedError(f"{what}: {exc.details()}") from None
                if code not in _RETRY and code is not None:
                    raise
                now = time.monotonic()
                if first_fail is None:
                    first_fail = now
                    self.stats.reconnects += 1
                    self.on_event(f"{what}: server unreachable ({code.name if code else '?'}), retrying")
                if self._stop.is_set():
                    raise ConnectionError(f"{what}: stopped while the server was unreachable") from None
                if now - first_fail > self.reconnect_timeout:
                    raise ConnectionError(
                        f"{what}: server {self.target} unreachable for {self.reconnect_timeout:.0f}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                req = pb.HeartbeatRequest(task_id=self._task_id, phase=self._phase)
                reply = self.stub.Heartbeat(req, metadata=self.md, timeout=max(2.0, self.heartbeat_s * 2))
                if reply.stop:
                    self._stop.set()
            except grpc.RpcError:
                continue  # the main loop notices and reconnects; a heartbeat is best effort

    # -- protocol -----------------------------------------------------------------------------
    def join(self) -> pb.JoinReply:
        reply = self._retry(
            "join", lambda: self.stub.Join(pb.JoinRequest(protocol=PROTOCOL), metadata=self.md, timeout=10)
        )
        self.heartbeat_s = max(0.05, reply.heartbeat_s)
        return reply

    def _fetch(self) -> tuple[str, pb.TaskHeader | None, bytes]:
        """("task", header, payload), ("idle", None, b"") or ("stop", None, b"").

        The payload is written into one buffer of the announced size as chunks arrive, and that
        buffer is what the runner gets: the client holds the model once, not twice."""
        header: pb.TaskHeader | None = None
        buf = bytearray()
        got = 0
        wire = 0
        for msg in self.stub.GetTask(pb.TaskRequest(wait_s=self.wait_s), metadata=self.md):
            wire += wire_size(msg.ByteSize())
            kind = msg.WhichOneof("kind")
            if kind == "stop":
                return "stop", None, b""
            if kind == "idle":
                return "idle", None, b""
            if kind == "header":
                header = msg.header
                if header.size > self.max_payload_bytes:
                    raise ValueError(f"task of {header.size} bytes is over this client's limit")
                buf = bytearray(header.size)
            elif kind == "data":
                n = len(msg.data)
                if header is None or got + n > header.size:
                    raise ValueError("server sent task data without a header or past its size")
                buf[got : got + n] = msg.data
                got += n
        if header is None or got != header.size:
            raise grpc.RpcError()  # cut short: treated as a broken link below
        self.stats.wire["down"] += wire
        return "task", header, buf  # type: ignore[return-value]  # bytes-like, not copied

    def _chunks(self, task_id: str, r: ClientResult, granted: threading.Event) -> Iterator[pb.UploadChunk]:
        head = pb.ResultHeader(
            task_id=task_id, base_version=r.base_version, size=len(r.payload), num_samples=r.num_samples,
            samples=r.samples, raw_bytes_down=r.raw_bytes_down, raw_bytes_up=r.raw_bytes_up,
            metrics={k: float(v) for k, v in r.metrics.items()},
            timings={k: float(v) for k, v in r.timings.items()},
        )
        msg = pb.UploadChunk(header=head)
        self.stats.wire["up"] += wire_size(msg.ByteSize())
        yield msg
        granted.wait()  # the server holds a transfer slot for this upload (or has answered already)
        view = memoryview(r.payload)
        for off in range(0, len(r.payload), self.chunk):
            msg = pb.UploadChunk(data=bytes(view[off : off + self.chunk]))
            self.stats.wire["up"] += wire_size(msg.ByteSize())
            yield msg

    def _upload(self, task_id: str, r: ClientResult) -> None:
        self._phase = "upload"
        reply = self._retry("upload", lambda: self._upload_once(task_id, r))
        if reply.accepted:
            self.stats.uploads += 1
            self.on_event(f"client {self.client_id}: result of task {task_id} accepted ({len(r.payload)} bytes)")
        else:
            self.stats.refused_uploads += 1
            self.on_event(f"result of {task_id} not accepted: {reply.reason}")

    def _upload_once(self, task_id: str, r: ClientResult) -> pb.UploadReply:
        """One Upload call: the header goes at once, the payload once the server's initial
        metadata says it holds a transfer slot for it (``service.TransferSlots``); a server that
        answers at once (refused, duplicate) or fails ends the wait too."""
        granted = threading.Event()
        call = self.stub.Upload.future(self._chunks(task_id, r, granted), metadata=self.md)
        try:
            call.initial_metadata()  # blocks until the server sends it or the call ends
        finally:
            granted.set()
        return call.result()

    def run(self) -> ClientStats:
        """Serve tasks until the server says stop."""
        reply = self.join()
        if self.on_join is not None:
            self.on_join()
        self.on_event(f"client {self.client_id} joined run {reply.run_id} at {self.target}")
        hb = threading.Thread(target=self._heartbeats, name="fedpress-heartbeat", daemon=True)
        hb.start()
        try:
            while not self._stop.is_set():
                self._phase, self._task_id = "wait", ""
                try:
                    kind, header, payload = self._retry("get task", self._fetch_or_raise)
                except grpc.RpcError:
                    continue
                if kind == "stop":
                    break
                if kind == "idle" or header is None:
                    continue
                self.stats.tasks += 1
                self._task_id, self._phase = header.task_id, "train"
                try:
                    result = run_with_keyframe(self.runner, payload, header.version, header.keyframe)
                except CodecError as exc:
                    result = self._desync(header, len(payload), exc)
                del payload
                if self._stop.is_set():
                    break
                self._upload(header.task_id, result)
        finally:
            self._stop.set()
            self.channel.close()  # cancels a heartbeat in flight ...
            # ... so the thread ends now. Left running, a daemon thread inside gRPC's C core when
            # the interpreter exits can abort the process ("terminate called without an active
            # exception", seen once in CI after a client had finished its work).
            hb.join(timeout=max(5.0, 3 * self.heartbeat_s))
        return self.stats

    def _desync(self, header: pb.TaskHeader, size: int, exc: CodecError) -> ClientResult:
        """A model this client cannot decode (its stream state is gone, e.g. it restarted, or
        the payload is corrupt): answer with an empty result, which the server rejects and
        follows with a keyframe, instead of leaving the federation."""
        self.stats.desyncs += 1
        self.on_event(f"client {self.client_id}: cannot decode task {header.task_id} ({exc}); "
                      "asking for a keyframe")
        return ClientResult(client_id=self.client_id, base_version=header.version, payload=b"", num_samples=0,
                            samples=0, raw_bytes_down=size, raw_bytes_up=0, metrics={"desync": 1.0})

    def _fetch_or_raise(self) -> tuple[str, pb.TaskHeader | None, bytes]:
        try:
            return self._fetch()
        except grpc.RpcError:
            raise
        except ValueError as exc:
            raise RefusedError(f"bad task from the server: {exc}") from None
