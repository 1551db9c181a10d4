"""Simulation throughput and peak memory of the engine vs the number of clients (10/100/1000).

Setting: synthetic 8x8 single-channel images (``--samples`` per client, random labels), a
softmax-regression model (650 parameters) so the engine, not training, dominates; uplink codec
``none`` (``--codec``); log-normal compute; every client busy (async rules: max_in_flight =
clients, FedAvg: cohort = all clients); a fixed number of client updates (``--updates``).
Each (strategy, clients) point runs in a fresh spawned process, one at a time, so the peak
RSS (``resource.getrusage``; torch alone is about 350 MB of it) belongs to that point alone;
a second, untimed pass under tracemalloc gives the peak of Python + NumPy allocations made by
the run (``--no-tracemalloc`` skips it). Throughput = accepted client updates per second of
real time, after a 5-update warm-up run in the same process.

Writes ``benchmarks/results/fl_scale[_quick].json`` and ``.png``.

    .venv/bin/python benchmarks/bench_fl_scale.py --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fl_common import RESULTS, SCRATCH, provenance, pyplot, save_figure, write_json  # noqa: E402


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    import resource
    import tracemalloc

    import numpy as np
    import torch
    from torch import nn

    from fedpress.config import load_config
    from fedpress.experiment.build import SimulationInputs
    from fedpress.experiment.run import run_experiment

    torch.set_num_threads(1)
    n, spc = job["clients"], job["samples"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n * spc, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n * spc).astype(np.int64)
    parts = np.array_split(np.arange(n * spc), n)
    inputs = SimulationInputs(x, y, x[:200], y[:200], parts,
                              lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    strat = job["strategy"]
    ov = [f"data.clients={n}", f"strategy.name={strat}", f"codec.name={job['codec']}",
          f"run.max_updates={job['updates']}", "run.rounds=null", "run.eval_every=null",
          "run.plots=false", "train.batch=10", "train.lr=0.05",
          "clients.compute={dist: lognormal, s_per_sample: 0.001, sigma: 1.0}"]
    if strat in ("fedbuff", "fedfa"):
        ov.append("strategy.K=10")  # each strategy section takes only its own keys
    ov.append(f"strategy.clients_per_round={n}" if strat == "fedavg" else f"strategy.max_in_flight={n}")
    cfg = load_config({}, ov)
    run_experiment(cfg.model_copy(deep=True), ["run.max_updates=5"], run_dir=job["run_dir"],
                   inputs=inputs)  # warm-up: lazy imports inside torch happen here, not timed
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    s = run_experiment(cfg, run_dir=job["run_dir"], inputs=inputs)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = 0
    if job["tracemalloc"]:  # second, untimed pass: tracing slows Python several-fold
        tracemalloc.start()
        run_experiment(cfg, run_dir=job["run_dir"], inputs=inputs)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "strategy": strat,
        "clients": n,
        "updates": s["updates"],
        "wall_s": wall,
        "updates_per_s": s["updates"] / wall,
        "sim_time": s["sim_time"],
        "tracemalloc_peak_mb": peak / 2**20,
        "peak_rss_mb": rss / 1024,
        "rss_before_run_mb": rss0 / 1024,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for strat in dict.fromkeys(r["strategy"] for r in rows):
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["clients"])
        xs = [r["clients"] for r in rs]
        a1.plot(xs, [r["updates_per_s"] for r in rs], marker="o", label=strat)
        a2.plot(xs, [r["tracemalloc_peak_mb"] for r in rs], marker="o", label=f"{strat} (traced)")
        a2.plot(xs, [r["peak_rss_mb"] for r in rs], marker="x", ls="--", label=f"{strat} (RSS)")
    a1.set_ylabel("client updates / real second")
    a2.set_ylabel("peak memory (MB)")
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xlabel("clients")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 and 100 clients, 200 updates")
    p.add_argument("--clients", default="10,100,1000")
    p.add_argument("--strategies", default="fedavg,fedbuff,fedfa")
    p.add_argument("--updates", type=int, default=None, help="default 3000 (quick: 200)")
    p.add_argument("--samples", type=int, default=20, help="samples per client")
    p.add_argument("--codec", default="none")
    p.add_argument("--no-tracemalloc", action="store_true")
    a = p.parse_args(argv)
    updates = a.updates or (200 if a.quick else 3000)
    sizes = [10, 100] if a.quick else [int(c) for c in a.clients.split(",")]
    stem = RESULTS / ("fl_scale_quick" if a.quick else "fl_scale")
    jobs = [
        {"strategy": s, "clients": n, "samples": a.samples, "updates": updates, "codec": a.codec,
         "tracemalloc": not a.no_tracemalloc, "run_dir": str(SCRATCH / stem.name / f"{s}-{n}")}
        for s in a.strategies.split(",") for n in sizes
    ]
    rows = []
    ctx = mp.get_context("spawn")
    for job in jobs:  # one fresh process per point: peak RSS is per point
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            r = pool.apply(_run_one, (job,))
        rows.append(r)
        print(f"{r['strategy']:8s} {r['clients']:5d} clients  {r['updates_per_s']:8.1f} upd/s  "
              f"traced peak {r['tracemalloc_peak_mb']:7.1f} MB  RSS {r['peak_rss_mb']:7.1f} MB",
              flush=True)
    write_json(stem.with_suffix(".json"), {
        "benchmark": "fl_scale",
        **provenance(),
        "setting": {"doc": __doc__.split("Writes")[0].strip(), "args": vars(a), "updates": updates},
        "rows": rows,
    })
    plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.json')} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
