"""Flower and fedpress side by side: FedAvg over gRPC on the same shaped links, in one run.

The same model, data and training as ``configs/grpc_cnn_fedavg.yaml`` (McMahan et al.'s CNN
``cnn-fedavg``, embedded MNIST, IID shards from fedpress's partitioner, one epoch of SGD at the
config's lr and batch, the same clients and rounds, the same initial weights), with the server and
each client in their own network namespace on ``tc``-shaped veth links (``benchmarks/netns.py``).
First Flower (legacy ``flwr.server.start_server`` / ``flwr.client.start_client``, in its own venv:
``benchmarks/flower_grpc_app.py``), then fedpress (``fedpress server`` / ``fedpress client``, as
``bench_grpc_shaped.py`` runs them) with each codec at REL ``--eb``, downlink compressed too.

Per round it records: payload bytes each way (Flower's own serialisation, the ``.npy`` blobs of
``Parameters.tensors``, against fedpress's wire payload), the kernel's interface byte counts of
the whole run (TCP/IP included), the time per round from server-side timestamps (between
consecutive global-model updates) and the communication time (server dispatch to aggregated,
minus the slowest client's training), and each framework's final accuracy on the same test set.

Needs root (network namespaces) and Flower's venv (``--flwr-python``, default
``$FEDPRESS_FLWR_PYTHON`` or ``/work/venvs/flwr/bin/python``); it says which is missing in one
line and exits 0 where it cannot run.

    sudo python benchmarks/bench_grpc_flower.py            # cnn-fedavg, 10 up / 50 down Mbit/s
    sudo python benchmarks/bench_grpc_flower.py --quick    # CI: MLP, 100 samples, none + grad
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_grpc_shaped import _env, _port, case_overrides, round_metrics, run_case, run_processes  # noqa: E402
from netns import Topology, unavailable  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_FLWR = "/work/venvs/flwr/bin/python"
CONFIG = ROOT / "configs" / "grpc_cnn_fedavg.yaml"


def flower_missing(python: str) -> str | None:
    """Why Flower cannot run from ``python``, or None when it can."""
    if not Path(python).is_file():
        return (f"no Flower venv at {python} (make one: python -m venv /work/venvs/flwr && "
                "/work/venvs/flwr/bin/pip install 'flwr>=1.20' torch numpy pydantic pyyaml; "
                "or pass --flwr-python)")
    r = subprocess.run([python, "-c", "import flwr, torch"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{python} cannot import flwr and torch: {r.stderr.strip().splitlines()[-1:]}"
    return None


def skip_reason(flwr_python: str) -> str | None:
    """One line saying why the benchmark cannot run here, or None."""
    why = flower_missing(flwr_python)
    if why is None:
        why = unavailable()
        if why is not None:
            why += ": the server and each client run in their own network namespace on tc-shaped links"
    return why


def make_job(cfg: Any) -> dict[str, Any]:
    """What Flower's processes need from the fedpress config (they cannot load it: validating a
    config imports the codecs, whose native libraries are not in Flower's venv)."""
    d, t = cfg.data, cfg.train
    if t.local_steps is not None:
        raise ValueError("the Flower side trains in epochs; set train.local_steps to null")
    return {"dataset": d.dataset, "root": d.root, "clients": d.clients,
            "samples_per_client": d.samples_per_client, "test_limit": d.test_limit,
            "partition": d.partition, "alpha": d.alpha, "shards_per_client": d.shards_per_client,
            "seed": cfg.run.seed, "model": cfg.model.name, "lr": t.lr, "momentum": t.momentum,
            "wd": t.wd, "batch": t.batch, "local_epochs": t.local_epochs, "rounds": cfg.run.rounds,
            "eval_batch": cfg.run.eval_batch}


def flower_env() -> dict[str, str]:
    """fedpress's sources and these benchmarks importable, and its data packages found (they
    sit in fedpress's venv, not Flower's)."""
    e = _env()
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(HERE)])
    data = Path(sys.prefix) / "fedpress-data"
    if "FEDPRESS_DATA_DIR" not in e and data.is_dir():
        e["FEDPRESS_DATA_DIR"] = str(data)
    e.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return e


def run_flower(topo: Topology, python: str, job: dict[str, Any], run_dir: Path, timeout: float) -> dict[str, Any]:
    """One Flower run on ``topo``: its server's record plus the kernel's byte counts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job_file, out = run_dir / "job.json", run_dir / "flower.json"
    job_file.write_text(json.dumps(job, indent=2) + "\n")
    app = [python, str(HERE / "flower_grpc_app.py")]
    port = _port()
    server = [*app, "server", "--job", str(job_file), "--address", f"0.0.0.0:{port}", "--out", str(out)]

    def client(i: int, ip: str) -> list[str]:
        return [*app, "client", "--job", str(job_file), "--server", f"{ip}:{port}", "--id", str(i)]

    link = run_processes(topo, server, client, run_dir / "logs", timeout, flower_env())
    record = json.loads(out.read_text())
    record["link_bytes"] = link
    return record


def fedpress_round_bytes(run_dir: Path) -> dict[str, float]:
    """Mean payload bytes per round over all rounds (keyframes included), both clients."""
    from fedpress.metrics.events import read_events

    up: dict[int, int] = {}
    down: dict[int, int] = {}
    for e in read_events(run_dir):
        if e["event"] == "arrival" and e.get("status") == "accepted":
            up[e["base_version"]] = up.get(e["base_version"], 0) + e["bytes_up"]
            down[e["base_version"]] = down.get(e["base_version"], 0) + e["bytes_down"]
    n = max(len(up), 1)
    return {"bytes_up_per_round": sum(up.values()) / n, "bytes_down_per_round": sum(down.values()) / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: MLP, 2 x 100 samples, 2 rounds, none + grad")
    p.add_argument("--codecs", default=None, help="fedpress codecs, default none,fast,sz3,grad")
    p.add_argument("--clients", type=int, default=None, help="default: the config's (2)")
    p.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 2)")
    p.add_argument("--up", type=float, default=10.0, help="uplink Mbit/s")
    p.add_argument("--down", type=float, default=50.0, help="downlink Mbit/s")
    p.add_argument("--latency", type=float, default=0.02, help="one-way delay, s (netem only)")
    p.add_argument("--eb", type=float, default=1e-2)
    p.add_argument("--flwr-python", default=os.environ.get("FEDPRESS_FLWR_PYTHON", DEFAULT_FLWR))
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/grpc_flower[_quick].json)")
    p.add_argument("--timeout", type=float, default=1200, help="per run, seconds")
    args = p.parse_args(argv)
    why = skip_reason(args.flwr_python)
    if why is not None:
        print(f"bench_grpc_flower: skipped: {why}")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from flower_grpc_app import flower_round_metrics  # torch: imported once the run is on

    from fedpress.bench.machine import machine_info
    from fedpress.config import load_config

    rounds = args.rounds or (2 if args.quick else 5)
    codecs = args.codecs.split(",") if args.codecs else (["none", "grad"] if args.quick else
                                                          ["none", "fast", "sz3", "grad"])
    base = ["model.name=mlp", "data.samples_per_client=100", "data.test_limit=200"] if args.quick else []
    clients = args.clients or load_config(str(CONFIG), base).data.clients
    job = make_job(load_config(str(CONFIG), [*base, *case_overrides("none", args.eb, clients, rounds)]))
    out = Path(args.out) if args.out else RESULTS / ("grpc_flower_quick.json" if args.quick else "grpc_flower.json")
    scratch = RESULTS / "tmp" / out.stem
    results: dict[str, Any] = {
        "benchmark": "bench_grpc_flower",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine_info(), "load_avg_start": os.getloadavg()},
        "setting": {"config": CONFIG.name, "overrides": base, "model": job["model"], "dataset": job["dataset"],
                    "clients": clients, "samples_per_client": job["samples_per_client"], "rounds": rounds,
                    "eb": args.eb, "up_mbps": args.up, "down_mbps": args.down,
                    "downlink": "fedpress: same codec as uplink; Flower: its .npy serialisation",
                    "means": "times: rounds after the first; payload bytes: all rounds; "
                             "link bytes: whole run / rounds (set-up, heartbeats, evaluation idle included)"},
        "cases": [],
    }
    with Topology(clients, up_mbps=args.up, down_mbps=args.down, latency_s=args.latency) as topo:
        results["setting"].update(shaper=topo.shaper, latency_s=topo.latency_s)
        print(f"[{args.up:g}/{args.down:g} Mbit/s, {topo.shaper}] flower ...", flush=True)
        t0 = time.monotonic()
        rec = run_flower(topo, args.flwr_python, job, scratch / "flower", args.timeout)
        m = flower_round_metrics(rec)
        results["flwr_version"] = rec.get("flwr_version")
        results["cases"].append({
            "framework": "flower", "codec": "flower (.npy)", "wall_s": time.monotonic() - t0,
            "load_avg": os.getloadavg(),
            "final_accuracy": rec["final_accuracy"], "link_bytes": rec["link_bytes"], **m})
        report(results["cases"][-1])
        for codec in codecs:
            print(f"[{args.up:g}/{args.down:g} Mbit/s] fedpress {codec} ...", flush=True)
            run_dir = scratch / f"fedpress-{codec}"
            t0 = time.monotonic()
            s = run_case(topo, str(CONFIG), [*base, *case_overrides(codec, args.eb, clients, rounds)], run_dir,
                         args.timeout)
            m = round_metrics(run_dir, args.up, args.down, topo.latency_s)
            results["cases"].append({
                "framework": "fedpress", "codec": codec, "wall_s": time.monotonic() - t0,
                "load_avg": os.getloadavg(),
                "final_accuracy": s.get("final_accuracy"), "link_bytes": s["link_bytes"],
                "wire_bytes": s["wire_bytes"], "codec_wall_s": s["codec_wall_s"],
                **fedpress_round_bytes(run_dir), **m})
            report(results["cases"][-1])
    results["machine"]["load_avg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    finish(results, out)
    return 0


def report(c: dict[str, Any]) -> None:
    print(f"  up {c['bytes_up_per_round'] / 1e6:.2f} MB/round, comm {c['comm_s']:.2f}s, "
          f"round {c['round_time_s']:.2f}s, acc {c['final_accuracy']}", flush=True)


def finish(results: dict[str, Any], out: Path) -> None:
    """Derived columns against Flower (bytes and time ratios), JSON and the bar chart."""
    rounds = results["setting"]["rounds"]
    ref = next(c for c in results["cases"] if c["framework"] == "flower")
    for c in results["cases"]:
        c["link_up_per_round"] = c["link_bytes"]["up"] / rounds
        c["link_down_per_round"] = c["link_bytes"]["down"] / rounds
        payload = c["bytes_up_per_round"] + c["bytes_down_per_round"]
        c["payload_vs_flower"] = payload / (ref["bytes_up_per_round"] + ref["bytes_down_per_round"])
        c["comm_vs_flower"] = c["comm_s"] / ref["comm_s"] if ref["comm_s"] > 0 else None
        c["round_time_vs_flower"] = c["round_time_s"] / ref["round_time_s"] if ref["round_time_s"] > 0 else None
        if c["final_accuracy"] is not None and ref["final_accuracy"] is not None:
            c["accuracy_vs_flower_pt"] = 100 * (c["final_accuracy"] - ref["final_accuracy"])
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    labels = ["Flower\n(.npy)" if c["framework"] == "flower" else f"fedpress\n{c['codec']}" for c in cases]
    xs = list(range(len(cases)))
    w = 0.38
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.bar([x - w / 2 for x in xs], [c["bytes_up_per_round"] / 1e6 for c in cases], w, label="payload up")
    a1.bar([x + w / 2 for x in xs], [c["bytes_down_per_round"] / 1e6 for c in cases], w, label="payload down")
    a1.scatter([x - w / 2 for x in xs], [c["link_up_per_round"] / 1e6 for c in cases], color="k", marker="_",
               s=200, zorder=3, label="link (kernel), per round")
    a1.scatter([x + w / 2 for x in xs], [c["link_down_per_round"] / 1e6 for c in cases], color="k", marker="_",
               s=200, zorder=3)
    a1.set_ylabel("MB per round (all clients)")
    a1.set_xticks(xs, labels)
    a1.legend(fontsize=8)
    a2.bar([x - w / 2 for x in xs], [c["round_time_s"] for c in cases], w, color="tab:gray", label="round time")
    a2.bar([x + w / 2 for x in xs], [c["comm_s"] for c in cases], w, color="tab:blue", label="communication")
    a2.set_ylabel("seconds per round")
    a2.set_xticks(xs, labels)
    a2.legend(fontsize=8)
    s = results["setting"]
    fig.suptitle(f"{s['model']} FedAvg over gRPC, {s['clients']} clients, {s['up_mbps']:g}/{s['down_mbps']:g} "
                 f"Mbit/s up/down ({s['shaper']}), REL {s['eb']:g}: Flower vs fedpress")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
