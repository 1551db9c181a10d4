"""The gRPC transport's parts, fast and in one process (real gRPC over loopback, real payloads):
token checks, checkpoint files, the upload journal, chunked streaming, lost clients."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder, StreamEncoder
from fedpress.deploy import checkpoint as ckpt
from fedpress.transport.base import ClientResult
from fedpress.transport.grpc import (
    GrpcClient,
    GrpcTransport,
    Journal,
    RefusedError,
    TransferSlots,
    start_server,
)
from fedpress.transport.grpc import fedpress_v1_pb2 as pb
from fedpress.transport.grpc import fedpress_v1_pb2_grpc as pb_grpc
from fedpress.transport.grpc.auth import (
    AuthError,
    TokenInterceptor,
    call_metadata,
    check_call,
    read_token,
    read_tokens,
    write_tokens,
)
from fedpress.transport.grpc.transport import wire_size

TOKENS = {0: "tok-zero", 1: "tok-one"}


def md(cid: str | None, token: str | None) -> dict[str, str]:
    out = {}
    if cid is not None:
        out["x-fedpress-client"] = cid
    if token is not None:
        out["authorization"] = f"Bearer {token}"
    return out


@pytest.mark.parametrize(
    ("cid", "token", "code", "words"),
    [
        ("0", "tok-zero", grpc.StatusCode.OK, ""),
        ("0", "nope", grpc.StatusCode.UNAUTHENTICATED, "wrong token"),
        ("0", None, grpc.StatusCode.UNAUTHENTICATED, "no token"),
        ("1", "tok-zero", grpc.StatusCode.PERMISSION_DENIED, "does not belong to client 1"),
        ("5", "tok-zero", grpc.StatusCode.PERMISSION_DENIED, "not in this federation"),
        (None, "tok-zero", grpc.StatusCode.UNAUTHENTICATED, "no client id"),
    ],
)
def test_token_check_decides_from_metadata(cid, token, code, words):
    v = check_call(md(cid, token), TOKENS, num_clients=3)
    assert v.code == code
    assert words in v.message
    assert "tok-" not in v.message  # never echo a secret


def test_token_files_roundtrip_and_errors(tmp_path: Path):
    server_file, files = write_tokens(tmp_path, [0, 1, 2])
    tokens = read_tokens(server_file)
    assert sorted(tokens) == [0, 1, 2]
    assert all(read_token(files[c]) == tokens[c] for c in tokens)
    assert len(set(tokens.values())) == 3
    assert (server_file.stat().st_mode & 0o077) == 0  # owner only
    bad = tmp_path / "bad"
    bad.write_text("0 a\n0 b\n")
    with pytest.raises(AuthError, match="appears twice"):
        read_tokens(bad)
    bad.write_text("x token\n")
    with pytest.raises(AuthError, match="expected 'ID TOKEN'"):
        read_tokens(bad)


def test_checkpoint_roundtrip_keeps_types(tmp_path: Path):
    rng = np.random.default_rng(0)
    state = {
        "params": {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(4, dtype=np.int64)},
        "by_client": {3: {"seq": 7, "fp": "abc"}, 10: None},
        "pair": (1, 2.5),
        "blob": b"\x00\x01",
        "flags": {2, 5},
        "scalar": np.float64(0.25),
        "__weird": 1,
    }
    path = tmp_path / "c.fpck"
    ckpt.save(path, state)
    assert not path.with_name("c.fpck.tmp").exists()
    back = ckpt.load(path)
    np.testing.assert_array_equal(back["params"]["w"], state["params"]["w"])
    assert back["params"]["w"].dtype == np.float32
    np.testing.assert_array_equal(back["params"]["b"], np.arange(4))
    assert back["by_client"] == {3: {"seq": 7, "fp": "abc"}, 10: None}
    assert back["pair"] == (1, 2.5) and back["blob"] == b"\x00\x01" and back["flags"] == {2, 5}
    assert back["scalar"] == 0.25 and back["__weird"] == 1
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="object"):
        ckpt.dumps({"x": np.array([object()])})


def test_journal_orders_commits_and_trims(tmp_path: Path):
    j = Journal(tmp_path / "j")
    for i in range(3):
        w = j.begin()
        w.write(bytes([i]) * 10)
        w.commit({"i": i})
    w = j.begin()
    w.write(b"partial")  # never committed: not an entry
    got = list(j.entries())
    assert [s for s, _, _ in got] == [1, 2, 3]
    assert [m["i"] for _, m, _ in got] == [0, 1, 2]
    assert got[2][2].read_bytes() == b"\x02" * 10
    j.trim(2)
    assert [s for s, _, _ in j.entries()] == [3]
    w.abort()
    j2 = Journal(tmp_path / "j")  # reopened: numbering continues
    w = j2.begin()
    w.write(b"x")
    assert w.commit({})[0] == 4
    j2.trim(4)
    j3 = Journal(tmp_path / "j")  # all trimmed: only the checkpoint knows how far it went
    j3.advance(4)
    w = j3.begin()
    w.write(b"y")
    assert w.commit({})[0] == 5


# -- real gRPC, one process ---------------------------------------------------------------------

class EchoRunner:
    """A real client runner in miniature: decodes the model it gets and uploads ``2 * model``
    (raw wire format), so the server can check what crossed the network."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.decoder = StreamDecoder()
        self.encoder = StreamEncoder(Policy.uniform("raw"), stream_id=f"c{cid}/up")
        self.keyframes = 0

    def run(self, payload: bytes, version: int, keyframe: bool = False) -> ClientResult:
        self.keyframes += keyframe
        params = self.decoder.decode(payload)
        up = self.encoder.encode({k: 2 * v for k, v in params.items()})
        return ClientResult(self.cid, version, up, 10 + self.cid, 5, 0, 0, {"m": 1.0}, {"wall_x_s": 0.1})


def model(seed: int, n: int = 50_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(n).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}


@pytest.fixture
def served(tmp_path: Path):
    started = []

    def make(num_clients=2, tokens=TOKENS, chunk=4096, slots=None, **kw):
        t = GrpcTransport(num_clients, Journal(tmp_path / "journal", durable=False), heartbeat_s=0.2,
                          shard_sizes=[100, 200, 300][:num_clients], **kw)
        icpt = TokenInterceptor(tokens, num_clients)
        server, port = start_server(t, "127.0.0.1:0", interceptor=icpt, chunk=chunk, slots=slots)
        started.append(server)
        return t, icpt, port

    yield make
    for s in started:
        s.stop(0)


def test_payload_streams_in_chunks_both_ways(served):
    t, _, port = served(chunk=4096)
    runner = EchoRunner(1)
    client = GrpcClient(f"127.0.0.1:{port}", 1, runner, token="tok-one", chunk=4096, wait_s=0.5)
    th = threading.Thread(target=client.run, daemon=True)
    th.start()
    m = model(1)
    payload = StreamEncoder(Policy.uniform("raw"), stream_id="down").encode(m)
    assert len(payload) > 40 * 4096  # really chunked
    t.dispatch(1, payload, version=3, keyframe=True)
    ev = t.next_event(deadline=t.now() + 20)
    assert ev is not None and ev.result.client_id == 1
    back = StreamDecoder().decode(ev.result.payload)
    for k in m:
        np.testing.assert_array_equal(back[k], 2 * m[k])
    r = ev.result
    assert r.base_version == 3 and runner.keyframes == 1
    assert r.num_samples == 200  # the server's shard size, not the client's claim (11)
    assert r.metrics == {"m": 1.0} and r.timings == {"wall_x_s": 0.1}
    # bytes on the wire: payload + protobuf + gRPC + HTTP/2 framing, counted chunk by chunk
    n_up = -(-len(r.payload) // 4096)
    assert ev.sim["wire_bytes_up"] > len(r.payload) + n_up * (5 + 9)
    assert ev.sim["wire_bytes_down"] >= wire_size(len(payload))
    assert t.in_flight() == frozenset()
    t.close()
    th.join(5)
    assert not th.is_alive()  # told to stop


def test_bad_token_refused_before_the_handler_runs(served):
    t, icpt, port = served()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.FederationStub(ch)
    read = []

    def chunks():
        read.append(1)
        yield pb.UploadChunk(header=pb.ResultHeader(task_id="x", size=10))
        yield pb.UploadChunk(data=b"0123456789")

    with pytest.raises(grpc.RpcError) as exc:
        stub.Upload(chunks(), metadata=call_metadata(0, "wrong"))
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong token" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.Join(pb.JoinRequest(protocol="fedpress.v1"), metadata=call_metadata(1, "tok-zero"))
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert icpt.refused == 2
    assert t.seen_clients() == []  # no handler ran: the transport never heard of either client
    assert not list(t.journal.dir.glob("*"))  # and nothing was written
    ch.close()
    # the client library turns a refusal into a clear, final error
    with pytest.raises(RefusedError, match="wrong token"):
        GrpcClient(f"127.0.0.1:{port}", 0, EchoRunner(0), token="wrong").join()


def test_silent_client_is_reported_lost_and_stale_upload_refused(served):
    t, _, port = served(client_timeout=0.5)
    stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    meta = call_metadata(0, "tok-zero")
    stub.Join(pb.JoinRequest(protocol="fedpress.v1"), metadata=meta)
    t.dispatch(0, b"payload", version=0)
    chunks = list(stub.GetTask(pb.TaskRequest(wait_s=1), metadata=meta))
    task_id = chunks[0].header.task_id
    t0 = time.monotonic()
    ev = t.next_event(deadline=t.now() + 10)  # the client never uploads nor heartbeats
    assert ev is not None and ev.result.metrics == {"lost": 1.0} and ev.result.payload == b""
    assert 0.4 < time.monotonic() - t0 < 5
    reply = stub.Upload(
        iter([pb.UploadChunk(header=pb.ResultHeader(task_id=task_id, size=1)), pb.UploadChunk(data=b"x")]),
        metadata=meta,
    )
    assert not reply.accepted and "not outstanding" in reply.reason


def test_client_asking_again_for_its_fetched_task_is_lost_at_once(served):
    t, _, port = served()
    stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    meta = call_metadata(1, "tok-one")
    t.dispatch(1, b"abc", version=0)
    assert list(stub.GetTask(pb.TaskRequest(wait_s=1), metadata=meta))[0].WhichOneof("kind") == "header"
    # a restarted client process asks for work while its task is out: lost, no timeout needed
    again = list(stub.GetTask(pb.TaskRequest(wait_s=0.1), metadata=meta))
    assert again[0].WhichOneof("kind") == "idle"
    ev = t.next_event(deadline=t.now() + 1)
    assert ev is not None and ev.result.metrics == {"lost": 1.0}


def test_client_metrics_cannot_overwrite_server_fields(served):
    t, _, port = served()
    stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    meta = call_metadata(0, "tok-zero")
    t.dispatch(0, b"abc", version=0)
    task_id = list(stub.GetTask(pb.TaskRequest(wait_s=1), metadata=meta))[0].header.task_id
    head = pb.ResultHeader(task_id=task_id, size=1, metrics={"status": 1.0})
    with pytest.raises(grpc.RpcError) as exc:
        stub.Upload(iter([pb.UploadChunk(header=head), pb.UploadChunk(data=b"x")]), metadata=meta)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "status" in exc.value.details()
    ev = t.next_event(deadline=t.now() + 1)  # the task is given up, the loop does not wait
    assert ev is not None and ev.result.metrics == {"lost": 1.0}


def test_transport_state_resumes_with_journaled_results(tmp_path: Path, served):
    t, _, port = served()
    client = GrpcClient(f"127.0.0.1:{port}", 0, EchoRunner(0), token="tok-zero", wait_s=0.3)
    th = threading.Thread(target=client.run, daemon=True)
    th.start()
    payload = StreamEncoder(Policy.uniform("raw"), stream_id="d").encode(model(2, 100))
    t.dispatch(0, payload, version=0)
    t.dispatch(1, payload, version=0)
    sd = t.state_dict()  # checkpoint while both are out
    deadline = time.monotonic() + 10
    while t.journal.dir.exists() and not list(t.journal.entries()) and time.monotonic() < deadline:
        time.sleep(0.02)  # client 0's result is journaled (acknowledged) ...
    t.close()  # ... then the server "dies" before the loop consumed it
    th.join(5)
    t2 = GrpcTransport(2, Journal(t.journal.dir, durable=False))
    t2.load_state_dict(sd)
    assert t2.in_flight() == frozenset({0, 1})
    ev = t2.next_event(deadline=t2.now() + 0.5)
    assert ev is not None and ev.result.client_id == 0  # replayed from the journal
    back = StreamDecoder().decode(ev.result.payload)
    np.testing.assert_array_equal(back["w"], 2 * model(2, 100)["w"])
    assert t2.now() >= sd["now"]  # the clock continues


# -- transfer slots: a bound on payload transfers in progress --------------------------------------
@pytest.mark.parametrize("limit", [1, 2, 3])
def test_transfer_slots_never_let_more_than_the_limit_through(limit):
    slots = TransferSlots(limit)
    lock, inside, seen = threading.Lock(), [0], []

    def transfer():
        with slots.hold(lambda: True) as held:
            assert held
            with lock:
                inside[0] += 1
                seen.append(inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=transfer) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(seen) == 8 and max(seen) <= limit  # counted here, not by the slots
    assert slots.peak == max(seen) and slots.active == 0 and slots.waited > 0


def test_transfer_slots_without_a_limit_let_everyone_through():
    slots = TransferSlots(0)
    barrier = threading.Barrier(6, timeout=5)  # breaks (raises) unless all six are inside at once

    def transfer():
        with slots.hold(lambda: True):
            barrier.wait()

    threads = [threading.Thread(target=transfer) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert not barrier.broken and slots.peak == 6


def test_a_transfer_whose_call_ended_stops_waiting_and_holds_nothing():
    slots = TransferSlots(1)
    with slots.hold(lambda: True):
        t0 = time.monotonic()
        with slots.hold(lambda: time.monotonic() - t0 < 0.3, poll_s=0.05) as held:
            assert not held
        assert time.monotonic() - t0 < 5
    with slots.hold(lambda: True) as held:  # the slot went back: the next one gets it at once
        assert held and slots.active == 1
    with pytest.raises(ValueError, match=">= 0"):
        TransferSlots(-1)


class GatedRunner(EchoRunner):
    """``EchoRunner`` that trains only once ``go`` is set, so a test can act in between."""

    def __init__(self, cid: int) -> None:
        super().__init__(cid)
        self.got, self.go = threading.Event(), threading.Event()

    def run(self, payload: bytes, version: int, keyframe: bool = False) -> ClientResult:
        self.got.set()
        assert self.go.wait(20)
        return super().run(payload, version, keyframe)


def test_downloads_and_uploads_wait_for_a_free_transfer_slot(served):
    slots = TransferSlots(1)
    t, _, port = served(slots=slots)
    runner = GatedRunner(1)
    client = GrpcClient(f"127.0.0.1:{port}", 1, runner, token="tok-one", chunk=4096, wait_s=0.5)
    th = threading.Thread(target=client.run, daemon=True)
    th.start()
    m = model(2)
    busy, free = threading.Event(), threading.Event()

    def other_transfer():  # another client's transfer, holding the only slot until told
        with slots.hold(lambda: True):
            busy.set()
            free.wait(30)

    # 1) the download waits while the slot is taken
    holder = threading.Thread(target=other_transfer)
    holder.start()
    assert busy.wait(5)
    t.dispatch(1, StreamEncoder(Policy.uniform("raw"), stream_id="down").encode(m), version=0)
    assert not runner.got.wait(1.0)  # nothing reached the client
    free.set()
    holder.join(5)
    assert runner.got.wait(10)  # once the slot is free, the model arrives
    # 2) the upload waits too: take the slot while the client trains, then let it finish
    busy.clear(), free.clear()
    holder = threading.Thread(target=other_transfer)
    holder.start()
    assert busy.wait(5)
    runner.go.set()
    assert t.next_event(deadline=t.now() + 1.0) is None  # its result cannot get in
    end = time.monotonic() + 10
    while client.stats.wire["up"] == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    # while it waits, the client has sent its result header and not one payload byte
    assert 0 < client.stats.wire["up"] < 1000 < len(m["w"]) * 4
    free.set()
    holder.join(5)
    ev = t.next_event(deadline=t.now() + 20)
    assert ev is not None and ev.result.client_id == 1
    back = StreamDecoder().decode(ev.result.payload)
    np.testing.assert_array_equal(back["w"], 2 * m["w"])
    assert slots.peak == 1 and slots.waited >= 2
    t.close()
    th.join(5)
