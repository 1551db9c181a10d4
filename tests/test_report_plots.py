"""Per-run plots say what they show: codec and bound in titles/legends, a raw downlink called raw,
a readable staleness axis when every update is fresh, and headroom above the largest bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedpress.metrics.plots import compare_figure, plot_run, run_figures, run_series

RAW = 40_000


def _write_run(folder: Path, strategy: str, codec: dict, staleness: list[int],
               ratio: float = 1.0) -> Path:
    """A hand-written event log (two dispatch/arrival pairs per staleness value) + config."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"strategy": {"name": strategy}, "codec": codec, "run": {"seed": 0}}))
    ev = [{"event": "start", "t": 0.0, "strategy": strategy, "num_clients": 2}]
    ev.append({"event": "eval", "t": 0.0, "version": 0, "updates": 0, "accuracy": 0.1})
    t = 0.0
    for i, s in enumerate(staleness):
        t += 1.0
        ev.append({"event": "dispatch", "t": t - 1.0, "client": i % 2, "version": i,
                   "bytes_down": RAW + 100, "raw_bytes_down": RAW})
        ev.append({"event": "arrival", "t": t, "client": i % 2, "staleness": s,
                   "status": "accepted", "bytes_up": int(RAW / ratio), "raw_bytes_up": RAW,
                   "dispatched_at": t - 1.0})
        ev.append({"event": "update", "t": t, "version": i + 1, "updates": i + 1})
        ev.append({"event": "eval", "t": t, "version": i + 1, "updates": i + 1,
                   "accuracy": 0.1 + 0.1 * i})
    ev.append({"event": "end", "t": t, "reason": "max_updates"})
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    return folder


@pytest.fixture()
def fedavg_raw(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "avg", "fedavg", {"name": "none", "downlink": None}, [0] * 4)


@pytest.fixture()
def fedbuff_grad(tmp_path: Path) -> Path:
    codec = {"name": "grad", "mode": "rel", "eb": 0.01,
             "downlink": {"name": "fast", "mode": "abs", "eb": 0.001}}
    return _write_run(tmp_path / "buff", "fedbuff", codec, [0, 1, 5, 1], ratio=8.0)


def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    parts += [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.texts]
        leg = ax.get_legend()
        if leg is not None:
            parts += [t.get_text() for t in leg.get_texts()]
    return "\n".join(parts)


def _close(figs: dict) -> None:
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def test_all_fresh_staleness_has_an_axis_and_a_note(fedavg_raw: Path) -> None:
    figs = run_figures(fedavg_raw)
    ax = figs["staleness"].axes[0]
    lo, hi = ax.get_xlim()
    assert lo < -0.4 and hi > 3  # the lone bar at 0 is not stretched over the whole axis
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert all(float(t).is_integer() for t in ticks) and 0 in ticks and 3 in ticks
    assert "staleness 0" in _texts(figs["staleness"])
    assert ax.get_ylim()[1] > 4  # the bar (4 updates) does not touch the top
    _close(figs)


def test_stale_runs_get_no_note(fedbuff_grad: Path) -> None:
    figs = run_figures(fedbuff_grad)
    assert "staleness 0" not in _texts(figs["staleness"])
    assert figs["staleness"].axes[0].get_xlim()[1] > 5
    _close(figs)


def test_bytes_plot_headroom_and_raw_downlink_label(fedavg_raw: Path) -> None:
    figs = run_figures(fedavg_raw)
    per_update, cumulative = figs["bytes"].axes
    assert per_update.get_ylim()[1] >= 1.05 * RAW  # uncompressed size not on the top edge
    cum_top = 4 * (RAW + 100) / 1e6
    assert cumulative.get_ylim()[1] >= 1.05 * cum_top
    text = _texts(figs["bytes"])
    assert "down (raw model)" in text and "down (encoded)" not in text
    assert "fedavg, uncompressed" in text
    _close(figs)


def test_codec_and_bound_in_titles_and_legends(fedbuff_grad: Path) -> None:
    figs = run_figures(fedbuff_grad)
    for name in ("accuracy", "bytes", "staleness"):
        assert "grad REL 0.01" in _texts(figs[name]), name
    assert "down (fast ABS 0.001)" in _texts(figs["bytes"])
    _close(figs)


def test_accuracy_against_bytes_counts_both_links(fedbuff_grad: Path) -> None:
    evals = run_series(fedbuff_grad)["evals"]
    # eval i follows i dispatches (raw + 100 bytes) and i arrivals (RAW / 8 bytes)
    assert [e["bytes"] for e in evals] == [i * (RAW + 100 + RAW // 8) for i in range(5)]


def test_plot_run_writes_three_pngs_and_compare_has_both_runs(
        fedavg_raw: Path, fedbuff_grad: Path) -> None:
    paths = plot_run(fedavg_raw)
    assert sorted(p.name for p in paths) == ["accuracy.png", "bytes.png", "staleness.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    fig = compare_figure([fedavg_raw, fedbuff_grad])
    text = _texts(fig)
    assert "avg: fedavg, uncompressed" in text and "buff: fedbuff, grad REL 0.01" in text
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    _close({"c": fig})
