"""End to end over loopback with real processes: ``fedpress server`` / ``client`` / ``launch``.

Tiny runs (sklearn digits, the MLP, 2-3 clients, a few rounds) so each scenario takes seconds
plus process start-up. Scenarios: sync FedAvg over TLS equals the in-process simulation and
refuses an impostor; FedFa through ``fedpress launch``; a client killed mid-upload (timed out,
then back with a keyframe); the server killed and restarted mid-run (resumes, loses nothing it
acknowledged).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fedpress
from fedpress.metrics.events import read_events

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quick_digits.yaml")
SRC = str(Path(fedpress.__file__).resolve().parents[1])
FAST = ["run.max_updates=null", "run.eval_every=1", "run.plots=false", "run.torch_threads=1"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def fp(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedpress.cli", *args]


_STARTED: list[subprocess.Popen] = []


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    fh = log.open("w")
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env(), text=True)
    fh.close()
    _STARTED.append(p)
    return p


@pytest.fixture(autouse=True)
def _reap():
    """Whatever a test started is stopped when it ends, passed or failed."""
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_file(path: Path, proc: subprocess.Popen, timeout: float = 600) -> str:
    end = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"process exited early ({proc.returncode})"
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    end = time.monotonic() + timeout
    rcs = []
    try:
        for p in procs:
            rcs.append(p.wait(max(1.0, end - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rcs


def arrivals(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["event"] == "arrival"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found (needed to make test certificates)")
    d = tmp_path_factory.mktemp("tls")

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=fedpress-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


def test_fedavg_over_tls_matches_simulation_and_refuses_an_impostor(tmp_path: Path, certs):
    from fedpress.experiment.run import run_experiment
    from fedpress.transport.grpc.auth import read_tokens, write_tokens

    over = [*FAST, "data.clients=2", "run.rounds=3"]
    tokens_file, token_files = write_tokens(tmp_path / "secrets", [0, 1])
    run_dir, port_file = tmp_path / "run", tmp_path / "port"
    server = spawn(fp("server", CONFIG, *over, "--address", "127.0.0.1:0", "--tokens", str(tokens_file),
                      "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]),
                      "--run-dir", str(run_dir), "--port-file", str(port_file), "--heartbeat", "0.5",
                      "--join-timeout", "900"),
                   tmp_path / "server.log")
    port = wait_file(port_file, server)
    addr = f"127.0.0.1:{port}"
    tls = ["--ca-cert", str(certs["ca"])]
    # client 1's token used to claim id 0: refused before any payload moves
    impostor = spawn(fp("client", CONFIG, *over, "--server", addr, "--id", "0",
                        "--token-file", str(token_files[1]), *tls), tmp_path / "impostor.log")
    assert impostor.wait(600) == 3
    # no TLS towards a TLS server: never gets through either
    plain = spawn(fp("client", CONFIG, *over, "--server", addr, "--id", "0", "--token-file",
                     str(token_files[0]), "--reconnect-timeout", "2"), tmp_path / "plain.log")
    clients = [
        spawn(fp("client", CONFIG, *over, "--server", addr, "--id", str(c), "--token-file",
                 str(token_files[c]), *tls), tmp_path / f"client{c}.log")
        for c in (0, 1)
    ]
    assert finish([server, *clients]) == [0, 0, 0]
    assert finish([plain], 60) != [0]
    imp_log = (tmp_path / "impostor.log").read_text()
    assert "refused" in imp_log and "does not belong to client 0" in imp_log
    assert "does not belong to client 0" in (tmp_path / "server.log").read_text()
    for log in tmp_path.glob("*.log"):  # no secret in any log
        text = log.read_text()
        assert not any(tok in text for tok in read_tokens(tokens_file).values())
    got = json.loads((run_dir / "summary.json").read_text())
    assert got["versions"] == 3 and got["updates"] == 6 and got["transport"] == "grpc"
    assert got["wire_bytes"]["up"] > got["bytes_up"] > 0  # framing on top of the payloads
    assert set(got["codec_wall_s"]) == {"client_decode_s", "client_encode_s", "server_encode_s", "server_decode_s"}
    assert {a["client"] for a in arrivals(run_dir)} == {0, 1}
    # the same config simulated in-process: the same model (up to float summation order)
    sim = run_experiment(CONFIG, over, run_dir=tmp_path / "sim")
    assert got["final_accuracy"] == pytest.approx(sim["final_accuracy"], abs=0.01)
    assert got["final_loss"] == pytest.approx(sim["final_loss"], rel=1e-3)
    assert got["bytes_up"] == pytest.approx(sim["bytes_up"], rel=0.01)


def test_launch_runs_fedfa_and_writes_the_run_directory(tmp_path: Path):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        fp("launch", CONFIG, "--clients", "3", "--run-dir", str(run_dir), "--timeout", "800",
           *FAST, "run.plots=true", "strategy.name=fedfa", "strategy.K=2", "strategy.max_in_flight=3",
           "run.max_updates=9"),
        env=env(), capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # the server's progress is streamed (which clients joined before 9 updates depends on load)
    assert re.search(r"client \d joined", r.stderr)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["strategy"] == "fedfa" and s["updates"] >= 9 and s["stop_reason"] == "max_updates"
    evals = [e for e in read_events(run_dir) if e["event"] == "eval"]
    assert evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.2  # it learned
    assert list(run_dir.glob("*.png")) and (run_dir / "logs" / "client_2.log").is_file()
    assert (run_dir / "secrets" / "tokens").stat().st_mode & 0o077 == 0


FAULTY_CLIENT = """
import os, sys, time
from pathlib import Path
from fedpress.config import load_config
from fedpress.deploy.client import advance_uplink, build_runner
from fedpress.transport.grpc import GrpcClient

config, addr, cid, mode, *over = sys.argv[1:]
runner = build_runner(load_config(config, over), int(cid))  # the slow part: imports, data

class Dying(GrpcClient):
    def _chunks(self, task_id, r, granted):
        for i, msg in enumerate(super()._chunks(task_id, r, granted)):
            if self.stats.tasks >= 2 and i == 3:
                print("dying mid-upload", flush=True)
                os._exit(9)  # killed: the header and two chunks are out
            yield msg

if mode == "die":
    Dying(addr, int(cid), runner, chunk=1024, on_join=lambda: advance_uplink(runner)).run()
else:  # the same client restarted: ready, it joins once the file ``mode`` exists
    while not Path(mode).exists():
        time.sleep(0.02)
    GrpcClient(addr, int(cid), runner, on_join=lambda: advance_uplink(runner)).run()
    print("rejoined and finished", flush=True)
"""


def run_with_a_faulty_client(tmp_path: Path, over: list[str], script_text: str, client_timeout: float,
                             farewell: str) -> Path:
    """A server, clients 0 and 1, and client 2 running ``script_text``: first in mode "die"
    (it must exit 9 printing ``farewell``), then the same id restarted; returns the run dir
    once all four processes ended with 0."""
    run_dir, port_file = tmp_path / "run", tmp_path / "port"
    server = spawn(fp("server", CONFIG, *over, "--address", "127.0.0.1:0", "--run-dir", str(run_dir),
                      "--port-file", str(port_file), "--heartbeat", "0.3", "--client-timeout", str(client_timeout),
                      "--join-timeout", "900"),
                   tmp_path / "server.log")
    addr = f"127.0.0.1:{wait_file(port_file, server)}"
    script, go = tmp_path / "faulty.py", tmp_path / "go"
    script.write_text(script_text)
    dying = subprocess.Popen([sys.executable, str(script), CONFIG, addr, "2", "die", *over], env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _STARTED.append(dying)
    again = spawn([sys.executable, str(script), CONFIG, addr, "2", str(go), *over], tmp_path / "c2.log")
    clients = [spawn(fp("client", CONFIG, *over, "--server", addr, "--id", str(c)), tmp_path / f"c{c}.log")
               for c in (0, 1)]
    out, _ = dying.communicate(timeout=600)
    assert dying.returncode == 9 and farewell in out
    go.touch()
    assert finish([server, *clients, again]) == [0, 0, 0, 0], (tmp_path / "c2.log").read_text()[-2000:]
    assert "rejoined and finished" in (tmp_path / "c2.log").read_text()
    return run_dir


@pytest.mark.parametrize("strategy", ["fedavg", pytest.param("fedfa", marks=pytest.mark.slow)])
def test_client_killed_mid_upload_is_timed_out_and_rejoins_with_a_keyframe(tmp_path: Path, strategy):
    over = [*FAST, "data.clients=3", "codec.name=grad", f"strategy.name={strategy}"]
    over += ["run.rounds=6"] if strategy == "fedavg" else ["strategy.K=2", "strategy.max_in_flight=3",
                                                           "run.max_updates=18"]
    run_dir = run_with_a_faulty_client(tmp_path, over, FAULTY_CLIENT, 3, "dying mid-upload")
    mine = [a for a in arrivals(run_dir) if a["client"] == 2]
    status = [(a["status"], a.get("lost")) for a in mine]
    assert status[0] == ("accepted", None)  # its first result
    lost = [i for i, a in enumerate(mine) if a.get("lost") == 1.0]
    assert lost and mine[lost[0]]["status"] == "rejected"  # timed out, not waited for forever
    assert any(a["status"] == "accepted" for a in mine[lost[0] + 1 :])  # back, stream restarted
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["lost_clients"] >= 1
    if strategy == "fedavg":
        assert s["versions"] == 6
    else:
        assert s["updates"] >= 18


def test_server_killed_and_restarted_resumes_and_loses_nothing_acknowledged(tmp_path: Path):
    from fedpress.fl.server import Server

    if not hasattr(Server, "state_dict"):
        pytest.skip("the server loop has no state_dict yet (engine branch not merged)")
    over = [*FAST, "data.clients=2", "run.rounds=8", "codec.name=grad"]
    port = free_port()
    run_dir, ck = tmp_path / "run", tmp_path / "ckpt"
    cmd = fp("server", CONFIG, *over, "--address", f"127.0.0.1:{port}", "--run-dir", str(run_dir),
             "--checkpoint-dir", str(ck), "--heartbeat", "0.3", "--client-timeout", "20", "--join-timeout", "900")
    server = spawn(cmd, tmp_path / "server1.log")
    clients = [spawn(fp("client", CONFIG, *over, "--server", f"127.0.0.1:{port}", "--id", str(c),
                        "--reconnect-timeout", "120"), tmp_path / f"c{c}.log") for c in (0, 1)]
    end = time.monotonic() + 600  # generous: process start-up on a loaded machine
    while True:  # kill it once a few global versions exist
        assert server.poll() is None and time.monotonic() < end
        if (run_dir / "events.jsonl").is_file():
            ups = [e for e in read_events(run_dir) if e["event"] == "update"]
            if ups and ups[-1]["version"] >= 3:
                break
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.wait()
    server2 = spawn(cmd, tmp_path / "server2.log")
    assert finish([server2, *clients]) == [0, 0, 0]
    assert "resumed from" in (tmp_path / "server2.log").read_text()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["versions"] == 8 and s["resumed"] is True
    versions = [e["version"] for e in read_events(run_dir) if e["event"] == "update"]
    assert versions == list(range(1, 9))  # one history, no version twice
    # every result a client heard "accepted" for reached the loop
    acked = set()
    for c in (0, 1):
        for line in (tmp_path / f"c{c}.log").read_text().splitlines():
            if "accepted (" in line:
                acked.add(int(line.split("result of task ")[1].split()[0].rsplit("-", 1)[1]))
    used = {int(a["task_seq"]) for a in arrivals(run_dir) if a.get("lost") is None}
    assert acked and acked <= used


RESTARTED_CLIENT = """
import os, sys, time
from pathlib import Path
from fedpress.config import load_config
from fedpress.deploy.client import advance_uplink, build_runner
from fedpress.transport.grpc import GrpcClient

config, addr, cid, mode, *over = sys.argv[1:]
runner = build_runner(load_config(config, over), int(cid))

class Quitter(GrpcClient):
    def _upload(self, task_id, r):
        super()._upload(task_id, r)
        if self.stats.uploads >= 2:
            print("quitting between tasks", flush=True)
            os._exit(9)  # killed after an acknowledged result, before the next task

if mode == "die":
    Quitter(addr, int(cid), runner, on_join=lambda: advance_uplink(runner)).run()
else:
    while not Path(mode).exists():
        time.sleep(0.02)
    stats = GrpcClient(addr, int(cid), runner, on_join=lambda: advance_uplink(runner)).run()
    print(f"rejoined and finished, {stats.desyncs} desyncs", flush=True)
"""


def test_client_restarted_between_tasks_resyncs_a_stateful_downlink(tmp_path: Path):
    """A client process restarted between two tasks has lost its `grad` downlink state: it must
    not leave the federation; the server resends its model as a keyframe."""
    over = [*FAST, "data.clients=3", "run.rounds=6", "codec.name=grad",
            "codec.downlink={name: grad, mode: rel, eb: 0.01}"]
    # back well within the client timeout: the server never sees it as lost
    run_dir = run_with_a_faulty_client(tmp_path, over, RESTARTED_CLIENT, 60, "quitting between tasks")
    events = list(read_events(run_dir))
    mine = [e for e in events if e.get("client") == 2 and e["event"] in ("dispatch", "arrival")]
    accepted = [i for i, e in enumerate(mine) if e["event"] == "arrival" and e["status"] == "accepted"]
    assert len(accepted) >= 3  # two before the restart, at least one after
    third = accepted[2]
    # the model that reached the restarted client came as a keyframe
    before = [e for e in mine[:third] if e["event"] == "dispatch"]
    assert before[-1]["keyframe"] is True
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["versions"] == 6 and s["lost_clients"] == 0
