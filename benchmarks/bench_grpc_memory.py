"""Memory of the gRPC deployment: is the server's memory flat in the number of clients, and does
a payload larger than gRPC's 2 GiB message limit stream through with bounded memory?

Part 1 (``clients``): ``fedpress server`` with N ``fedpress client`` processes over loopback
(sync FedAvg on ``cnn-fedavg``, a few rounds), for N in 1, 2, 4, 8, 16 and several codecs; the
server's peak resident memory comes from ``/usr/bin/time -f %M`` (the kernel's maxrss of that
process alone), so nothing in the server has to report on itself.

Part 2 (``stream``): one payload of ``--stream-gib`` GiB (random bytes, so nothing compresses)
goes from a server process to a client process through the real ``fedpress.v1`` GetTask stream,
and back through Upload into the server's journal; the server checks the SHA-256 of what came
back against what it sent. Both processes' peak memory is reported as a multiple of the payload.
The client runner just echoes the payload (no model to train), so this measures the transport,
not training a 2 GB model.

    python benchmarks/bench_grpc_memory.py             # clients 1..16 x none/fast/grad; 2.1 GiB stream
    python benchmarks/bench_grpc_memory.py --quick     # clients 1,2 x none; 64 MiB stream
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TIME = shutil.which("time") or "/usr/bin/time"
sys.path.insert(0, str(HERE))

from bench_grpc_shaped import _env, _port, run_processes  # noqa: E402  (the same process handling)


class Loopback:
    """The shaped benchmark's topology interface without namespaces: every process on this
    machine's loopback, no shaping, no link counters."""

    def __init__(self, clients: int) -> None:
        self.clients = clients

    def server_cmd(self, argv: list[str]) -> list[str]:
        return argv

    def client_cmd(self, i: int, argv: list[str]) -> list[str]:
        return argv

    def server_ip(self, i: int) -> str:
        return "127.0.0.1"

    def link_bytes(self) -> dict[str, int]:
        return {}


def _timed(cmd: list[str], rss_file: Path) -> list[str]:
    """``cmd`` under GNU time, which writes the process's peak RSS (KiB) to ``rss_file``."""
    return [TIME, "-f", "%M", "-o", str(rss_file), *cmd]


def _rss_mib(rss_file: Path) -> float:
    lines = [ln for ln in rss_file.read_text().split() if ln.strip().isdigit()]
    return int(lines[-1]) / 1024


# -- part 1: server memory against the number of clients ---------------------------------------
def clients_case(n: int, codec: str, rounds: int, samples: int, scratch: Path, timeout: float,
                 max_transfers: int | None = None) -> dict[str, Any]:
    """One federated run with ``n`` client processes; the server's peak RSS and its summary."""
    py = [sys.executable, "-m", "fedpress.cli"]
    config = str(ROOT / "configs" / "grpc_cnn_fedavg.yaml")
    down = "null" if codec == "none" else f"{{name: {codec}, mode: rel, eb: 0.01}}"
    over = [f"data.clients={n}", f"data.samples_per_client={samples}", f"run.rounds={rounds}",
            f"run.eval_every={rounds}", "run.plots=false", f"codec.name={codec}", f"codec.downlink={down}",
            "data.test_limit=200"]
    run_dir = scratch / f"{codec}-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = _port()
    rss = run_dir / "server.maxrss"
    t0 = time.monotonic()
    run_processes(
        Loopback(n),
        _timed([*py, "server", config, *over, "--address", f"127.0.0.1:{port}", "--run-dir", str(run_dir),
                "--join-timeout", "600", "--client-timeout", "120", "--quiet",
                *([] if max_transfers is None else ["--max-transfers", str(max_transfers)])], rss),
        lambda i, ip: [*py, "client", config, *over, "--server", f"{ip}:{port}", "--id", str(i), "--quiet"],
        run_dir / "logs", timeout, _env())
    s = json.loads((run_dir / "summary.json").read_text())
    return {"clients": n, "codec": codec, "rounds": rounds, "samples_per_client": samples,
            "server_peak_rss_mib": _rss_mib(rss), "wall_s": time.monotonic() - t0,
            "bytes_up": s.get("bytes_up"), "bytes_down": s.get("bytes_down"),
            "final_accuracy": s.get("final_accuracy"), "transfers": s.get("transfers")}


# -- part 2: a payload over gRPC's 2 GiB message limit --------------------------------------------
def serve_stream(size: int, port_file: Path, out: Path) -> int:
    """Server side of the stream test (run in its own process)."""
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np

    from fedpress.transport.grpc.auth import TokenInterceptor
    from fedpress.transport.grpc.journal import Journal
    from fedpress.transport.grpc.service import start_server
    from fedpress.transport.grpc.transport import GrpcTransport

    journal = Journal(out.parent / "journal", durable=False)
    transport = GrpcTransport(1, journal, heartbeat_s=1.0, client_timeout=600, join_timeout=600,
                              max_payload_bytes=size + 1)
    server, port = start_server(transport, "127.0.0.1:0", interceptor=TokenInterceptor(None, 1))
    payload = np.random.default_rng(0).bytes(size)
    digest = hashlib.sha256(payload).hexdigest()
    port_file.write_text(str(port))
    t0 = time.monotonic()
    transport.dispatch(0, payload, 0)
    del payload  # the task holds the only reference, dropped once sent
    arrival = transport.next_event()
    t1 = time.monotonic()
    assert arrival is not None
    got = arrival.result.payload
    ok = len(got) == size and hashlib.sha256(got).hexdigest() == digest
    del got, arrival
    transport.close()
    transport.wait_stopped([0], timeout=10)
    server.stop(grace=1.0).wait()
    out.write_text(json.dumps({"round_trip_s": t1 - t0, "intact": ok, "wire": transport.wire}))
    return 0 if ok else 1


class _Echo:
    """A client runner that sends back exactly what it received."""

    def run(self, payload: bytes, version: int, keyframe: bool = False) -> Any:
        from fedpress.transport.base import ClientResult

        return ClientResult(client_id=0, base_version=version, payload=payload, num_samples=1, samples=1,
                            raw_bytes_down=len(payload), raw_bytes_up=len(payload))


def client_stream(port: int) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from fedpress.transport.grpc import GrpcClient

    stats = GrpcClient(f"127.0.0.1:{port}", 0, _Echo(), max_payload_bytes=1 << 40).run()
    return 0 if stats.uploads == 1 else 1


def stream_case(size: int, scratch: Path, timeout: float) -> dict[str, Any]:
    d = scratch / "stream"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    port_file, out = d / "port", d / "server.json"
    t0 = time.monotonic()
    server = subprocess.Popen(_timed([*me, "_serve", str(size), str(port_file), str(out)], d / "server.maxrss"),
                              env=_env())
    while not port_file.exists():
        if server.poll() is not None:
            raise RuntimeError("stream server died before listening")
        time.sleep(0.2)
    client = subprocess.Popen(_timed([*me, "_client", port_file.read_text()], d / "client.maxrss"), env=_env())
    rc_c, rc_s = client.wait(timeout), server.wait(timeout)
    if rc_s != 0 or rc_c != 0:
        raise RuntimeError(f"stream test failed: server rc {rc_s}, client rc {rc_c}")
    res = json.loads(out.read_text())
    mib = size / 2**20
    srv, cli = _rss_mib(d / "server.maxrss"), _rss_mib(d / "client.maxrss")
    shutil.rmtree(d / "journal", ignore_errors=True)
    return {"payload_bytes": size, "over_grpc_limit": size > 2**31 - 1, "intact": res["intact"],
            "round_trip_s": res["round_trip_s"], "throughput_mib_s": 2 * mib / res["round_trip_s"],
            "wire_bytes": res["wire"], "server_peak_rss_mib": srv, "client_peak_rss_mib": cli,
            "server_peak_over_payload": srv / mib, "client_peak_over_payload": cli / mib,
            "wall_s": time.monotonic() - t0}


def _limit(row: dict[str, Any], asked: int | None) -> int:
    """The limit a run was asked for (``None``: the server's default, which its summary names)."""
    return row["transfers"]["max"] if asked is None else asked


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for codec, limit in dict.fromkeys((c["codec"], (c.get("transfers") or {}).get("max")) for c in res["clients"]):
        rows = [c for c in res["clients"] if c["codec"] == codec and (c.get("transfers") or {}).get("max") == limit]
        label = codec if limit is None else f"{codec}, max transfers {limit or 'unbounded'}"
        ax.plot([c["clients"] for c in rows], [c["server_peak_rss_mib"] for c in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("client processes")
    ax.set_ylabel("server peak RSS (MiB)")
    ax.set_title("fedpress server memory vs clients (cnn-fedavg, gRPC)")
    ax.set_ylim(bottom=0)
    ax.legend(title="codec", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        return serve_stream(int(argv[1]), Path(argv[2]), Path(argv[3]))
    if argv[:1] == ["_client"]:
        return client_stream(int(argv[1]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: 1-2 clients, 64 MiB stream")
    p.add_argument("--clients", default=None, help="client counts, default 1,2,4,8,16")
    p.add_argument("--codecs", default=None, help="default none,fast,grad")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=64, help="samples per client")
    p.add_argument("--stream-gib", type=float, default=None, help="payload of the stream test (default 2.1)")
    p.add_argument("--out", default=None)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--max-transfers", default=None,
                   help="comma list of the server's --max-transfers to compare (default: its default)")
    args = p.parse_args(argv)
    if not Path(TIME).exists():
        print("bench_grpc_memory: skipped: needs GNU time (/usr/bin/time) to read peak memory")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from fedpress.bench.machine import machine_info

    counts = [1, 2] if args.quick else [1, 2, 4, 8, 16]
    codecs = ["none"] if args.quick else ["none", "fast", "grad"]
    gib = 1 / 16 if args.quick else 2.1
    if args.clients:
        counts = [int(c) for c in args.clients.split(",")]
    if args.codecs:
        codecs = args.codecs.split(",")
    if args.stream_gib is not None:
        gib = args.stream_gib
    out = Path(args.out) if args.out else RESULTS / ("grpc_memory_quick.json" if args.quick else "grpc_memory.json")
    res: dict[str, Any] = {"benchmark": "bench_grpc_memory",
                           "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           "machine": machine_info(), "clients": [], "stream": None}
    with tempfile.TemporaryDirectory(prefix="fp-mem-") as tmp:
        scratch = Path(tmp)
        limits = [int(x) for x in args.max_transfers.split(",")] if args.max_transfers else [None]
        for codec in codecs:
            for limit in limits:
                for n in counts:
                    print(f"[clients] {codec} x {n} (max transfers {'default' if limit is None else (limit or 'unbounded')}) ...",
                          flush=True)
                    c = clients_case(n, codec, args.rounds, args.samples, scratch, args.timeout, limit)
                    print(f"  server peak {c['server_peak_rss_mib']:.0f} MiB, transfers {c['transfers']}", flush=True)
                    res["clients"].append(c)
        size = int(gib * 2**30)
        print(f"[stream] {size} bytes ...", flush=True)
        res["stream"] = stream_case(size, scratch, args.timeout)
        print(f"  intact {res['stream']['intact']}, server {res['stream']['server_peak_over_payload']:.2f}x, "
              f"client {res['stream']['client_peak_over_payload']:.2f}x the payload", flush=True)
    for codec in codecs:
        for limit in limits:
            rows = [c for c in res["clients"] if c["codec"] == codec and c["transfers"]["max"] == _limit(c, limit)]
            lo, hi = rows[0], rows[-1]
            key = codec if len(limits) == 1 else f"{codec}, max transfers {rows[0]['transfers']['max']}"
            res.setdefault("growth", {})[key] = {
                "mib_per_client": (hi["server_peak_rss_mib"] - lo["server_peak_rss_mib"]) / max(hi["clients"] - lo["clients"], 1),
                "from": lo["clients"], "to": hi["clients"], "max_transfers": rows[0]["transfers"]["max"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
