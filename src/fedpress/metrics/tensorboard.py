"""TensorBoard event files for a run, written next to its JSON-lines log.

People already watch training in TensorBoard; this sink turns the run's events into scalars
through torch's :class:`~torch.utils.tensorboard.SummaryWriter` (the ``tensorboard`` package;
``pip install 'fedpress[tensorboard]'``). The JSON-lines log stays the source of truth: the
sink only mirrors it. Steps are accepted client updates (the x axis every strategy shares);
the simulated time is a scalar of its own (``time/sim_s``), and each eval is also written as
``eval_by_sim_ms/accuracy`` with the simulated time in milliseconds as the step.

Tags: ``eval/accuracy``, ``eval/loss`` (step: client updates), ``eval_by_sim_ms/accuracy``,
``uplink/bytes``, ``uplink/ratio``, ``uplink/staleness`` (one point per arrival, step: arrival
number), ``downlink/bytes`` (step: dispatch number), ``global/version`` (step: client updates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'fedpress[tensorboard]' (or pip install tensorboard)"


class TensorBoardSink:
    """Mirrors event-log records into TensorBoard scalars in ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch ships the writer, the tensorboard package the format
            raise ImportError(f"run.tensorboard needs the tensorboard package: {INSTALL_HINT} "
                              f"({exc})") from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._arrivals = 0
        self._dispatches = 0

    def add(self, rec: dict[str, Any]) -> None:
        """Write the scalars of one event record (unknown kinds are ignored)."""
        kind = rec.get("event")
        w = self._writer
        if kind == "eval":
            step = int(rec.get("updates") or 0)
            for key in ("accuracy", "loss"):
                if isinstance(rec.get(key), (int, float)):
                    w.add_scalar(f"eval/{key}", rec[key], step)
            if isinstance(rec.get("accuracy"), (int, float)):
                w.add_scalar("eval_by_sim_ms/accuracy", rec["accuracy"],
                             int(round(1000 * float(rec.get("t") or 0.0))))
            w.add_scalar("time/sim_s", float(rec.get("t") or 0.0), step)
        elif kind == "arrival":
            self._arrivals += 1
            up, raw = rec.get("bytes_up"), rec.get("raw_bytes_up")
            if isinstance(up, (int, float)):
                w.add_scalar("uplink/bytes", up, self._arrivals)
                if up > 0 and isinstance(raw, (int, float)):
                    w.add_scalar("uplink/ratio", raw / up, self._arrivals)
            if rec.get("status", "accepted") == "accepted":
                w.add_scalar("uplink/staleness", int(rec.get("staleness") or 0), self._arrivals)
        elif kind == "dispatch":
            self._dispatches += 1
            if isinstance(rec.get("bytes_down"), (int, float)):
                w.add_scalar("downlink/bytes", rec["bytes_down"], self._dispatches)
        elif kind == "update":
            w.add_scalar("global/version", int(rec.get("version") or 0),
                         int(rec.get("updates") or 0))
        elif kind == "end":
            w.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
