"""The per-run event log: one JSON object per line, written as the run goes.

Event kinds: ``start``, ``dispatch``, ``arrival``, ``update`` (a new global version), ``eval``,
``end``. Fields whose name starts with ``wall_`` are wall-clock measurements; every other field
is a function of the config and seed when timing is modeled (two runs give identical logs once
``wall_*`` fields are dropped, see :func:`strip_wall`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from .summary import SummaryBuilder

EVENTS_FILE = "events.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe values: numpy scalars to Python, non-finite floats to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventSink(Protocol):
    """Something that mirrors the event log elsewhere (e.g. TensorBoard); sees every record."""

    def add(self, rec: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class EventLog:
    """Appends events to ``path`` (if given), feeds a streaming :class:`SummaryBuilder` and
    mirrors every record into ``sinks``.

    ``tensorboard=True`` adds a :class:`~fedpress.metrics.tensorboard.TensorBoardSink` writing
    event files next to ``path`` (the run directory), so ``tensorboard --logdir runs/`` shows
    every run.
    """

    def __init__(self, path: str | Path | None = None, target_accuracy: float | None = None,
                 *, tensorboard: bool = False, sinks: Sequence[EventSink] = ()) -> None:
        self.path = Path(path) if path is not None else None
        self.sinks: list[EventSink] = list(sinks)
        if tensorboard:
            if self.path is None:
                raise ValueError("tensorboard event files need a log path (a run directory)")
            from .tensorboard import TensorBoardSink

            self.sinks.append(TensorBoardSink(self.path.parent))
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("w", encoding="utf-8")
        self.summary = SummaryBuilder(target_accuracy)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"event": event, **{k: _clean(v) for k, v in fields.items()}}
        self.summary.add(rec)
        if self._fh is not None:
            self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        for sink in self.sinks:
            sink.add(rec)
        return rec

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events of a log file (or of ``events.jsonl`` in a run directory), in order."""
    p = Path(path)
    if p.is_dir():
        p = p / EVENTS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no event log at {p}")
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}:{n}: not a JSON event ({exc.msg})") from None


def strip_wall(event: dict[str, Any]) -> dict[str, Any]:
    """The event without wall-clock fields (for determinism checks)."""
    out = {}
    for k, v in event.items():
        if k.startswith("wall_"):
            continue
        out[k] = strip_wall(v) if isinstance(v, dict) else v
    return out
