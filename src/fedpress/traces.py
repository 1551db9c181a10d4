"""Record real federated pseudo-gradients for the codec experiments, through the engine.

Codecs are judged on the updates clients actually send, so this module runs the one engine
(``fedpress.fl``: FedAvg, every client every round, server step ``w <- w + sum_i p_i delta_i``
with ``p_i`` proportional to shard sizes, equal under the per-client cap) and saves, through an
uplink hook, every client's pseudo-gradient ``g = w_before - w_after`` of every round (the
engine's ``delta = w_after - w_before`` with the sign flipped; float32). Only floating state
travels in the engine (weights, biases, BatchNorm statistics); integer buffers such as
``num_batches_tracked`` stay with the client and are not recorded.

Layout under ``out_dir``::

    client_<id>/round_<r>.safetensors   one client's pseudo-gradient for round r (ids from 0, r from 1)
    initial.safetensors                 global model before round 1
    final.safetensors                   global model after the last round
    events.jsonl                        the engine's event log of the run
    trace.json                          config, per-round test accuracy/loss, timings

An optional ``uplink(client, round, g) -> g_hat`` hook (e.g. compress + decompress) sits between
client and server; the server aggregates ``g_hat``, so the recorded accuracy reflects what the
codec did to the updates. The saved files always hold the uncompressed ``g``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .data import SCHEMES, available_datasets, load_dataset, partition
from .models import available_models, build_model, count_parameters

__all__ = [
    "TraceConfig",
    "Uplink",
    "client_partitions",
    "experiment_config",
    "load_delta",
    "main_record",
    "record_traces",
    "trace_file",
]

Uplink = Callable[[int, int, dict[str, np.ndarray]], dict[str, np.ndarray]]
EVAL_BATCH = 1000


@dataclass
class TraceConfig:
    """Everything that determines a trace; saved verbatim in ``trace.json``."""

    dataset: str = "mnist"
    model: str = "cnn"
    clients: int = 4
    rounds: int = 10
    partition: str = "iid"  # iid | dirichlet | shards
    alpha: float = 0.5  # Dirichlet concentration (partition="dirichlet")
    lr: float = 0.1  # local SGD
    momentum: float = 0.9  # momentum buffer restarts every round (stateless clients)
    weight_decay: float = 5e-4
    batch_size: int = 64  # 64 rather than 128: more local steps when clients hold ~2k samples
    local_epochs: int = 1
    # random cap per client after partitioning: a small default so a trace takes minutes
    samples_per_client: int | None = 500
    seed: int = 0
    root: str | None = None  # dataset folder override
    test_samples: int | None = 2000  # first N test samples; None: all
    # torch threads while recording (restored after). 1 by default: the thread count changes
    # float reduction order, hence the trace bits, and on a shared 2-core box two threads are
    # several times slower under contention. None: torch's current setting, capped at the CPUs.
    threads: int | None = 1

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, before any expensive work: the
        engine's config validation, plus the fields only a trace has."""
        if self.partition not in SCHEMES:
            raise ValueError(f"unknown partition {self.partition!r}; available: "
                             f"{', '.join(SCHEMES)}")
        for name in ("samples_per_client", "test_samples", "threads"):
            val = getattr(self, name)
            if val is not None and val < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {val}")
        experiment_config(self, self.threads or 1)


def trace_file(out_dir: str | Path, client: int, round_: int) -> Path:
    """Path of one client's delta for one round (``client_<id>/round_<r>.safetensors``)."""
    return Path(out_dir) / f"client_{client}" / f"round_{round_}.safetensors"


def load_delta(out_dir: str | Path, client: int, round_: int) -> dict[str, np.ndarray]:
    """Read back one recorded delta (state_dict key -> array)."""
    return load_file(str(trace_file(out_dir, client, round_)))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def client_partitions(cfg: TraceConfig, labels: np.ndarray) -> list[np.ndarray]:
    """Each client's training indices: the partition, then a seeded random cap if set."""
    parts = partition(labels, cfg.clients, scheme=cfg.partition, alpha=cfg.alpha, seed=cfg.seed)
    if cfg.samples_per_client is None:
        return parts
    rng = np.random.default_rng(_seed(cfg.seed, 0xCA9))
    return [np.sort(rng.choice(p, size=min(len(p), cfg.samples_per_client), replace=False))
            for p in parts]


def _check_uplink(delta: dict[str, np.ndarray], got: Any, client: int, round_: int
                  ) -> dict[str, np.ndarray]:
    if not isinstance(got, dict) or set(got) != set(delta):
        raise ValueError(f"uplink(client={client}, round={round_}) must return a dict with the "
                         "same keys as the delta it was given")
    out = {}
    for key, ref in delta.items():
        arr = np.asarray(got[key])
        if arr.shape != ref.shape:
            raise ValueError(f"uplink returned shape {arr.shape} for {key!r}, expected "
                             f"{ref.shape}")
        out[key] = arr
    return out


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_state(path: Path, state: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    save_file(arrays, str(path), metadata=metadata)


def _threads(requested: int | None) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return requested if requested is not None else max(1, min(torch.get_num_threads(), cpus))


def record_traces(cfg: TraceConfig, out_dir: str | Path, uplink: Uplink | None = None,
                  progress: bool = True) -> dict:
    """Run FedAvg per ``cfg``, saving every client's per-round delta under ``out_dir``.

    Parameters
    ----------
    cfg : the run; validated first (``ValueError`` on bad names or values).
    out_dir : created if needed; existing files of the same names are overwritten.
    uplink : optional ``(client_id, round, delta) -> delta_hat``; the server averages the
        returned arrays (same keys and shapes) instead of the raw deltas.
    progress : show a tqdm bar over rounds.

    Returns
    -------
    The ``trace.json`` contents: config, dataset/model facts, ``num_parameters``, ``rounds``
    (per round ``test_accuracy``, ``test_loss``, ``train_loss``, ``seconds``),
    ``final_accuracy``, total ``seconds``.
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    threads = _threads(cfg.threads)
    torch.set_num_threads(threads)
    try:
        return _record(cfg, out, uplink, progress, threads)
    finally:
        torch.set_num_threads(old_threads)


def experiment_config(cfg: TraceConfig, threads: int) -> Any:
    """The engine config of a trace run (validated like any run; ``ConfigError`` if not)."""
    from .config import load_config

    return load_config({
        "data": {"dataset": cfg.dataset, "root": cfg.root, "partition": cfg.partition,
                 "alpha": cfg.alpha, "clients": cfg.clients, "test_limit": cfg.test_samples},
        "model": {"name": cfg.model},
        "train": {"lr": cfg.lr, "momentum": cfg.momentum, "wd": cfg.weight_decay,
                  "batch": cfg.batch_size, "local_epochs": cfg.local_epochs},
        "strategy": {"name": "fedavg", "eta_g": 1.0, "server_opt": {"name": "sgd"}},
        "codec": {"name": "none"},
        "clients": {"compute": {"dist": "constant"}},
        "run": {"seed": cfg.seed, "rounds": cfg.rounds, "eval_every": 1, "plots": False,
                "torch_threads": threads},
    })


def _record(cfg: TraceConfig, out: Path, uplink: Uplink | None, progress: bool,
            threads: int) -> dict:
    from .experiment.build import SimulationInputs, build_server
    from .experiment.run import torch_threads
    from .fl.types import Tensors, from_pseudo_gradient, to_pseudo_gradient
    from .metrics.events import EVENTS_FILE, EventLog, read_events

    t_start = time.perf_counter()
    exp = experiment_config(cfg, threads)
    train = load_dataset(cfg.dataset, "train", root=cfg.root)
    test = load_dataset(cfg.dataset, "test", root=cfg.root, limit=cfg.test_samples)
    parts = client_partitions(cfg, train.y)

    def model_fn() -> nn.Module:
        return build_model(cfg.model, train.in_channels, train.num_classes, train.image_size)

    inputs = SimulationInputs(train.x, train.y, test.x, test.y, parts, model_fn)
    meta = {"dataset": train.name, "model": cfg.model, "seed": str(cfg.seed)}

    def hook(client: int, version: int, delta: Tensors) -> Tensors:
        r = version + 1  # every client trains every round on the model of version r - 1
        g = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in to_pseudo_gradient(delta).items()}
        path = trace_file(out, client, r)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(g, str(path), metadata={**meta, "client": str(client), "round": str(r)})
        if uplink is None:
            return delta
        sent = _check_uplink(g, uplink(client, r, g), client, r)
        return {k: v.astype(delta[k].dtype) for k, v in from_pseudo_gradient(sent).items()}

    bar = tqdm(total=cfg.rounds, desc=f"{cfg.model}/{train.name}", unit="round", disable=not progress)
    stamps: dict[int, float] = {}

    def on_progress(info: dict[str, Any]) -> None:
        if "accuracy" in info and info.get("accuracy") is not None:
            v = int(info.get("version", len(stamps)))
            stamps.setdefault(v, time.perf_counter())
            bar.n = min(v, cfg.rounds)
            bar.set_postfix(acc=f"{info['accuracy']:.4f}")
            bar.refresh()

    with torch_threads(threads), EventLog(out / EVENTS_FILE) as log:
        server = build_server(exp, inputs, log, on_progress, uplink_hook=hook)
        _save_state(out / "initial.safetensors", server.params, {**meta, "round": "0"})
        server.run()
    bar.close()
    _save_state(out / "final.safetensors", server.params, {**meta, "round": str(cfg.rounds)})
    events = list(read_events(out))
    evals = {e["version"]: e for e in events if e["event"] == "eval"}
    losses: dict[int, list[float]] = {}
    for e in events:
        if e["event"] == "arrival" and e.get("status") == "accepted":
            losses.setdefault(e["base_version"] + 1, []).append(float(e.get("train_loss", 0.0)))
    trace: dict[str, Any] = {
        "format": "fedpress-trace/2",
        "config": asdict(cfg),
        "layout": "client_<id>/round_<r>.safetensors (id from 0, r from 1)",
        "sign": "g = w_before - w_after (float state entries only)",
        "dataset": {"name": train.name, "train_samples": len(train), "test_samples": len(test),
                    "in_channels": train.in_channels, "image_size": train.image_size,
                    "num_classes": train.num_classes},
        "client_samples": [len(p) for p in parts],
        "num_parameters": count_parameters(model_fn()),
        "state_entries": {k: {"shape": list(v.shape), "dtype": "float32"}
                          for k, v in server.params.items()},
        "initial": {"test_accuracy": evals[0]["accuracy"], "test_loss": evals[0]["loss"]},
        "rounds": [],
        "threads": threads,
        "versions": {"fedpress": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    prev = t_start
    for r in range(1, cfg.rounds + 1):
        e = evals[r]
        now = stamps.get(r, prev)
        trace["rounds"].append({"round": r, "test_accuracy": e["accuracy"], "test_loss": e["loss"],
                                "train_loss": float(np.mean(losses.get(r, [np.nan]))),
                                "seconds": max(now - prev, 0.0)})
        prev = now
    trace["final_accuracy"] = trace["rounds"][-1]["test_accuracy"]
    trace["seconds"] = time.perf_counter() - t_start
    _write_json(out / "trace.json", trace)
    return trace


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _optional_int(text: str) -> int | None:
    if text.strip().lower() in ("none", "all", "0"):
        return None
    return int(text)


def _parser() -> argparse.ArgumentParser:
    d = TraceConfig()
    p = argparse.ArgumentParser(
        prog="fedpress record-traces",
        description="Run FedAvg on a local dataset and save every client's per-round "
                    "pseudo-gradient as safetensors.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", default=d.dataset, help=", ".join(available_datasets()))
    p.add_argument("--model", default=d.model, help=", ".join(available_models()))
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--partition", default=d.partition, choices=SCHEMES)
    p.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--local-epochs", type=int, default=d.local_epochs)
    p.add_argument("--samples-per-client", type=_optional_int, default=d.samples_per_client,
                   help="random cap per client (default: %(default)s, a few minutes on a CPU; none: all)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--root", default=d.root, help="dataset folder override")
    p.add_argument("--test-samples", type=_optional_int, default=d.test_samples,
                   help="first N test samples (none: all)")
    p.add_argument("--threads", type=_optional_int, default=d.threads,
                   help="torch threads (default 1, reproducible; none: torch's setting)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main_record(argv: list[str] | None = None) -> int:
    """``fedpress record-traces``: returns 0 on success, 2 on bad arguments or missing data."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    names = {f.name for f in fields(TraceConfig)}
    cfg = TraceConfig(**{k: v for k, v in vars(args).items() if k in names})
    try:
        trace = record_traces(cfg, args.out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedpress record-traces: error: {exc}", file=sys.stderr)
        return 2
    print(f"recorded {cfg.clients} clients x {cfg.rounds} rounds to {args.out}: "
          f"final test accuracy {trace['final_accuracy']:.4f} in {trace['seconds']:.1f} s")
    return 0
