"""``run_llm``: one federated LoRA run into a run directory laid out like ``fedpress run``'s
(``config.yaml``, ``events.jsonl``, ``summary.json``, plots), and ``write_partition``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedpress.bench.machine import machine_info
from fedpress.experiment.run import SUMMARY_FILE, torch_threads
from fedpress.metrics.events import EVENTS_FILE, EventLog, read_events

from .config import LLMConfig, dump_llm_config, load_llm_config
from .partition import bucketize, histogram
from .simulation import LLMInputs, build_llm_server, prepare_llm
from .strategy import AdapterStrategy


def local_metrics(run_dir: Path) -> dict[str, float]:
    """Mean of the clients' local metrics over the arrivals of the last round (per client, the
    latest accepted arrival)."""
    latest: dict[int, dict[str, Any]] = {}
    for ev in read_events(run_dir):
        if ev.get("event", ev.get("kind")) == "arrival" and ev.get("status") == "accepted":
            latest[int(ev["client"])] = ev
    out: dict[str, float] = {}
    for key in ("local_loss", "local_perplexity", "local_acc_format", "local_acc_content", "train_loss"):
        vals = [float(e[key]) for e in latest.values() if e.get(key) is not None]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def run_llm(
    config: LLMConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    *,
    run_dir: str | Path | None = None,
    inputs: LLMInputs | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one federated LoRA experiment; returns its summary (also in ``summary.json``)."""
    cfg = load_llm_config(config, overrides)
    out = Path(run_dir) if run_dir is not None else Path(cfg.run.out_dir) / cfg.run_name()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_llm_config(cfg), encoding="utf-8")
    with torch_threads(cfg.run.torch_threads):
        if inputs is None:
            inputs = prepare_llm(cfg)
        with EventLog(out / EVENTS_FILE, cfg.run.target_accuracy) as log:
            server, strategy = build_llm_server(cfg, inputs, log, on_progress)
            summary = server.run()
    summary.update(run_dir=str(out), **summary_extras(cfg, inputs, strategy, out))
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    if cfg.run.plots:
        try:
            from fedpress.metrics.plots import plot_run

            plot_run(out)
        except (KeyError, ValueError) as exc:  # plots are a convenience; the log is the record
            print(f"fedpress llm: plots skipped ({exc})")
    return summary


def summary_extras(cfg: LLMConfig, inputs: LLMInputs, strategy: AdapterStrategy, run_dir: Path) -> dict[str, Any]:
    """The LLM fields of a summary (global and local metrics, aggregation errors, skew), read
    from the run's event log: the same for a simulated run and one over gRPC."""
    final = _last_eval(run_dir)
    return dict(
        skew=cfg.data.skew,
        alpha=cfg.data.alpha,
        aggregation=cfg.model.aggregation,
        codec=cfg.codec.name,
        codec_eb=cfg.codec.eb,
        seed=cfg.run.seed,
        global_metrics={k: final.get(k) for k in ("loss", "perplexity", "acc_format", "acc_content")},
        local_metrics=local_metrics(run_dir),
        agg_errors=strategy.history,
        client_tokens=[int(inputs.corpus.lengths[p].sum()) for p in inputs.parts],
    )


def _last_eval(run_dir: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for ev in read_events(run_dir):
        if ev.get("event", ev.get("kind")) == "eval":
            last = ev
    return last


def partition_report(cfg: LLMConfig, inputs: LLMInputs) -> dict[str, Any]:
    """Per-client sample and token counts with length-bucket and quality histograms."""
    c = inputs.corpus
    d = cfg.data
    lengths = c.lengths
    len_bins = bucketize(lengths, d.length_buckets)
    edges = [int(np.quantile(lengths, q)) for q in np.linspace(0, 1, d.length_buckets + 1)]
    clients = []
    for i, (tr, he) in enumerate(zip(inputs.parts, inputs.heldout, strict=True)):
        p = np.concatenate([tr, he])
        clients.append({
            "client": i,
            "samples": int(len(p)),
            "train_samples": int(len(tr)),
            "heldout_samples": int(len(he)),
            "tokens": int(lengths[p].sum()),
            "length_hist": histogram(len_bins[p], d.length_buckets),
            "tier_hist": histogram(c.tier[p], len(d.rates)),
            "category_hist": histogram(inputs.categories[p], int(inputs.categories.max()) + 1),
            "task_samples": int(sum(c.source[j] == "task" for j in p)),
        })
    return {
        "skew": d.skew, "alpha": d.alpha, "quality": d.quality, "total_tokens": d.total_tokens,
        "length_bucket_edges": edges, "corruption_rates": list(d.rates),
        "max_sample_tokens": int(lengths.max()), "clients": clients,
    }


def write_partition(config: LLMConfig | str | Path, overrides: Iterable[str] = (),
                    out_dir: str | Path | None = None) -> Path:
    """``fedpress llm partition``: JSON of per-client histograms and a plot; returns the JSON path."""
    cfg = load_llm_config(config, overrides)
    out = Path(out_dir) if out_dir is not None else Path(cfg.run.out_dir) / f"partition-{cfg.run_name()}"
    out.mkdir(parents=True, exist_ok=True)
    inputs = prepare_llm(cfg)
    rep = partition_report(cfg, inputs)
    rep["machine"] = machine_info()
    path = out / "partition.json"
    path.write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    plot_partition(rep, out / "partition.png")
    return path


def plot_partition(rep: dict[str, Any], path: Path) -> None:
    """Stacked bars per client: length buckets (left) and corruption tiers (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    cl = rep["clients"]
    x = np.arange(len(cl))
    for ax, key, title in ((axes[0], "length_hist", "length bucket"), (axes[1], "tier_hist", "corruption tier")):
        h = np.array([c[key] for c in cl], dtype=float)
        bottom = np.zeros(len(cl))
        for j in range(h.shape[1]):
            ax.bar(x, h[:, j], bottom=bottom, label=f"{title} {j}")
            bottom += h[:, j]
        ax.set_xlabel("client")
        ax.set_ylabel("samples")
        ax.set_title(f"{title}s per client ({rep['skew']}, alpha={rep['alpha']:g})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
