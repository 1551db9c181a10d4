"""``fedpress llm study``: sweep alpha for each skew (and seeds), then a table and plots of local
vs global metrics. The model and the corpus are loaded once per seed and shared by every run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedpress.bench.machine import machine_info
from fedpress.metrics.events import read_events

from .config import LLMConfig, load_llm_config
from .run import run_llm
from .simulation import LLMInputs, _base_weights, load_model, prepare_llm
from .train import LMTrainer, LMTrainSpec

METRICS = ("loss", "perplexity", "acc_format", "acc_content")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _first_eval(run_dir: Path) -> dict[str, Any]:
    for ev in read_events(run_dir):
        if ev.get("event") == "eval":
            return ev
    return {}


def local_base_loss(cfg: LLMConfig, inp: LLMInputs) -> float | None:
    """Mean over clients of the BASE model's loss on each client's own held-out split: the
    reference that makes local losses comparable across partitions (each skew gives clients
    different held-out text, so a raw local loss compares data more than training)."""
    trainer = LMTrainer(inp.model, inp.tok, inp.corpus.ids, inp.corpus.loss_start, LMTrainSpec(), cfg.eval.eval_batch)
    losses = []
    with _base_weights(inp.model):
        for held in inp.heldout:
            if len(held):
                losses.append(trainer.lm_metrics([trainer.ids[i] for i in held], trainer.loss_start[held])["loss"])
    return float(np.mean(losses)) if losses else None


def study_grid(cfg: LLMConfig) -> list[tuple[str, float, int]]:
    """``(skew, alpha, seed)`` runs; IID runs once per seed (alpha does not apply)."""
    grid = []
    for seed in cfg.study.seeds:
        for skew in cfg.study.skews:
            for alpha in ([cfg.data.alpha] if skew == "iid" else cfg.study.alphas):
                grid.append((skew, float(alpha), int(seed)))
    return grid


def run_study(config: str | Path | LLMConfig, overrides: Iterable[str] = (), out_dir: str | Path | None = None,
              progress: bool = True) -> Path:
    """Run the grid; writes ``study.json``, ``study.md`` and ``study.png``; returns the JSON path."""
    cfg = load_llm_config(config, overrides)
    out = Path(out_dir) if out_dir is not None else Path(cfg.run.out_dir) / "study"
    out.mkdir(parents=True, exist_ok=True)
    grid = study_grid(cfg)
    rows: list[dict[str, Any]] = []
    base_model = load_model(cfg)
    corpora: dict[int, Any] = {}
    model = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(grid), unit="run", desc="llm study", file=sys.stderr)
    t0 = time.time()
    path = out / "study.json"
    for skew, alpha, seed in grid:
        over = [f"data.skew={skew}", f"data.alpha={alpha}", f"run.seed={seed}",
                f"run.name=study-{skew}-a{alpha:g}-s{seed}"]
        rc = load_llm_config(cfg, over)
        mt = (model, base_model[1]) if model is not None else base_model
        inp = prepare_llm(rc, mt, corpora.get(seed))
        model, corpora[seed] = inp.model, inp.corpus
        w0 = time.time()
        base_local = local_base_loss(rc, inp)
        s = run_llm(rc, inputs=inp, run_dir=out / rc.run.name)
        base = _first_eval(out / rc.run.name)
        row = {"skew": skew, "alpha": alpha, "seed": seed, "wall_s": time.time() - w0,
               **{f"global_{k}": s["global_metrics"].get(k) for k in METRICS},
               **{k: v for k, v in s["local_metrics"].items()},
               **{f"base_{k}": base.get(k) for k in METRICS}, "base_local_loss": base_local,
               "agg_rel_error": s["agg_errors"][-1]["agg_rel_error"] if s["agg_errors"] else None,
               "bytes_up": s["bytes_up"], "client_tokens": s["client_tokens"]}
        rows.append(row)
        path = _write(out, config, overrides, cfg, rows, time.time() - t0, len(grid))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    plot_study(rows, out / "study.png")
    return path


def _write(out: Path, config: Any, overrides: Iterable[str], cfg: LLMConfig, rows: list[dict[str, Any]],
           wall_s: float, planned: int) -> Path:
    """Rewrite ``study.json`` and ``study.md`` after every run, so a cut-short study keeps its rows."""
    res = {"command": "fedpress llm study " + " ".join([str(config), *overrides]),
           "git_commit": _git_commit(), "machine": machine_info(), "wall_s": wall_s,
           "runs_done": len(rows), "runs_planned": planned,
           "config": cfg.model_dump(mode="json"), "rows": rows}
    path = out / "study.json"
    path.write_text(json.dumps(res, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "study.md").write_text(study_table(rows) + "\n", encoding="utf-8")
    return path


def with_gains(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` plus the loss each model gained over the base model on the same text:
    ``global_gain`` on the server's test split, ``local_gain`` on the clients' own held-out
    splits (positive = training helped)."""
    out = dict(row)
    if row.get("base_loss") is not None and row.get("global_loss") is not None:
        out["global_gain"] = row["base_loss"] - row["global_loss"]
    if row.get("base_local_loss") is not None and row.get("local_loss") is not None:
        out["local_gain"] = row["base_local_loss"] - row["local_loss"]
    return out


def fill_local_base(cfg: LLMConfig, rows: list[dict[str, Any]]) -> None:
    """Add ``base_local_loss`` to rows that lack it (a study run before it was recorded),
    rebuilding each row's partition, which is deterministic in (skew, alpha, seed)."""
    todo = [r for r in rows if r.get("base_local_loss") is None]
    if not todo:
        return
    base_model = load_model(cfg)
    model, corpora = None, {}
    for row in todo:
        over = [f"data.skew={row['skew']}", f"data.alpha={row['alpha']}", f"run.seed={row['seed']}"]
        rc = load_llm_config(cfg, over)
        mt = (model, base_model[1]) if model is not None else base_model
        inp = prepare_llm(rc, mt, corpora.get(row["seed"]))
        model, corpora[row["seed"]] = inp.model, inp.corpus
        row["base_local_loss"] = local_base_loss(rc, inp)


def merge_studies(config: str | Path | LLMConfig, overrides: Iterable[str], sources: Iterable[str | Path],
                  out_dir: str | Path) -> Path:
    """One study from finished parts (e.g. one seed per process or machine): each part must have
    run ``config`` (the study section aside); rows are concatenated, local baselines filled in,
    and ``study.json``, ``study.md`` and ``study.png`` written to ``out_dir``."""
    cfg = load_llm_config(config, overrides)
    want = cfg.model_dump(mode="json", exclude={"study", "run"})
    parts = [(str(p), json.loads(Path(p).read_text())) for p in sources]
    rows: list[dict[str, Any]] = []
    for name, res in parts:
        got = load_llm_config(res["config"]).model_dump(mode="json", exclude={"study", "run"})
        if got != want:
            diff = sorted(k for k in want if want[k] != got.get(k))
            raise ValueError(f"{name} ran another config (sections differ: {', '.join(diff)})")
        rows += res["rows"]
    fill_local_base(cfg, rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "fedpress llm study " + " ".join([str(config), *overrides, "--merge",
                                                        *(n for n, _ in parts), "--out", str(out)]),
           "sources": [{"path": n, "command": r["command"], "wall_s": r["wall_s"], "machine": r["machine"]}
                       for n, r in parts],
           "git_commit": _git_commit(), "machine": machine_info(), "wall_s": sum(r["wall_s"] for _, r in parts),
           "runs_done": len(rows), "runs_planned": sum(r["runs_planned"] for _, r in parts),
           "config": cfg.model_dump(mode="json"), "rows": rows}
    path = out / "study.json"
    path.write_text(json.dumps(res, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "study.md").write_text(study_table(rows) + "\n", encoding="utf-8")
    plot_study(rows, out / "study.png")
    return path


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def study_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per (skew, alpha), mean over seeds of global and local metrics."""
    keys = ["global_loss", "global_gain", "global_acc_format", "global_acc_content", "local_loss",
            "local_gain", "local_acc_format", "local_acc_content", "agg_rel_error"]
    rows = [with_gains(r) for r in rows]
    head = "| skew | alpha | seeds | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 3)]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["skew"], r["alpha"]), []).append(r)
    for (skew, alpha), rs in groups.items():
        vals = []
        for k in keys:
            xs = [r[k] for r in rs if r.get(k) is not None]
            vals.append(_fmt(float(np.mean(xs))) if xs else "-")
        lines.append(f"| {skew} | {alpha:g} | {len(rs)} | " + " | ".join(vals) + " |")
    if rows and rows[0].get("base_loss") is not None:
        b = rows[0]
        lines.append(f"\nBase model (no training): loss {_fmt(b['base_loss'])}, "
                     f"accuracy {_fmt(b.get('base_acc_format'))} in format / {_fmt(b.get('base_acc_content'))} any format.")
    return "\n".join(lines)


def plot_study(rows: list[dict[str, Any]], path: Path) -> None:
    """Per skew: global vs local loss and accuracy against alpha (log scale), seeds averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skews = sorted({r["skew"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for skew in skews:
        rs = [r for r in rows if r["skew"] == skew]
        alphas = sorted({r["alpha"] for r in rs})

        def mean(key: str, a: float, rs=rs) -> float:
            xs = [r[key] for r in rs if r["alpha"] == a and r.get(key) is not None]
            return float(np.mean(xs)) if xs else np.nan

        for ax, g, loc in ((axes[0], "global_loss", "local_loss"), (axes[1], "global_acc_format", "local_acc_format")):
            line = ax.plot(alphas, [mean(g, a) for a in alphas], marker="o", label=f"{skew} global")[0]
            ax.plot(alphas, [mean(loc, a) for a in alphas], marker="s", ls="--", color=line.get_color(),
                    label=f"{skew} local")
    for ax, title in ((axes[0], "loss (lower is better)"), (axes[1], "accuracy, answer in format")):
        ax.set_xscale("log")
        ax.set_xlabel("Dirichlet alpha (small = strong skew)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
