"""Shared plumbing of the ``bench_fl_*`` benchmarks: provenance, parallel runs, JSON output.

Not a benchmark itself. Every result file records the exact command, the git commit and the
machine, so a number can always be traced back to what produced it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCRATCH = RESULTS / "tmp"  # run directories (git-ignored)


def provenance() -> dict[str, Any]:
    """Command, commit (``+dirty`` when the tree had changes) and machine, from the one
    ``fedpress.bench.machine`` every benchmark uses; runs here use one torch thread each."""
    from fedpress.bench.machine import machine_info

    info = machine_info()
    return {"command": info.pop("command"), "git_commit": info.pop("git_commit"),
            "machine": {**info, "torch_threads_per_run": 1}}


def run_parallel(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int) -> list[Any]:
    """``[fn(j) for j in jobs]`` over ``workers`` spawned processes (order kept)."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=1)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
