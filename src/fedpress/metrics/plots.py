"""PNG plots of a run, redrawn from its event log alone (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .events import read_events


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(run_dir: Path) -> dict[str, Any]:
    evals, arrivals, stal = [], [], Counter()
    up_cum = down_cum = 0
    cum: list[tuple[float, int, int]] = []
    strategy = None
    for e in read_events(run_dir):
        kind = e.get("event")
        if kind == "start":
            strategy = e.get("strategy")
        elif kind == "eval":
            evals.append(e)
        elif kind == "dispatch":
            down_cum += e.get("bytes_down", 0)
            cum.append((e["t"], up_cum, down_cum))
        elif kind == "arrival":
            arrivals.append(e)
            up_cum += e.get("bytes_up", 0)
            cum.append((e["t"], up_cum, down_cum))
            if e.get("status") == "accepted":
                stal[int(e.get("staleness", 0))] += 1
    return {"strategy": strategy, "evals": evals, "arrivals": arrivals, "stal": stal, "cum": cum}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``accuracy.png``, ``bytes.png`` and ``staleness.png`` into the run directory."""
    run_dir = Path(run_dir)
    s = _series(run_dir)
    plt = _pyplot()
    out: list[Path] = []
    label = s["strategy"] or run_dir.name

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ev = s["evals"]
    a1.plot([e["t"] for e in ev], [e["accuracy"] for e in ev], marker=".", label=label)
    a1.set_xlabel("simulated time (s)")
    a1.set_ylabel("test accuracy")
    a2.plot([e["updates"] for e in ev], [e["accuracy"] for e in ev], marker=".", label=label)
    a2.set_xlabel("client updates")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle("global model accuracy")
    out.append(_save(fig, run_dir / "accuracy.png", plt))

    fig, (b1, b2) = plt.subplots(1, 2, figsize=(10, 4))
    arr = s["arrivals"]
    b1.plot(range(len(arr)), [e.get("bytes_up", 0) for e in arr], ".", ms=3, label="encoded")
    b1.plot(range(len(arr)), [e.get("raw_bytes_up", 0) for e in arr], "-", lw=1, label="raw")
    b1.set_xlabel("client update #")
    b1.set_ylabel("uplink bytes per update")
    b1.set_ylim(bottom=0)
    cum = s["cum"]
    b2.plot([c[0] for c in cum], [c[1] / 1e6 for c in cum], label="up (encoded)")
    b2.plot([c[0] for c in cum], [c[2] / 1e6 for c in cum], label="down (encoded)")
    b2.set_xlabel("simulated time (s)")
    b2.set_ylabel("cumulative MB")
    for b in (b1, b2):
        b.grid(alpha=0.3)
        b.legend()
    out.append(_save(fig, run_dir / "bytes.png", plt))

    fig, c1 = plt.subplots(figsize=(5, 4))
    hist = s["stal"]
    keys = sorted(hist)
    c1.bar(keys, [hist[k] for k in keys])
    c1.set_xlabel("staleness (global versions)")
    c1.set_ylabel("accepted updates")
    c1.set_title(f"staleness ({label})")
    out.append(_save(fig, run_dir / "staleness.png", plt))
    return out


def plot_compare(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Accuracy vs simulated time of several runs on one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, d in enumerate(run_dirs):
        ev = _series(Path(d))["evals"]
        lab = labels[i] if labels else Path(d).name
        ax.plot([e["t"] for e in ev], [e["accuracy"] for e in ev], label=lab)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(out), plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
