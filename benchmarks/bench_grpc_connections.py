"""What a connected client costs the gRPC server, without training: echo clients in their own
processes join, each gets a payload of ``--size`` bytes twice and sends it back, and the server
process (this one) reads its own RSS before the clients join, after they joined, during the
transfers (peak) and after them. Compared: client counts, payload sizes, and the periodic
``malloc_trim`` of ``fedpress.deploy.memory`` off and on. The malloc settings of
``fedpress server`` (two arenas, fixed mmap threshold) apply in every case.

    python benchmarks/bench_grpc_connections.py                # 8 and 32 clients, 6.6 / 26.4 MB, trim off/on
    python benchmarks/bench_grpc_connections.py --quick        # 2 and 4 clients, 1 MB
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from bench_grpc_shaped import _env  # noqa: E402  (the same environment for child processes)


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _client(port: int, cid: int) -> int:
    from fedpress.transport.base import ClientResult
    from fedpress.transport.grpc import GrpcClient

    class Echo:
        def run(self, payload: bytes, version: int, keyframe: bool = False) -> ClientResult:
            return ClientResult(client_id=cid, base_version=version, payload=bytes(payload), num_samples=1,
                                samples=1, raw_bytes_down=len(payload), raw_bytes_up=len(payload))

    GrpcClient(f"127.0.0.1:{port}", cid, Echo(), wait_s=5).run()
    return 0


def _case(n: int, size: int, trim: bool, slots: int, rounds: int) -> dict[str, Any]:
    """One server life in a fresh process (so the cases do not share a heap)."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_case", str(n), str(size), str(int(trim)),
                          str(slots), str(rounds)], capture_output=True, text=True, env=_env(), timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"case n={n} size={size} trim={trim} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _serve(n: int, size: int, trim: bool, slots: int, rounds: int) -> dict[str, Any]:
    from fedpress.deploy.memory import MemoryTrimmer, cap_malloc_arenas

    cap_malloc_arenas()
    trimmer = MemoryTrimmer().start() if trim else None
    from fedpress.transport.grpc import GrpcTransport, Journal, TransferSlots, start_server
    from fedpress.transport.grpc.auth import TokenInterceptor

    tmp = tempfile.mkdtemp(prefix="fp-conn-")
    t = GrpcTransport(n, Journal(Path(tmp) / "journal", durable=False), heartbeat_s=1.0, client_timeout=600,
                      join_timeout=600)
    server, port = start_server(t, "127.0.0.1:0", interceptor=TokenInterceptor(None, n), slots=TransferSlots(slots))
    start = _rss_mib()
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_client", str(port), str(i)],
                              env=_env()) for i in range(n)]
    while len(t.seen_clients()) < n:
        time.sleep(0.2)
    time.sleep(2)
    joined = _rss_mib()
    payload = os.urandom(size)
    peak = joined
    for version in range(rounds):
        for i in range(n):
            t.dispatch(i, payload, version)
        got = 0
        while got < n:
            ev = t.next_event(deadline=t.now() + 0.2)
            peak = max(peak, _rss_mib())
            if ev is not None:
                assert ev.result.payload == payload  # echoed intact
                got += 1
                del ev
    time.sleep(2)
    after = _rss_mib()
    t.close()
    t.wait_stopped(list(range(n)), 10)
    server.stop(1).wait()
    for p in procs:
        p.wait(60)
    if trimmer is not None:
        trimmer.stop()
    return {"clients": n, "payload_bytes": size, "trim": trim, "max_transfers": slots, "rounds": rounds,
            "rss_start_mib": start, "rss_joined_mib": joined, "rss_peak_mib": peak, "rss_after_mib": after}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        return _client(int(argv[1]), int(argv[2]))
    if argv[:1] == ["_case"]:
        print(json.dumps(_serve(int(argv[1]), int(argv[2]), bool(int(argv[3])), int(argv[4]), int(argv[5]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clients", default=None, help="comma list, default 8,32")
    p.add_argument("--sizes", default=None, help="payload bytes, comma list, default 6600000,26400000")
    p.add_argument("--max-transfers", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("bench_grpc_connections: skipped: needs /proc to read memory")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from fedpress.bench.machine import machine_info

    counts = [int(c) for c in (args.clients or ("2,4" if args.quick else "8,32")).split(",")]
    sizes = [int(s) for s in (args.sizes or ("1000000" if args.quick else "6600000,26400000")).split(",")]
    res: dict[str, Any] = {"benchmark": "bench_grpc_connections", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                           "machine": machine_info(), "cases": [], "per_client": []}
    for size in sizes:
        for trim in (False, True):
            rows = []
            for n in counts:
                print(f"[{n} clients, {size} B, trim {'on' if trim else 'off'}] ...", flush=True)
                c = _case(n, size, trim, args.max_transfers, args.rounds)
                print(f"  start {c['rss_start_mib']:.0f} joined {c['rss_joined_mib']:.0f} peak {c['rss_peak_mib']:.0f} "
                      f"after {c['rss_after_mib']:.0f} MiB", flush=True)
                rows.append(c)
                res["cases"].append(c)
            lo, hi = rows[0], rows[-1]
            dn = max(hi["clients"] - lo["clients"], 1)
            res["per_client"].append({
                "payload_bytes": size, "trim": trim, "from": lo["clients"], "to": hi["clients"],
                "joined_mib_per_client": (hi["rss_joined_mib"] - lo["rss_joined_mib"]) / dn,
                "peak_mib_per_client": (hi["rss_peak_mib"] - lo["rss_peak_mib"]) / dn,
                "after_mib_per_client": (hi["rss_after_mib"] - lo["rss_after_mib"]) / dn})
    out = Path(args.out) if args.out else RESULTS / ("grpc_connections_quick.json" if args.quick else "grpc_connections.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    for r in res["per_client"]:
        print(f"{r['payload_bytes']} B, trim {'on ' if r['trim'] else 'off'}: per client joined "
              f"{r['joined_mib_per_client']:.2f}, peak {r['peak_mib_per_client']:.2f}, after {r['after_mib_per_client']:.2f} MiB")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
