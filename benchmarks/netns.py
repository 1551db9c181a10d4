"""Shaped links between network namespaces, for benchmarks of real processes over real TCP.

One namespace for the server and one per client; client ``i`` reaches the server over its own
veth pair (``10.80.<i>.2`` -> ``10.80.<i>.1``). Each direction is shaped with ``tc netem``
(rate and one-way delay) where the kernel has it, else with ``tc tbf`` (rate only, no added
delay): the client end's egress is the uplink, the server end's egress the downlink. Nothing is routed outside these namespaces. Needs root, ``ip`` and ``tc``;
:func:`unavailable` says why not when it cannot run. Namespaces are always removed on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def unavailable() -> str | None:
    """Why shaped namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command (iproute2) is not installed"
    name = f"fpprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
    except RuntimeError as exc:
        return f"cannot create a network namespace ({exc})"
    try:
        _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "10mbit",
             "burst", "16kb", "limit", "1mb")
    except RuntimeError as exc:
        return f"tc tbf does not work here ({exc})"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def netem_available() -> bool:
    """Whether the kernel has ``sch_netem`` (delay emulation); without it links get a rate
    limit only (``tbf``) and no added delay."""
    name = f"fpprobe{os.getpid()}n"
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
        return True
    except RuntimeError:
        return False
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass
class Topology:
    """``with Topology(2, up_mbps=10, down_mbps=50, latency_s=0.02) as topo:`` then run the
    server under ``topo.server_cmd(...)`` and client ``i`` under ``topo.client_cmd(i, ...)``."""

    clients: int
    up_mbps: float
    down_mbps: float
    latency_s: float
    prefix: str = field(default_factory=lambda: f"fp{os.getpid() % 100000}")
    _made: list[str] = field(default_factory=list)
    shaper: str = "netem"

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}s"

    def client_ns(self, i: int) -> str:
        return f"{self.prefix}c{i}"

    def server_ip(self, i: int) -> str:
        """The server's address as client ``i`` reaches it."""
        return f"10.80.{i}.1"

    def __enter__(self) -> Topology:
        self.shaper = "netem" if netem_available() else "tbf"
        if self.shaper == "tbf":
            self.latency_s = 0.0  # no delay emulation without netem: the links add none
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _shape(self, ns: str, dev: str, mbps: float) -> None:
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root"]
        if self.shaper == "netem":
            _run(*tc, "netem", "delay", f"{self.latency_s * 1000:.3f}ms", "rate", f"{mbps}mbit",
                 "limit", "100000")
            return
        # token bucket: a burst of ~10 ms of traffic (at least 16 kB), a deep queue (no drops)
        burst = max(16_000, int(mbps * 1e6 / 8 / 100))
        _run(*tc, "tbf", "rate", f"{mbps}mbit", "burst", str(burst), "limit", str(max(4_000_000, 4 * burst)))

    def _up(self) -> None:
        s = self.server_ns
        _run("ip", "netns", "add", s)
        self._made.append(s)
        _run("ip", "netns", "exec", s, "ip", "link", "set", "lo", "up")
        for i in range(self.clients):
            c = self.client_ns(i)
            _run("ip", "netns", "add", c)
            self._made.append(c)
            _run("ip", "netns", "exec", c, "ip", "link", "set", "lo", "up")
            a, b = f"{self.prefix}a{i}", f"{self.prefix}b{i}"
            _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            _run("ip", "link", "set", a, "netns", s)
            _run("ip", "link", "set", b, "netns", c)
            _run("ip", "netns", "exec", s, "ip", "addr", "add", f"10.80.{i}.1/24", "dev", a)
            _run("ip", "netns", "exec", c, "ip", "addr", "add", f"10.80.{i}.2/24", "dev", b)
            _run("ip", "netns", "exec", s, "ip", "link", "set", a, "up")
            _run("ip", "netns", "exec", c, "ip", "link", "set", b, "up")
            self._shape(s, a, self.down_mbps)  # server -> client
            self._shape(c, b, self.up_mbps)  # client -> server

    def server_cmd(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *cmd]

    def client_cmd(self, i: int, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns(i), *cmd]

    def link_bytes(self) -> dict[str, int]:
        """Bytes the server's ends of all links sent (down) and received (up), IP and TCP
        headers included, from the kernel's interface counters."""
        out = {"down": 0, "up": 0}
        for i in range(self.clients):
            base = f"/sys/class/net/{self.prefix}a{i}/statistics"
            tx = _run("ip", "netns", "exec", self.server_ns, "cat", f"{base}/tx_bytes")
            rx = _run("ip", "netns", "exec", self.server_ns, "cat", f"{base}/rx_bytes")
            out["down"] += int(tx)
            out["up"] += int(rx)
        return out

    def close(self) -> None:
        while self._made:
            subprocess.run(["ip", "netns", "del", self._made.pop()], capture_output=True)


def leftover(prefix: str) -> list[str]:
    """Namespaces of ``prefix`` still present (for tests of the clean-up)."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(prefix)]


__all__ = ["Topology", "leftover", "netem_available", "unavailable"]
