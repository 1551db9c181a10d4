"""``fedpress report``: one self-contained HTML page that shows and compares runs.

People compare runs by looking, and a page is easy to share: the file carries everything (plots
as base64 PNG, inline CSS, no scripts, no external assets), so it opens the same from a mail
attachment as from the run folder. Everything comes from each run directory's event log (the
summary is recomputed from it) and its ``config.yaml``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .events import EVENTS_FILE, read_events
from .plots import _pyplot, compare_figure, run_figures
from .runinfo import CONFIG_FILE, codec_label, load_run_config, run_label
from .summary import summarize

#: (summary key, column title, format) of the side-by-side table
COLUMNS: list[tuple[str, str, str]] = [
    ("final_accuracy", "final acc", "{:.4f}"),
    ("best_accuracy", "best acc", "{:.4f}"),
    ("time_to_target", "time to target (s)", "{:.1f}"),
    ("sim_time", "sim time (s)", "{:.1f}"),
    ("updates", "client updates", "{:d}"),
    ("bytes_up", "MB up", "mb"),
    ("bytes_down", "MB down", "mb"),
    ("compression_ratio_up", "uplink ratio", "{:.2f}"),
    ("staleness_mean", "mean staleness", "{:.2f}"),
    ("stop_reason", "stopped by", "{}"),
]

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.plots { display: flex; flex-wrap: wrap; gap: 0.5em; align-items: flex-start; }
.plots img.wide { max-width: 100%; } .plots img.narrow { max-width: 45%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.meta { color: #666; font-size: 0.85em; }
"""


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        if fmt == "mb":
            return f"{value / 1e6:.2f}"
        if fmt == "{:d}":
            return f"{int(value):d}"
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def figure_data_uri(fig: Any, dpi: int = 90) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, cls: str = "wide") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{uri}">'


def run_summary(run_dir: Path) -> dict[str, Any]:
    """The summary recomputed from the event log, plus the extra fields of ``summary.json``."""
    summary: dict[str, Any] = {}
    saved = run_dir / "summary.json"
    if saved.is_file():
        try:
            loaded = json.loads(saved.read_text(encoding="utf-8"))
            summary.update(loaded if isinstance(loaded, dict) else {})
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    summary.update(summarize(read_events(run_dir)))
    return summary


def _check_run_dirs(run_dirs: Sequence[Path]) -> None:
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    for d in run_dirs:
        if not (d / EVENTS_FILE).is_file():
            raise FileNotFoundError(f"{d}: not a run directory (no {EVENTS_FILE})")


def _comparison_table(names: list[str], labels: list[str], summaries: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in COLUMNS)
    rows = []
    for name, label, s in zip(names, labels, summaries, strict=True):
        cells = "".join(f"<td>{html.escape(_fmt(s.get(k), f))}</td>" for k, _, f in COLUMNS)
        rows.append(f'<tr><td class="name">{html.escape(name)}</td>'
                    f'<td class="name">{html.escape(label)}</td>{cells}</tr>')
    return (f'<table><tr><th class="name">run</th><th class="name">rule, uplink codec</th>'
            f"{head}</tr>{''.join(rows)}</table>")


def _summary_table(s: dict[str, Any]) -> str:
    rows = []
    for k, v in s.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "-"
        elif isinstance(v, float):
            v = f"{v:.6g}"
        rows.append(f'<tr><td class="name">{html.escape(str(k))}</td>'
                    f'<td class="name">{html.escape(str(v))}</td></tr>')
    return f"<table>{''.join(rows)}</table>"


def _run_section(i: int, name: str, run_dir: Path, summary: dict[str, Any]) -> str:
    cfg_path = run_dir / CONFIG_FILE
    cfg_text = cfg_path.read_text(encoding="utf-8", errors="replace") if cfg_path.is_file() \
        else f"(no {CONFIG_FILE} in this run directory)"
    label = run_label(run_dir, summary.get("strategy"))
    figs = run_figures(run_dir)
    imgs = [_img(figure_data_uri(figs.pop("accuracy")), f"{name}: accuracy"),
            _img(figure_data_uri(figs.pop("bytes")), f"{name}: bytes"),
            _img(figure_data_uri(figs.pop("staleness")), f"{name}: staleness", "narrow")]
    for fig in figs.values():  # figures added later still get shown
        imgs.append(_img(figure_data_uri(fig), name))
    return (
        f'<section id="run-{i}"><h2>{html.escape(name)}</h2>'
        f'<p class="meta">{html.escape(label)} &middot; {html.escape(str(run_dir))}</p>'
        f'<div class="plots">{"".join(imgs)}</div>'
        f"<h3>Summary</h3>{_summary_table(summary)}"
        f"<details open><summary>Configuration ({CONFIG_FILE})</summary>"
        f"<pre>{html.escape(cfg_text)}</pre></details></section>"
    )


def _names(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique names: the folder name, or the path as given when names collide."""
    base = [d.name or str(d) for d in run_dirs]
    return [str(d) if base.count(b) > 1 else b for d, b in zip(run_dirs, base, strict=True)]


def render_report(run_dirs: Sequence[str | Path], title: str = "fedpress report") -> str:
    """The HTML page for ``run_dirs`` (each holding ``events.jsonl``), as a string."""
    from .. import __version__

    dirs = [Path(d) for d in run_dirs]
    _check_run_dirs(dirs)
    names = _names(dirs)
    summaries = [run_summary(d) for d in dirs]
    labels = [run_label(d, s.get("strategy")) for d, s in zip(dirs, summaries, strict=True)]
    compare = figure_data_uri(compare_figure(dirs, [f"{n}: {lab}" for n, lab in
                                                    zip(names, labels, strict=True)]), dpi=100)
    codecs = sorted({codec_label(load_run_config(d)) or "?" for d in dirs})
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#run-{i}">{html.escape(n)}</a> ({html.escape(lab)})</li>'
                  for i, (n, lab) in enumerate(zip(names, labels, strict=True)))
    sections = "".join(_run_section(i, n, d, s)
                       for i, (n, d, s) in enumerate(zip(names, dirs, summaries, strict=True)))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">{len(dirs)} run(s); uplink codecs: {html.escape(", ".join(codecs))}; '
        f"written {stamp} by fedpress {html.escape(__version__)}. Simulated time is the "
        "virtual clock of the runs (a function of the config and seed), not wall time.</p>"
        f"<h2>Runs side by side</h2>{_img(compare, 'accuracy of all runs against time and bytes')}"
        f"{_comparison_table(names, labels, summaries)}<ul>{toc}</ul>{sections}"
        "</body></html>\n"
    )


def write_report(run_dirs: Sequence[str | Path], out: str | Path,
                 title: str = "fedpress report") -> Path:
    """Write :func:`render_report` to ``out`` atomically (nothing is left on failure)."""
    page = render_report(run_dirs, title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".report-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
