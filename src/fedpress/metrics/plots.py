"""PNG plots of a run, redrawn from its event log alone (matplotlib, Agg backend).

Every figure names the run's rule and uplink codec with its bound (read from ``config.yaml``
next to the log), so a PNG copied out of its folder still says what it shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .events import read_events
from .runinfo import codec_label, downlink_label, load_run_config, run_label

#: headroom above the tallest bar/line, so the largest values never sit on the frame
TOP_MARGIN = 1.12


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def run_series(run_dir: str | Path) -> dict[str, Any]:
    """The series the plots draw, in one pass over the event log.

    ``evals`` carry ``bytes`` (uplink + downlink bytes moved when the evaluation ran), so
    accuracy can be drawn against communication as well as against time.
    """
    evals, arrivals, stal = [], [], Counter()
    up_cum = down_cum = 0
    cum: list[tuple[float, int, int]] = []
    strategy = None
    for e in read_events(run_dir):
        kind = e.get("event")
        if kind == "start":
            strategy = e.get("strategy")
        elif kind == "eval":
            evals.append({**e, "bytes": up_cum + down_cum})
        elif kind == "dispatch":
            down_cum += e.get("bytes_down", 0) or 0
            cum.append((e["t"], up_cum, down_cum))
        elif kind == "arrival":
            arrivals.append(e)
            up_cum += e.get("bytes_up", 0) or 0
            cum.append((e["t"], up_cum, down_cum))
            if e.get("status", "accepted") == "accepted":
                stal[int(e.get("staleness", 0) or 0)] += 1
    return {"strategy": strategy, "evals": evals, "arrivals": arrivals, "stal": stal, "cum": cum}


def run_figures(run_dir: str | Path) -> dict[str, Any]:
    """The run's figures by name (``accuracy``, ``bytes``, ``staleness``); caller closes them."""
    run_dir = Path(run_dir)
    s = run_series(run_dir)
    cfg = load_run_config(run_dir)
    plt = _pyplot()
    label = run_label(run_dir, s["strategy"])
    return {
        "accuracy": _accuracy_figure(plt, s, label),
        "bytes": _bytes_figure(plt, s, cfg, label),
        "staleness": _staleness_figure(plt, s, label),
    }


def _accuracy_figure(plt: Any, s: dict[str, Any], label: str) -> Any:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ev = s["evals"]
    acc = [e.get("accuracy") for e in ev]
    a1.plot([e["t"] for e in ev], acc, marker=".", label=label)
    a1.set_xlabel("simulated time (s)")
    a1.set_ylabel("test accuracy")
    a2.plot([e["updates"] for e in ev], acc, marker=".", label=label)
    a2.set_xlabel("client updates")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"global model accuracy ({label})")
    return fig


def _bytes_figure(plt: Any, s: dict[str, Any], cfg: dict[str, Any], label: str) -> Any:
    up_name = codec_label(cfg) or "encoded"
    down_name = downlink_label(cfg)
    fig, (b1, b2) = plt.subplots(1, 2, figsize=(10, 4))
    arr = s["arrivals"]
    enc = [e.get("bytes_up", 0) or 0 for e in arr]
    raw = [e.get("raw_bytes_up", 0) or 0 for e in arr]
    b1.plot(range(len(arr)), raw, "-", lw=1.5, color="tab:orange", label="uncompressed size")
    b1.plot(range(len(arr)), enc, ".", ms=4, color="tab:blue", label=f"sent ({up_name})")
    b1.set_xlabel("client update #")
    b1.set_ylabel("uplink bytes per update")
    b1.set_ylim(0, TOP_MARGIN * max(enc + raw + [1]))
    cum = s["cum"]
    ups = [c[1] / 1e6 for c in cum]
    downs = [c[2] / 1e6 for c in cum]
    b2.plot([c[0] for c in cum], ups, label=f"up ({up_name})")
    b2.plot([c[0] for c in cum], downs,
            label=f"down ({down_name})" if down_name else "down (raw model)")
    b2.set_xlabel("simulated time (s)")
    b2.set_ylabel("cumulative MB")
    b2.set_ylim(0, TOP_MARGIN * max(ups + downs + [1e-6]))
    for b in (b1, b2):
        b.grid(alpha=0.3)
        b.legend(loc="best")
    fig.suptitle(f"bytes on the links ({label})")
    return fig


def _staleness_figure(plt: Any, s: dict[str, Any], label: str) -> Any:
    from matplotlib.ticker import MaxNLocator

    fig, c1 = plt.subplots(figsize=(5, 4))
    hist = s["stal"]
    keys = sorted(hist)
    vals = [hist[k] for k in keys]
    c1.bar(keys, vals, width=0.8)
    c1.set_xlim(-0.6, max(keys + [3]) + 0.6)  # at least 0..3: a lone bar is not the whole axis
    c1.xaxis.set_major_locator(MaxNLocator(integer=True))
    c1.set_ylim(0, TOP_MARGIN * max(vals + [1]))
    c1.set_xlabel("staleness (global versions behind)")
    c1.set_ylabel("accepted updates")
    if not keys:
        c1.text(0.5, 0.5, "no accepted updates", ha="center", va="center",
                transform=c1.transAxes)
    elif keys == [0]:
        c1.text(0.97, 0.93, "every accepted update was fresh\n(staleness 0: synchronous rule)",
                ha="right", va="top", transform=c1.transAxes, fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
    c1.set_title(f"staleness ({label})", fontsize=10)
    return fig


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``accuracy.png``, ``bytes.png`` and ``staleness.png`` into the run directory."""
    run_dir = Path(run_dir)
    plt = _pyplot()
    return [_save(fig, run_dir / f"{name}.png", plt) for name, fig in run_figures(run_dir).items()]


def compare_figure(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> Any:
    """Accuracy of several runs against simulated time and against bytes moved (up + down)."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, d in enumerate(run_dirs):
        s = run_series(d)
        ev = s["evals"]
        lab = labels[i] if labels else f"{Path(d).name}: {run_label(d, s['strategy'])}"
        acc = [e.get("accuracy") for e in ev]
        (line,) = ax.plot([e["t"] for e in ev], acc, marker=".", ms=3, label=lab)
        bx.plot([e["bytes"] / 1e6 for e in ev], acc, marker=".", ms=3, color=line.get_color(),
                label=lab)
    ax.set_xlabel("simulated time (s)")
    bx.set_xlabel("MB moved (uplink + downlink)")
    for a in (ax, bx):
        a.set_ylabel("test accuracy")
        a.grid(alpha=0.3)
    handles, texts = ax.get_legend_handles_labels()
    fig.legend(handles, texts, loc="lower center", ncol=min(len(texts), 3) or 1, fontsize=8,
               frameon=False)
    fig.suptitle("runs side by side")
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(texts) - 1) // 3), 1, 1))
    return fig


def plot_compare(run_dirs: Sequence[str | Path], out: str | Path,
                 labels: Sequence[str] | None = None) -> Path:
    """Save :func:`compare_figure` of several runs as a PNG."""
    return _save(compare_figure(run_dirs, labels), Path(out), _pyplot(), tight=False)


def _save(fig: Any, path: Path, plt: Any, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
