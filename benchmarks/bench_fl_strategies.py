"""Time to target accuracy of FedAvg, FedAsync, FedBuff and FedFa under one heterogeneity.

Setting (each strategy starts from ``configs/<strategy>_mnist.yaml``; the overrides below are
applied to all of them so they differ only in the rule):

* data: embedded MNIST, 50 clients x 120 samples (``--quick``: 20 x 60), evaluated on the
  first 2,000 (quick: 500) test images; IID and Dirichlet(alpha=0.5) label skew;
* model: the ``mlp`` (235k parameters; the configs' CNN is 25x slower to train on a CPU, the
  MLP keeps a full sweep in minutes), local SGD lr 0.1, batch 32, one local epoch;
* heterogeneity: compute log-normal, median 2 ms/sample, sigma 1.0 (about 10x between the 5th
  and 95th percentile); links 30% 1/5 Mbps, 50% 10/50 Mbps, 20% 100/200 Mbps (up/down),
  50 ms latency; timing modeled (deterministic); uplink codec ``none`` (``--codec``);
* concurrency: ``--concurrency`` clients (default 10; quick 5) train at any time under every
  rule: FedAvg cohorts of that size (wait for all), FedAsync/FedBuff ``max_in_flight``, FedFa
  window K = concurrency with each freed slot handed to a random idle client (the config's
  ``redispatch: random``); ``fedfa+redispatch=same`` is the spec read literally (K clients
  dispatched, the arriving one re-dispatched: only the first K drawn ever train);
  FedBuff K = concurrency / 2; FedAsync alpha 0.6; polynomial staleness a = 0.5;
* stop: the first evaluation (every 5 simulated seconds) at or above ``--target``, or the
  simulated-time cap. Speedup = FedAvg's median time to target / the rule's.

Writes ``benchmarks/results/fl_strategies[_quick].json`` and ``.png``.

    .venv/bin/python benchmarks/bench_fl_strategies.py --quick
    .venv/bin/python benchmarks/bench_fl_strategies.py --seeds 3 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fl_common import (  # noqa: E402
    RESULTS,
    ROOT,
    SCRATCH,
    provenance,
    pyplot,
    run_parallel,
    save_figure,
    write_json,
)

STRATEGIES = ("fedavg", "fedasync", "fedbuff", "fedfa", "fedfa+redispatch=same")


def split_label(label: str) -> tuple[str, list[str]]:
    """``"fedfa+redispatch=same"`` -> ("fedfa", ["strategy.redispatch=same"])."""
    name, *extra = label.split("+")
    return name, [f"strategy.{e}" for e in extra]


def overrides(a: argparse.Namespace, label: str, partition: str, seed: int) -> list[str]:
    clients, spc = (20, 60) if a.quick else (a.clients, a.samples_per_client)
    strategy, extra = split_label(label)
    conc = min(a.concurrency, clients)
    ov = [
        f"data.clients={clients}",
        f"data.samples_per_client={spc}",
        f"data.test_limit={500 if a.quick else 2000}",
        f"data.partition={partition}",
        "data.alpha=0.5",
        f"model.name={a.model}",
        "train.lr=0.1",
        "train.batch=32",
        "train.local_epochs=1",
        "clients.compute={dist: lognormal, s_per_sample: 0.002, sigma: 1.0}",
        "clients.network.tiers=[{up_mbps: 1, down_mbps: 5, weight: 0.3}, "
        "{up_mbps: 10, down_mbps: 50, weight: 0.5}, {up_mbps: 100, down_mbps: 200, weight: 0.2}]",
        "clients.network.latency_s=0.05",
        "clients.timing=modeled",
        f"codec.name={a.codec}",
        f"run.seed={seed}",
        "run.max_updates=null",
        "run.rounds=null",
        f"run.max_sim_time={a.max_sim_time}",
        f"run.target_accuracy={a.target}",
        "run.stop_at_target=true",
        "run.eval_every=null",
        "run.eval_every_time=5",
        "run.plots=false",
    ]
    if strategy == "fedavg":
        ov.append(f"strategy.clients_per_round={conc}")
    else:
        ov.append(f"strategy.max_in_flight={conc}")
    if strategy == "fedbuff":
        ov.append(f"strategy.K={max(conc // 2, 1)}")
    if strategy == "fedfa":
        ov.append(f"strategy.K={conc}")
    return ov + extra


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    from fedpress.experiment.run import run_experiment

    t0 = time.perf_counter()
    s = run_experiment(job["config"], job["overrides"], run_dir=job["run_dir"])
    keep = ("strategy", "partition", "seed", "time_to_target", "updates_to_target",
            "best_accuracy", "final_accuracy", "sim_time", "updates", "versions",
            "bytes_up", "bytes_down", "staleness_mean", "staleness_max", "idle_fraction",
            "wait_time_mean_s", "participating_clients", "stop_reason", "run_dir")
    out = {k: s.get(k) for k in keep}
    out["strategy"] = job["label"]
    out["wall_s"] = time.perf_counter() - t0
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for part in sorted({r["partition"] for r in runs}):
        rows = {}
        for strat in dict.fromkeys(r["strategy"] for r in runs):
            rs = [r for r in runs if r["partition"] == part and r["strategy"] == strat]
            if not rs:
                continue
            ttt = [r["time_to_target"] for r in rs if r["time_to_target"] is not None]
            rows[strat] = {
                "seeds": len(rs),
                "reached": len(ttt),
                "median_time_to_target": statistics.median(ttt) if len(ttt) == len(rs) else None,
                "times_to_target": [r["time_to_target"] for r in rs],
                "median_best_accuracy": statistics.median(r["best_accuracy"] for r in rs),
                "median_updates_to_target": (
                    statistics.median(r["updates_to_target"] for r in rs)
                    if len(ttt) == len(rs) else None
                ),
            }
        base = rows.get("fedavg", {}).get("median_time_to_target")
        for row in rows.values():
            t = row["median_time_to_target"]
            row["speedup_vs_fedavg"] = (base / t) if base and t else None
        table[part] = rows
    return table


def plot(runs: list[dict[str, Any]], table: dict[str, Any], path: Path) -> Path:
    from fedpress.metrics.events import read_events

    plt = pyplot()
    parts = list(table)
    fig, axes = plt.subplots(2, len(parts), figsize=(6 * len(parts), 8), squeeze=False)
    for j, part in enumerate(parts):
        ax = axes[0][j]
        seed0 = min(r["seed"] for r in runs)
        for r in runs:
            if r["partition"] != part or r["seed"] != seed0:
                continue
            ev = [e for e in read_events(r["run_dir"]) if e["event"] == "eval"]
            ax.plot([e["t"] for e in ev], [e["accuracy"] for e in ev], label=r["strategy"])
        ax.set_title(f"{part}: accuracy vs simulated time (seed {seed0})")
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        ax = axes[1][j]
        names = list(table[part])
        vals = [table[part][n]["median_time_to_target"] or 0 for n in names]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("+", "\n") for n in names], fontsize=8)
        for x, n in enumerate(names):
            row = table[part][n]
            label = "not reached" if row["median_time_to_target"] is None else (
                f"{row['speedup_vs_fedavg']:.2f}x" if row["speedup_vs_fedavg"] else "")
            ax.annotate(label, (x, vals[x]), ha="center", va="bottom", fontsize=9)
        ax.set_ylabel("median simulated seconds to target")
        ax.set_title(f"{part}: time to target (speedup vs FedAvg)")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 clients x 60 samples, 1 seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--partitions", default="iid,dirichlet")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--samples-per-client", type=int, default=120)
    p.add_argument("--concurrency", type=int, default=None, help="clients training at once (10; quick 5)")
    p.add_argument("--model", default="mlp")
    p.add_argument("--codec", default="none")
    p.add_argument("--target", type=float, default=None, help="default 0.93 (quick: 0.85)")
    p.add_argument("--max-sim-time", type=float, default=None, help="default 600 s (quick: 150)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="result stem (default results/fl_strategies)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds = 1
    a.target = a.target or (0.8 if a.quick else 0.9)
    a.max_sim_time = a.max_sim_time or (200.0 if a.quick else 600.0)
    a.concurrency = a.concurrency or (5 if a.quick else 10)
    stem = Path(a.out) if a.out else RESULTS / ("fl_strategies_quick" if a.quick else "fl_strategies")
    jobs = []
    for part in a.partitions.split(","):
        for seed in range(a.seeds):
            for label in a.strategies.split(","):
                name, _ = split_label(label)
                jobs.append({
                    "label": label,
                    "config": str(ROOT / "configs" / f"{name}_mnist.yaml"),
                    "overrides": overrides(a, label, part, seed),
                    "run_dir": str(SCRATCH / stem.name / f"{part}-{label.replace('=', '_')}-s{seed}"),
                })
    t0 = time.perf_counter()
    runs = run_parallel(_run_one, jobs, a.workers)
    table = aggregate(runs)
    payload = {
        "benchmark": "fl_strategies",
        **provenance(),
        "setting": {"doc": __doc__.split("Writes")[0].strip(), "args": vars(a),
                    "overrides_example": jobs[0]["overrides"]},
        "wall_s": time.perf_counter() - t0,
        "summary": table,
        "runs": runs,
    }
    write_json(stem.with_suffix(".json"), payload)
    plot(runs, table, stem.with_suffix(".png"))
    for part, rows in table.items():
        for strat, row in rows.items():
            t = row["median_time_to_target"]
            sp = row["speedup_vs_fedavg"]
            print(f"{part:10s} {strat:24s} time-to-{a.target:g}: "
                  f"{'not reached' if t is None else f'{t:7.1f}s'}  "
                  f"speedup {'-' if sp is None else f'{sp:.2f}x'}  "
                  f"best acc {row['median_best_accuracy']:.3f}")
    print(f"wrote {stem.with_suffix('.json')} and .png in {payload['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
