"""Entry points: ``run_experiment(config)`` and the ``fedpress run`` / ``fedpress plot`` commands.

A run directory (``run.out_dir/<run name>``) receives ``config.yaml`` (the resolved config),
``events.jsonl`` (the event log), ``summary.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedpress.config import ConfigError, ExperimentConfig, dump_config, load_config
from fedpress.metrics.events import EVENTS_FILE, EventLog, read_events
from fedpress.metrics.summary import summarize

from .build import SimulationInputs, build_server

SUMMARY_FILE = "summary.json"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore: tiny per-client batches run many
    times slower with several threads on a loaded machine than with one."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prepare_inputs(cfg: ExperimentConfig) -> SimulationInputs:
    """Load the dataset splits, partition the train split and bind the model builder."""
    from fedpress.data import load_dataset, partition
    from fedpress.models import build_model

    d = cfg.data
    limit = d.clients * d.samples_per_client if d.samples_per_client else None
    train = load_dataset(d.dataset, "train", root=d.root, limit=limit)
    test = load_dataset(d.dataset, "test", root=d.root, limit=d.test_limit)
    parts = partition(
        train.y, d.clients, d.partition, alpha=d.alpha, shards_per_client=d.shards_per_client,
        seed=cfg.run.seed,
    )
    name, ch, nc, size = cfg.model.name, train.in_channels, train.num_classes, train.image_size

    def model_fn() -> Any:
        return build_model(name, ch, nc, size)

    return SimulationInputs(train.x, train.y, test.x, test.y, parts, model_fn)


def run_experiment(
    config: ExperimentConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    *,
    run_dir: str | Path | None = None,
    inputs: SimulationInputs | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one simulated experiment; returns its summary (also written to ``summary.json``)."""
    cfg = load_config(config, overrides)
    # everything that can refuse the config runs before the run directory exists
    if inputs is None:
        inputs = prepare_inputs(cfg)
    inputs.model_fn()
    out = Path(run_dir) if run_dir is not None else Path(cfg.run.out_dir) / cfg.run_name()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    with torch_threads(cfg.run.torch_threads), EventLog(
        out / EVENTS_FILE, cfg.run.target_accuracy, tensorboard=cfg.run.tensorboard
    ) as log:
        server = build_server(cfg, inputs, log, on_progress)
        summary = server.run()
    summary.update(
        run_dir=str(out),
        dataset=cfg.data.dataset,
        partition=cfg.data.partition,
        codec=cfg.codec.name,
        seed=cfg.run.seed,
    )
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if cfg.run.plots:
        from fedpress.metrics.plots import plot_run

        plot_run(out)
    return summary


def _progress_bar(cfg: ExperimentConfig) -> tuple[Any, Callable[[dict[str, Any]], None]]:
    from tqdm import tqdm

    total = cfg.run.max_updates
    bar = tqdm(total=total, unit="upd", desc=cfg.run_name(), file=sys.stderr, leave=False)
    state = {"n": 0}

    def hook(info: dict[str, Any]) -> None:
        n = info.get("updates", 0)
        if n > state["n"]:
            bar.update(n - state["n"])
            state["n"] = n
        post = {"t": f"{info.get('t', 0):.0f}s"}
        if info.get("accuracy") is not None:
            post["acc"] = f"{info['accuracy']:.3f}"
            bar.set_postfix(post)

    return bar, hook


def main_run(argv: list[str] | None = None) -> int:
    """``fedpress run CONFIG [key=value ...]``: run, print the summary's headline numbers."""
    p = argparse.ArgumentParser(prog="fedpress run", description=main_run.__doc__)
    p.add_argument("config", help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. strategy.name=fedbuff")
    p.add_argument("--run-dir", default=None, help="default: run.out_dir/<run name>")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    from fedpress.codec.errors import CodecError

    try:
        cfg = load_config(args.config, args.overrides)
        bar, hook = (None, None) if args.quiet else _progress_bar(cfg)
        try:
            s = run_experiment(cfg, run_dir=args.run_dir, on_progress=hook)
        finally:
            if bar is not None:
                bar.close()
    except (ConfigError, CodecError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"fedpress run: error: {exc}", file=sys.stderr)
        return 2
    ttt = s["time_to_target"]
    print(
        f"{s['strategy']}: final acc {s['final_accuracy']:.4f} best {s['best_accuracy']:.4f} "
        f"sim {s['sim_time']:.1f}s updates {s['updates']} "
        f"time-to-target {'-' if ttt is None else f'{ttt:.1f}s'} "
        f"up {s['bytes_up'] / 1e6:.2f} MB down {s['bytes_down'] / 1e6:.2f} MB -> {s['run_dir']}"
    )
    return 0


def main_plot(argv: list[str] | None = None) -> int:
    """``fedpress plot RUN_DIR``: redraw a run's plots (and summary) from its event log."""
    p = argparse.ArgumentParser(prog="fedpress plot", description=main_plot.__doc__)
    p.add_argument("run_dir")
    p.add_argument("--no-summary", action="store_true", help="do not rewrite summary.json")
    args = p.parse_args(argv)
    from fedpress.metrics.plots import plot_run

    try:
        run_dir = Path(args.run_dir)
        paths = plot_run(run_dir)
        if not args.no_summary:
            s = summarize(read_events(run_dir))
            old = run_dir / SUMMARY_FILE
            if old.is_file():  # keep fields added by run_experiment (run_dir, codec, ...)
                s = {**json.loads(old.read_text(encoding="utf-8")), **s}
            old.write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"fedpress plot: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
