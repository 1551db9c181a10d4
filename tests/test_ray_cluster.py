"""A real multi-process Ray cluster: a head node and a worker node started with the ``ray`` CLI,
a short config run against it by address from a separate driver process (as a user would),
the nodes stopped whatever happens.

The nodes run as ``ray start --block`` children in their own process groups, and are stopped by
signalling those groups: ``ray stop`` would stop every Ray node on the host, including ones
this test did not start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

RAY_CLI = Path(sys.executable).parent / "ray"
COMMON = ["--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats", "--block"]


DRIVER = """
import json, sys, time
import ray
from test_fl_support import digits_inputs, quick_config
from fedpress.experiment.run import run_experiment
import fedpress.backends.ray_transport as rt

address = sys.argv[1]
ray.init(address=address, logging_level="WARNING")
end = time.monotonic() + 120
while sum(1 for n in ray.nodes() if n["Alive"]) < 2:  # wait for the worker node
    assert time.monotonic() < end, "the worker node did not join"
    time.sleep(0.5)
seen = {}
close = rt.RayTransport.close
def close_and_record(self):
    seen.update(self.stats())
    close(self)
rt.RayTransport.close = close_and_record
cfg = quick_config("fedavg", run__max_updates=8, strategy__clients_per_round=4,
                   simulation__backend="ray", simulation__ray_address=address)
s = run_experiment(cfg, run_dir=sys.argv[2], inputs=digits_inputs())
print(json.dumps({**seen, "updates": s["updates"]}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    with log.open("wb") as fh:
        return subprocess.Popen(
            [str(RAY_CLI), "start", *args, *COMMON],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop_node(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # the node's daemons (raylet, gcs, workers) share its process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(not RAY_CLI.exists(), reason="the ray CLI is not installed beside python")
def test_short_run_on_a_two_node_cluster_by_address(tmp_path, monkeypatch):
    # a throwaway loopback cluster: no token (a real one keeps Ray's token auth, see the docs)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    address = f"127.0.0.1:{port}"
    # short: unix socket paths under the temp dir must stay under ~107 characters
    temp = Path(tempfile.mkdtemp(prefix="fpray", dir="/tmp"))
    nodes = []
    try:
        nodes.append(
            start_node(
                ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                tmp_path / "head.log",
            )
        )
        wait_for(lambda: port_open(port) or nodes[0].poll() is not None, 120, "the head node")
        assert nodes[0].poll() is None, (tmp_path / "head.log").read_text()[-2000:]
        nodes.append(start_node([f"--address={address}"], tmp_path / "worker.log"))
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *filter(None, sys.path)])}
        # the run is its own driver process, as a user's would be
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, address, str(tmp_path / "run")],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        seen = json.loads(driver.stdout.strip().splitlines()[-1])
        assert seen["updates"] == 8
        assert seen["actors"] == 2
        # one actor per node: both nodes did client work
        assert len({i["node"] for i in seen["actor_info"]}) == 2
        # 2 rounds of 4 sampled clients: 4 to 8 distinct clients hosted, each on one actor
        assert 4 <= sum(i["clients"] for i in seen["actor_info"]) <= 8
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)
