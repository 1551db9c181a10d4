"""PNG plots of the MoE benchmark and study, drawn from their JSON alone (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_bench(res: dict[str, Any], out: Path) -> list[Path]:
    """tokens/s, MB moved per token and hit rate against budget, one line per codec x policy."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in res["runs"]:
        series.setdefault((r["codec"], r["policy"]), []).append(r)
    for (codec, policy), rows in series.items():
        x = [float(str(r["budget"]).rstrip("%")) for r in rows]
        style = "-" if codec == "raw" else "--"
        label = f"{codec} {policy}"
        axes[0].plot(x, [r["tokens_per_s"] for r in rows], style, marker="o", label=label)
        axes[1].plot(x, [r["bytes_per_token"] / 1e6 for r in rows], style, marker="o", label=label)
        axes[2].plot(x, [r["hit_rate"] for r in rows], style, marker="o", label=label)
    if "resident" in res:
        axes[0].axhline(res["resident"]["tokens_per_s"], color="k", lw=0.8, label="fully resident")
    for ax, title in zip(axes, ("tokens/s", "MB moved per token", "cache hit rate"), strict=True):
        ax.set_xlabel("budget (% of all experts)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=6)
    path = out / "bench.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_study(res: dict[str, Any], out: Path) -> list[Path]:
    """Scores per perturbed layer (whole layer at the top p) per mode; activation statistics."""
    plt = _plt()
    paths = []
    rows = [r for r in res["conditions"] if r["selector"] == "layer"]
    top = max((r["p"] for r in rows), default=None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    base = res["baseline"]
    for ax, key, title in zip(axes, ("acc_format", "acc_content"),
                              ("right answer in the required format", "right answer, format ignored"),
                              strict=True):
        modes = sorted({r["mode"] for r in rows if r["p"] == top})
        layers = sorted({r["layer"] for r in rows if r["p"] == top})
        width = 0.8 / max(len(modes), 1)
        for j, mode in enumerate(modes):
            vals = {r["layer"]: r[key] for r in rows if r["mode"] == mode and r["p"] == top}
            ax.bar([i + j * width for i in range(len(layers))], [vals.get(li, 0) for li in layers],
                   width, label=f"{mode} p={top}")
        ax.axhline(base[key], color="k", lw=1, label="unperturbed")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))],
                      [f"L{li}\n{res['groups'].get(str(li), res['groups'].get(li, ''))}" for li in layers])
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    axes[0].set_ylabel("accuracy")
    fig.suptitle("All experts of one layer perturbed")
    fig.tight_layout()
    paths.append(out / "study_layers.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    st = res["layer_stats"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s["layer"] for s in st], [s["entropy_bits"] / s["max_entropy_bits"] for s in st], marker="o",
            label="entropy / max")
    ax.plot([s["layer"] for s in st], [s["gini"] for s in st], marker="s", label="Gini")
    ax.plot([s["layer"] for s in st], [s["utilisation"] for s in st], marker="^", label="utilisation")
    ax.set_xlabel("layer")
    ax.set_title("expert activation per layer (study items)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "study_activation.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def plot_p_sweep(res: dict[str, Any], out: Path, repeats: list[dict[str, Any]] | None = None) -> list[Path]:
    """Score against strength p for every layer perturbed whole at two or more p, one line per
    mode; each marker is one run (one noise draw), the line joins the means per p.

    Why every draw: a Gaussian condition is one random draw and draws of the same condition
    spread by several items, so a line through single draws would draw noise as a trend.
    ``repeats``: more study results on the same model and items (other noise seeds).
    """
    plt = _plt()
    runs = [c for r in [res, *(repeats or [])] for c in r["conditions"] if c["selector"] == "layer"]
    ps_by_layer: dict[int, set[float]] = {}
    for c in runs:
        ps_by_layer.setdefault(c["layer"], set()).add(c["p"])
    layers = sorted(layer for layer, ps in ps_by_layer.items() if len(ps) >= 2)
    if not layers:
        return []
    base = res["baseline"]
    n_items = sum(int(t.get("n_items", 0)) for t in base.get("per_task", {}).values()) or None
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 4.0), sharey=True, squeeze=False)
    colors = {"gauss": "tab:red", "uniform": "tab:orange", "codec": "tab:blue"}
    for ax, layer in zip(axes[0], layers, strict=True):
        for mode in sorted({c["mode"] for c in runs if c["layer"] == layer}):
            pts = [(c["p"], c["acc_format"]) for c in runs if c["layer"] == layer and c["mode"] == mode]
            color = colors.get(mode)
            ax.scatter([p for p, _ in pts], [v for _, v in pts], color=color, alpha=0.5, s=18)
            ps = sorted({p for p, _ in pts})
            means = [sum(v for q, v in pts if q == p) / sum(1 for q, _ in pts if q == p) for p in ps]
            ax.plot(ps, means, "-", color=color, label=f"{mode} (mean of draws)")
        b = base["acc_format"]
        ax.axhline(b, color="k", lw=0.8, label="baseline")
        if n_items:
            se = (b * (1 - b) / n_items) ** 0.5
            ax.axhspan(b - 2 * se, b + 2 * se, color="k", alpha=0.07, label="baseline +- 2 SE")
        group = res.get("groups", {}).get(str(layer), "")
        ax.set_title(f"all experts of layer {layer} {f'({group})' if group else ''}")
        ax.set_xlabel("p (bound or noise std = p * mean|theta|)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("right answer in the required format")
    axes[0][0].legend(fontsize=7)
    path = out / "study_p_sweep.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
