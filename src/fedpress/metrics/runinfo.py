"""What a run directory says about its run: the resolved config and short labels for plots.

Plots and reports name a run by what differs between runs (strategy, uplink codec and bound),
so they read ``config.yaml`` next to the event log as plain YAML data; metrics never imports the
config models (it sits below ``fl`` and ``config`` in the package layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
LOSSLESS = {"none": "uncompressed", "raw": "uncompressed", "zstd": "zstd (lossless)",
            "lossless": "lossless"}


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved config as plain data ({} when the directory has none or it is bad)."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _link_label(link: dict[str, Any] | None) -> str | None:
    if not isinstance(link, dict) or not link.get("name"):
        return None
    name = str(link["name"])
    if name in LOSSLESS:
        return LOSSLESS[name]
    eb, mode = link.get("eb"), link.get("mode")
    if isinstance(eb, (int, float)) and isinstance(mode, str):
        return f"{name} {mode.upper()} {eb:g}"
    return name


def codec_label(cfg: dict[str, Any]) -> str | None:
    """The uplink codec and its bound, e.g. ``grad REL 0.01``; None when the config is silent."""
    return _link_label(cfg.get("codec"))


def downlink_label(cfg: dict[str, Any]) -> str | None:
    """The downlink codec (e.g. ``fast REL 0.001``), or None for a raw model downlink."""
    codec = cfg.get("codec")
    down = codec.get("downlink") if isinstance(codec, dict) else None
    label = _link_label(down)
    return None if label == "uncompressed" else label


def run_label(run_dir: str | Path, strategy: str | None = None) -> str:
    """A short name for legends: ``<strategy>, <uplink codec and bound>`` (or the folder)."""
    cfg = load_run_config(run_dir)
    strat = strategy
    if strat is None and isinstance(cfg.get("strategy"), dict):
        strat = cfg["strategy"].get("name")
    parts = [p for p in (strat, codec_label(cfg)) if p]
    return ", ".join(parts) if parts else Path(run_dir).name
