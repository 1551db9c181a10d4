"""Real processes on shaped links: the gRPC server and its clients in their own network
namespaces, each client's link limited with ``tc`` per direction: ``netem`` (rate and one-way
delay) where the kernel has it, else ``tbf`` (rate only; the virtual clock then gets latency 0
too, and the result file says which shaper ran).

For every (uplink bandwidth, codec) it runs sync FedAvg with ``fedpress server`` / ``fedpress
client`` and measures, per round: the real round time, the end-to-end communication time (the
clients' round trip minus their training: both transfers, encode and decode on both sides), the
share of it spent in codecs, bytes on the wire (our gRPC framing count and the kernel's
interface counters, TCP/IP included), and the final accuracy. Next to each measurement it puts
the virtual clock's prediction for the same profile (``fedpress.transport.sim.round_trip`` fed
with the measured bytes, training and codec seconds, so the two differ only in the network
model). The downlink is compressed with the same codec (FedAvg sends the same model to all).

Needs root, ``ip`` and ``tc`` (it explains itself and exits 0 where it cannot run). Only
addresses inside its own namespaces are used; namespaces are removed on exit.

    sudo python benchmarks/bench_grpc_shaped.py            # full: 1/10/100 Mbit/s, 4 codecs
    sudo python benchmarks/bench_grpc_shaped.py --quick    # CI: digits MLP, 10 Mbit/s, 2 codecs
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from netns import Topology, unavailable  # noqa: E402

RESULTS = HERE / "results"


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(topo: Topology, server_argv: list[str], client_argv: Callable[[int, str], list[str]],
                  logs: Path, timeout: float, env: dict[str, str]) -> dict[str, int]:
    """Run ``server_argv`` in the server's namespace and ``client_argv(i, server_ip)`` in client
    ``i``'s until the server exits (logs in ``logs``); returns the bytes the kernel counted on
    the links meanwhile. Shared with ``bench_grpc_flower.py``, which runs Flower the same way."""
    before = topo.link_bytes()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        with (logs / "server.log").open("w") as fh:
            server = subprocess.Popen(topo.server_cmd(server_argv), stdout=fh, stderr=subprocess.STDOUT, env=env)
        procs.append(server)
        for i in range(topo.clients):
            with (logs / f"client_{i}.log").open("w") as fh:
                procs.append(subprocess.Popen(topo.client_cmd(i, client_argv(i, topo.server_ip(i))),
                                              stdout=fh, stderr=subprocess.STDOUT, env=env))
        rc = server.wait(timeout)
        for p in procs[1:]:
            p.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if rc != 0:
        raise RuntimeError(f"server exited {rc}; see {logs / 'server.log'}")
    after = topo.link_bytes()
    return {k: after[k] - before[k] for k in after}


def case_overrides(codec: str, eb: float, clients: int, rounds: int) -> list[str]:
    """Config overrides of one benchmark case: ``codec`` both ways at REL ``eb`` (the downlink
    raw for ``none``), only the final model evaluated, no plots, no simulated-time limit."""
    down_codec = "null" if codec == "none" else f"{{name: {codec}, mode: rel, eb: {eb}}}"
    return [f"data.clients={clients}", f"run.rounds={rounds}", "run.plots=false",
            f"codec.name={codec}", f"codec.eb={eb}", f"codec.downlink={down_codec}",
            "run.eval_every=1000", "run.eval_every_time=null", "run.max_sim_time=null"]


def run_case(topo: Topology, config: str, overrides: list[str], run_dir: Path, timeout: float) -> dict[str, Any]:
    """One federated run on ``topo``; returns the server's summary and the kernel's byte counts."""
    py = [sys.executable, "-m", "fedpress.cli"]
    port = _port()
    server = [*py, "server", config, *overrides, "--address", f"0.0.0.0:{port}", "--run-dir", str(run_dir),
              "--heartbeat", "1", "--join-timeout", "900", "--quiet"]

    def client(i: int, ip: str) -> list[str]:
        return [*py, "client", config, *overrides, "--server", f"{ip}:{port}", "--id", str(i), "--quiet"]

    link = run_processes(topo, server, client, run_dir / "logs", timeout, _env())
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["link_bytes"] = link
    return summary


def round_metrics(run_dir: Path, up_mbps: float, down_mbps: float, latency_s: float) -> dict[str, Any]:
    """Per-round measured times and the virtual clock's predictions, from the event log."""
    from fedpress.metrics.events import read_events
    from fedpress.transport.sim import ClientProfile, round_trip

    events = list(read_events(run_dir))
    enc_at: dict[tuple[int, int], float] = {}
    rounds: dict[int, list[dict[str, float]]] = {}
    updates = {e["version"]: e["t"] for e in events if e["event"] == "update"}
    for e in events:
        if e["event"] == "dispatch":
            enc_at[(e["client"], e["version"])] = e.get("wall_server_encode_s") or 0.0
        if e["event"] != "arrival" or e.get("status") != "accepted":
            continue
        train = e.get("wall_train_s", 0.0)
        codec = {
            "server_encode_s": enc_at.get((e["client"], e["base_version"]), 0.0),
            "decode_s": e.get("wall_decode_s", 0.0),
            "encode_s": e.get("wall_encode_s", 0.0),
            "server_decode_s": e.get("wall_server_decode_s", 0.0),
        }
        # the client's round trip from the moment it asked for work (a poll already waiting in
        # steady state) until its result was durable, plus the server's encode before dispatch
        # and its decode after the arrival (both outside that interval)
        measured = (e["t"] - e["dispatched_at"] - e.get("wall_fetch_wait_s", 0.0)
                    + codec["server_encode_s"] + codec["server_decode_s"])
        profile = ClientProfile(e["client"], train / max(e["samples"], 1), up_mbps, down_mbps, latency_s)
        pred = round_trip(profile, bytes_down=e["bytes_down"], bytes_up=e["bytes_up"], samples=e["samples"],
                          decode_s=codec["decode_s"], encode_s=codec["encode_s"],
                          server_encode_s=codec["server_encode_s"], server_decode_s=codec["server_decode_s"])
        rounds.setdefault(e["base_version"], []).append({
            "measured_s": measured, "predicted_s": pred["total_s"], "train_s": train,
            "codec_s": sum(codec.values()), "bytes_up": e["bytes_up"], "bytes_down": e["bytes_down"],
        })
    rows = []
    for v in sorted(rounds):
        rs = rounds[v]
        slow = max(rs, key=lambda r: r["measured_s"])  # a sync round waits for its slowest client
        pslow = max(rs, key=lambda r: r["predicted_s"])
        rows.append({
            "round": v,
            "round_time_s": updates[v + 1] - updates[v] if v in updates and v + 1 in updates else None,
            "comm_s": slow["measured_s"] - slow["train_s"],
            "comm_pred_s": pslow["predicted_s"] - pslow["train_s"],
            "trip_s": slow["measured_s"],
            "trip_pred_s": pslow["predicted_s"],
            "codec_s": slow["codec_s"],
        })
    steady = rows[1:] or rows  # the first round also holds connection set-up and TCP warm-up

    def mean(key: str) -> float:
        vals = [r[key] for r in steady if r[key] is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    return {
        "rounds": rows,
        "comm_s": mean("comm_s"), "comm_pred_s": mean("comm_pred_s"),
        "trip_s": mean("trip_s"), "trip_pred_s": mean("trip_pred_s"),
        "round_time_s": mean("round_time_s"), "codec_s": mean("codec_s"),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    bws = sorted({c["up_mbps"] for c in cases})
    codecs = list(dict.fromkeys(c["codec"] for c in cases))
    fig, axes = plt.subplots(1, len(bws), figsize=(4.2 * len(bws), 3.6), squeeze=False)
    for ax, bw in zip(axes[0], bws, strict=True):
        row = [next((c for c in cases if c["up_mbps"] == bw and c["codec"] == k), None) for k in codecs]
        xs = range(len(codecs))
        ax.bar(xs, [c["comm_s"] if c else 0 for c in row], color="tab:blue", label="measured")
        ax.bar(xs, [c["codec_s"] if c else 0 for c in row], color="tab:orange", label="of which codec")
        ax.scatter(xs, [c["comm_pred_s"] if c else 0 for c in row], color="k", marker="_", s=300,
                   label="virtual clock", zorder=3)
        ax.set_xticks(list(xs), codecs)
        ax.set_title(f"uplink {bw:g} Mbit/s")
        ax.set_ylabel("comm. time per round (s)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{results['setting']['model']} FedAvg over gRPC, shaped links, REL {results['setting']['eb']:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: digits MLP, 10 Mbit/s, none vs grad")
    p.add_argument("--bandwidths", default=None, help="uplink Mbit/s list, default 1,10,100")
    p.add_argument("--codecs", default=None, help="default none,grad,fast,sz3")
    p.add_argument("--clients", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--eb", type=float, default=1e-2)
    p.add_argument("--latency", type=float, default=0.02, help="one-way delay per direction, s")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/grpc_shaped[_quick].json)")
    p.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value",
                   help="extra config overrides for every run (e.g. data.test_limit=10000)")
    p.add_argument("--reanalyze", metavar="JSON", help="recompute the per-round numbers of a result "
                   "file from its runs' event logs (no new runs)")
    args = p.parse_args(argv)
    if args.reanalyze:
        sys.path.insert(0, str(ROOT / "src"))
        path = Path(args.reanalyze)
        res = json.loads(path.read_text())
        for c in res["cases"]:
            run_dir = RESULTS / "tmp" / path.stem / f"{c['codec']}-{c['up_mbps']:g}mbit"
            c.update(round_metrics(run_dir, c["up_mbps"], c["down_mbps"], res["setting"]["latency_s"]))
        finish(res, path)
        return 0
    why = unavailable()
    if why is not None:
        print(f"bench_grpc_shaped: skipped: {why}. It puts the server and each client in their own "
              "network namespace joined by veth links shaped with tc, which needs root.")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from fedpress.bench.machine import machine_info

    if args.quick:
        config, model = str(ROOT / "configs" / "quick_digits.yaml"), "mlp-digits"
        bws, codecs = [10.0], ["none", "grad"]
        clients, rounds = args.clients or 1, args.rounds or 2
        base = ["run.max_updates=null"]
    else:
        config, model = str(ROOT / "configs" / "grpc_cnn_fedavg.yaml"), "cnn-fedavg-mnist"
        bws, codecs = [1.0, 10.0, 100.0], ["none", "grad", "fast", "sz3"]
        clients, rounds = args.clients or 2, args.rounds or 4
        base = []
    if args.bandwidths:
        bws = [float(b) for b in args.bandwidths.split(",")]
    if args.codecs:
        codecs = args.codecs.split(",")
    out = Path(args.out) if args.out else RESULTS / ("grpc_shaped_quick.json" if args.quick else "grpc_shaped.json")
    scratch = RESULTS / "tmp" / out.stem
    results: dict[str, Any] = {
        "benchmark": "bench_grpc_shaped",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "setting": {"model": model, "config": Path(config).name, "clients": clients, "rounds": rounds,
                    "eb": args.eb, "latency_s": args.latency, "downlink": "same codec as uplink",
                    "down_mbps": "5 x uplink", "overrides": args.set},
        "cases": [],
    }
    for bw in bws:
        down = 5 * bw
        with Topology(clients, up_mbps=bw, down_mbps=down, latency_s=args.latency) as topo:
            for codec in codecs:
                over = [*base, *case_overrides(codec, args.eb, clients, rounds), *args.set]
                run_dir = scratch / f"{codec}-{bw:g}mbit"
                t0 = time.monotonic()
                print(f"[{bw:g} Mbit/s] {codec} ...", flush=True)
                s = run_case(topo, config, over, run_dir, args.timeout)
                m = round_metrics(run_dir, bw, down, topo.latency_s)
                results["setting"].update(shaper=topo.shaper, latency_s=topo.latency_s)
                case = {
                    "up_mbps": bw, "down_mbps": down, "codec": codec, "wall_s": time.monotonic() - t0,
                    "final_accuracy": s.get("final_accuracy"), "bytes_up": s["bytes_up"],
                    "bytes_down": s["bytes_down"], "wire_bytes": s["wire_bytes"], "link_bytes": s["link_bytes"],
                    "codec_wall_s": s["codec_wall_s"], **m,
                }
                results["cases"].append(case)
                print(f"  comm {m['comm_s']:.2f}s (virtual clock {m['comm_pred_s']:.2f}s), "
                      f"round {m['round_time_s']:.2f}s, acc {case['final_accuracy']}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    finish(results, out)
    return 0


def finish(results: dict[str, Any], out: Path) -> None:
    """Derived columns (shares, prediction errors, savings against uncompressed), JSON, plot."""
    for c in results["cases"]:
        c["codec_share"] = c["codec_s"] / c["comm_s"] if c["comm_s"] > 0 else None
        c["pred_error"] = (c["comm_pred_s"] - c["comm_s"]) / c["comm_s"] if c["comm_s"] > 0 else None
        c["trip_pred_error"] = (c["trip_pred_s"] - c["trip_s"]) / c["trip_s"] if c["trip_s"] > 0 else None
        ref = next((r for r in results["cases"] if r["up_mbps"] == c["up_mbps"] and r["codec"] == "none"), None)
        if ref is not None:
            c["comm_reduction"] = 1 - c["comm_s"] / ref["comm_s"]
            if c["final_accuracy"] is not None and ref["final_accuracy"] is not None:
                c["accuracy_delta_pt"] = 100 * (c["final_accuracy"] - ref["final_accuracy"])
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
