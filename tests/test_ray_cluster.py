"""A real multi-process Ray cluster: a head node and a worker node started with the ``ray`` CLI,
a short config run against it by address, the nodes stopped whatever happens.

The nodes run as ``ray start --block`` children in their own process groups, and are stopped by
signalling those groups: ``ray stop`` would stop every Ray node on the host, including ones
this test did not start.
"""

from __future__ import annotations

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
from test_fl_support import digits_inputs, quick_config

ray = pytest.importorskip("ray")

RAY_CLI = Path(sys.executable).parent / "ray"
COMMON = ["--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats", "--block"]


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
        cfg = quick_config(
            "fedavg",
            run__max_updates=8,
            strategy__max_in_flight=4,
            simulation__backend="ray",
            simulation__ray_address=address,
        )
        from fedpress.fl.run import run_experiment

        # the first connect makes ensure_ray() attach to this cluster, not start one
        ray.init(address=address, logging_level="WARNING")

        def two_nodes() -> bool:
            return sum(1 for n in ray.nodes() if n["Alive"]) == 2

        wait_for(two_nodes, 120, "the worker node to join")
        seen = {}
        import fedpress.backends.ray_transport as rt

        close = rt.RayTransport.close

        def close_and_record(self):
            seen.update(self.stats())
            close(self)

        rt.RayTransport.close = close_and_record
        try:
            s = run_experiment(cfg, run_dir=tmp_path / "run", inputs=digits_inputs())
        finally:
            rt.RayTransport.close = close
        assert s["updates"] == 8
        assert seen["actors"] == 2
        # one actor per node: both nodes did client work
        assert len({i["node"] for i in seen["actor_info"]}) == 2
        assert sum(i["clients"] for i in seen["actor_info"]) == 8
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(nodes):
            stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)
