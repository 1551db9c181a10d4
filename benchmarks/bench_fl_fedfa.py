"""Where does a fully asynchronous rule gain most? FedFa next to FedAvg, FedAsync and FedBuff,
varying one factor at a time from a base setting.

Base setting: that of ``bench_fl_strategies.py`` (embedded MNIST, the ``mlp``, 50 clients x
120 samples, log-normal compute with median 2 ms/sample and sigma 1.0, a 1/10/100 Mbps link mix,
10 clients training at any time, IID, modeled timing, raw uplink, target 0.9 test accuracy,
600 simulated seconds at most). Factors, each varied alone:

* heterogeneity spread: compute sigma 0.25 and 2.0;
* number of clients: 20 and 100;
* concurrency (= FedFa's window K, FedBuff K = concurrency / 2): 5 and 20;
* non-IID: Dirichlet label skew alpha 0.5 and 0.1.

Rules: ``fedavg`` (cohort = concurrency, waits for all), ``fedasync`` (alpha 0.6, polynomial
staleness), ``fedbuff``, ``fedfa`` (``configs/fedfa_mnist.yaml``: window K, a freed slot goes to
a random idle client), ``fedfa+redispatch=same`` (the spec read literally: only the first K
drawn clients ever train) and ``fedfa+max_in_flight=null`` (every client trains all the time,
so its concurrency is the number of clients, not 10). Speedup = median time to target of
FedAvg (or FedBuff) / the rule's; a rule that misses the target has no speedup.

Writes ``benchmarks/results/fl_fedfa_sweep.json`` and ``.png``.

    nice -n 10 .venv/bin/python benchmarks/bench_fl_fedfa.py --workers 2
    (the committed result, sized to a shared 2-core machine: --settings
     base,sigma=2.0,clients=100,dirichlet=0.1 --rules fedavg,fedbuff,fedfa,fedfa+max_in_flight=null
     --target 0.85 --max-sim-time 300, one seed)
"""

from __future__ import annotations

import argparse
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
from bench_fl_strategies import _run_one, aggregate, overrides, split_label  # noqa: E402

RULES = ("fedavg", "fedasync", "fedbuff", "fedfa", "fedfa+redispatch=same", "fedfa+max_in_flight=null")

#: name -> (argument changes, extra overrides); one factor at a time
SETTINGS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "base": ({}, []),
    "sigma=0.25": ({}, ["clients.compute={dist: lognormal, s_per_sample: 0.002, sigma: 0.25}"]),
    "sigma=2.0": ({}, ["clients.compute={dist: lognormal, s_per_sample: 0.002, sigma: 2.0}"]),
    "clients=20": ({"clients": 20}, []),
    "clients=100": ({"clients": 100}, []),
    "concurrency=5": ({"concurrency": 5}, []),
    "concurrency=20": ({"concurrency": 20}, []),
    "dirichlet=0.5": ({"partition": "dirichlet"}, ["data.alpha=0.5"]),
    "dirichlet=0.1": ({"partition": "dirichlet"}, ["data.alpha=0.1"]),
}


def jobs_for(a: argparse.Namespace) -> list[dict[str, Any]]:
    jobs = []
    for setting in a.settings.split(","):
        changes, extra = SETTINGS[setting]
        ns = argparse.Namespace(**{**vars(a), **changes})
        part = changes.get("partition", "iid")
        for seed in range(a.seeds):
            for label in a.rules.split(","):
                name, _ = split_label(label)
                ov = overrides(ns, label, part, seed)
                # the rule's own extras stay last; the setting's go just before them
                n_extra = len(split_label(label)[1])
                ov = ov[: len(ov) - n_extra] + extra + ov[len(ov) - n_extra :]
                jobs.append({
                    "label": label,
                    "setting": setting,
                    "config": str(ROOT / "configs" / f"{name}_mnist.yaml"),
                    "overrides": ov,
                    "run_dir": str(SCRATCH / "fl_fedfa_sweep" / f"{setting}-{label.replace('=', '_')}-s{seed}"),
                })
    return jobs


def _run(job: dict[str, Any]) -> dict[str, Any]:
    out = _run_one(job)
    out["setting"] = job["setting"]
    out["partition"] = job["setting"]  # aggregate() groups by this key
    return out


def plot(table: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    settings = list(table)
    rules = [r for r in dict.fromkeys(k for s in table.values() for k in s) if r != "fedavg"]
    fig, axes = plt.subplots(2, 1, figsize=(13, 8))
    width = 0.8 / len(rules)
    for ax, key, title in ((axes[0], "speedup_vs_fedavg", "speedup vs FedAvg (time to target)"),
                           (axes[1], "speedup_vs_fedbuff", "speedup vs FedBuff (time to target)")):
        for i, rule in enumerate(rules):
            xs = [j + i * width for j in range(len(settings))]
            ys = [(table[s].get(rule) or {}).get(key) or 0.0 for s in settings]
            ax.bar(xs, ys, width, label=rule)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(settings))])
        ax.set_xticklabels(settings, fontsize=8)
        ax.set_title(title + " (0: target not reached)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8, ncol=3)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--samples-per-client", type=int, default=120)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--model", default="mlp")
    p.add_argument("--codec", default="none")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--max-sim-time", type=float, default=600.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    a.quick = False
    stem = Path(a.out) if a.out else RESULTS / "fl_fedfa_sweep"
    jobs = jobs_for(a)
    t0 = time.perf_counter()
    runs = run_parallel(_run, jobs, a.workers)
    table = aggregate(runs)
    for rows in table.values():
        base = (rows.get("fedbuff") or {}).get("median_time_to_target")
        for row in rows.values():
            t = row["median_time_to_target"]
            row["speedup_vs_fedbuff"] = (base / t) if base and t else None
    write_json(stem.with_suffix(".json"), {
        "benchmark": "fl_fedfa_sweep",
        **provenance(),
        "setting": {"doc": __doc__.split("Writes")[0].strip(), "args": vars(a),
                    "settings": {k: {"args": v[0], "overrides": v[1]} for k, v in SETTINGS.items()},
                    "overrides_example": jobs[0]["overrides"]},
        "wall_s": time.perf_counter() - t0,
        "summary": table,
        "runs": runs,
    })
    plot(table, stem.with_suffix(".png"))
    for setting, rows in table.items():
        for rule, row in rows.items():
            t = row["median_time_to_target"]
            f = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
            print(f"{setting:15s} {rule:26s} {'miss' if t is None else f'{t:7.1f}s'} "
                  f"vs fedavg {f(row['speedup_vs_fedavg'])} vs fedbuff {f(row['speedup_vs_fedbuff'])} "
                  f"best {row['median_best_accuracy']:.3f}")
    print(f"wrote {stem.with_suffix('.json')} and .png in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
