"""Record real federated pseudo-gradients (FedAvg, equal weights) for the codec experiments.

Codecs are judged on the updates clients actually send, so this module runs FedAvg on a real
dataset and saves, for every client and round, ``delta = w_before - w_after`` for *every*
``state_dict`` entry (float entries as float32; integer buffers such as BatchNorm's
``num_batches_tracked`` as their int64 difference, which a codec must carry losslessly).

Layout under ``out_dir``::

    client_<id>/round_<r>.safetensors   one client's delta for round r (ids from 0, r from 1)
    initial.safetensors                 global state before round 1
    final.safetensors                   global state after the last round
    trace.json                          config, per-round test accuracy/loss, timings

An optional ``uplink(client, round, delta) -> delta_hat`` hook (e.g. compress + decompress)
sits between client and server; the server applies ``w <- w - mean(delta_hat)`` (equal
weights, as in the paper), so the recorded accuracy reflects what the codec did to the updates.
The saved files always hold the uncompressed ``delta``.
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
from .data import SCHEMES, available_datasets, canonical_name, load_dataset, partition
from .models import available_models, build_model, count_parameters

__all__ = [
    "TraceConfig",
    "Uplink",
    "client_partitions",
    "evaluate",
    "load_delta",
    "local_update",
    "main_record",
    "record_traces",
    "state_delta",
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
    samples_per_client: int | None = None  # random cap per client after partitioning
    seed: int = 0
    root: str | None = None  # dataset folder override
    test_samples: int | None = 2000  # first N test samples; None: all
    # torch threads while recording (restored after). 1 by default: the thread count changes
    # float reduction order, hence the trace bits, and on a shared 2-core box two threads are
    # several times slower under contention. None: torch's current setting, capped at the CPUs.
    threads: int | None = 1

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, before any expensive work."""
        canonical_name(self.dataset)
        if self.model.strip().lower() not in available_models():
            raise ValueError(f"unknown model {self.model!r}; available: "
                             f"{', '.join(available_models())}")
        if self.partition not in SCHEMES:
            raise ValueError(f"unknown partition {self.partition!r}; available: "
                             f"{', '.join(SCHEMES)}")
        for name in ("clients", "rounds", "batch_size", "local_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("samples_per_client", "test_samples", "threads"):
            val = getattr(self, name)
            if val is not None and val < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {val}")
        if not self.lr > 0 or self.momentum < 0 or self.weight_decay < 0 or not self.alpha > 0:
            raise ValueError("need lr > 0, alpha > 0, momentum >= 0, weight_decay >= 0")


def trace_file(out_dir: str | Path, client: int, round_: int) -> Path:
    """Path of one client's delta for one round (``client_<id>/round_<r>.safetensors``)."""
    return Path(out_dir) / f"client_{client}" / f"round_{round_}.safetensors"


def load_delta(out_dir: str | Path, client: int, round_: int) -> dict[str, np.ndarray]:
    """Read back one recorded delta (state_dict key -> array)."""
    return load_file(str(trace_file(out_dir, client, round_)))


def state_delta(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
                ) -> dict[str, np.ndarray]:
    """``before - after`` per entry: float32 for floating entries, int64 for the rest."""
    out: dict[str, np.ndarray] = {}
    for key, b in before.items():
        a = after[key]
        if b.is_floating_point():
            d = (b.detach() - a.detach()).to(torch.float32)
        else:
            d = b.detach().to(torch.int64) - a.detach().to(torch.int64)
        out[key] = np.array(d.cpu().numpy(), order="C")  # keeps 0-d entries 0-d
    return out


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


def local_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TraceConfig,
                 round_: int, client: int) -> float:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs of fresh-momentum SGD.

    Shuffling is seeded by (seed, round, client), so a run is reproducible. Batches of one
    sample are skipped (BatchNorm cannot normalise them). Returns the mean training loss.
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(_seed(cfg.seed, round_, client))
    n, total, count = len(y), 0.0, 0
    for _ in range(cfg.local_epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH])
        target = y[start:start + EVAL_BATCH]
        loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return correct / max(len(y), 1), loss / max(len(y), 1)


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


def _apply_mean(state: dict[str, torch.Tensor], sums: dict[str, np.ndarray], n: int
                ) -> dict[str, torch.Tensor]:
    """FedAvg server step with equal weights: ``w - mean(delta_hat)``; integer entries take
    the rounded mean."""
    new = {}
    for key, w in state.items():
        mean = sums[key] / n
        if w.is_floating_point():
            new[key] = w - torch.as_tensor(mean).to(w.dtype)
        else:
            new[key] = w - torch.as_tensor(np.rint(mean)).to(w.dtype)
    return new


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_state(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    arrays = {k: np.array(v.detach().cpu().numpy(), order="C") for k, v in state.items()}
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


def _record(cfg: TraceConfig, out: Path, uplink: Uplink | None, progress: bool,
            threads: int) -> dict:
    t_start = time.perf_counter()
    train = load_dataset(cfg.dataset, "train", root=cfg.root)
    test = load_dataset(cfg.dataset, "test", root=cfg.root, limit=cfg.test_samples)
    parts = client_partitions(cfg, train.y)
    data = [(torch.from_numpy(train.x[p]), torch.from_numpy(train.y[p])) for p in parts]
    x_test, y_test = torch.from_numpy(test.x.copy()), torch.from_numpy(test.y.copy())

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train.in_channels, train.num_classes, train.image_size)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {"dataset": train.name, "model": cfg.model, "seed": str(cfg.seed)}
    _save_state(out / "initial.safetensors", state, {**meta, "round": "0"})
    acc0, loss0 = evaluate(model, x_test, y_test)
    trace: dict[str, Any] = {
        "format": "fedpress-trace/1",
        "config": asdict(cfg),
        "layout": "client_<id>/round_<r>.safetensors (id from 0, r from 1)",
        "dataset": {"name": train.name, "train_samples": len(train), "test_samples": len(test),
                    "in_channels": train.in_channels, "image_size": train.image_size,
                    "num_classes": train.num_classes},
        "client_samples": [len(p) for p in parts],
        "num_parameters": count_parameters(model),
        "state_entries": {k: {"shape": list(v.shape),
                              "dtype": "float32" if v.is_floating_point() else "int64"}
                          for k, v in state.items()},
        "initial": {"test_accuracy": acc0, "test_loss": loss0},
        "rounds": [],
        "threads": threads,
        "versions": {"fedpress": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    bar = tqdm(range(1, cfg.rounds + 1), desc=f"{cfg.model}/{train.name}", unit="round",
               disable=not progress)
    for r in bar:
        t_round = time.perf_counter()
        sums = {k: np.zeros(tuple(v.shape), dtype=np.float64) for k, v in state.items()}
        train_losses = []
        for c, (xc, yc) in enumerate(data):
            model.load_state_dict(state)
            train_losses.append(local_update(model, xc, yc, cfg, r, c))
            delta = state_delta(state, model.state_dict())
            path = trace_file(out, c, r)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(delta, str(path), metadata={**meta, "client": str(c), "round": str(r)})
            sent = delta if uplink is None else _check_uplink(delta, uplink(c, r, delta), c, r)
            for k, v in sent.items():
                sums[k] += v
        state = _apply_mean(state, sums, len(data))
        model.load_state_dict(state)
        acc, loss = evaluate(model, x_test, y_test)
        trace["rounds"].append({"round": r, "test_accuracy": acc, "test_loss": loss,
                                "train_loss": float(np.mean(train_losses)),
                                "seconds": time.perf_counter() - t_round})
        trace["final_accuracy"] = acc
        trace["seconds"] = time.perf_counter() - t_start
        _write_json(out / "trace.json", trace)
        bar.set_postfix(acc=f"{acc:.4f}", loss=f"{loss:.3f}")
    bar.close()
    _save_state(out / "final.safetensors", state, {**meta, "round": str(cfg.rounds)})
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
                   help="cap per client (none: all)")
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
