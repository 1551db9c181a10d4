"""TensorBoard event files next to the JSON-lines log, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from fedpress.metrics.events import EventLog  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick_digits.yaml"


def _scalars(run_dir: Path) -> EventAccumulator:
    files = list(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return acc


def test_event_log_mirrors_into_tensorboard(tmp_path: Path) -> None:
    with EventLog(tmp_path / "events.jsonl", tensorboard=True) as log:
        log.write("start", t=0.0, strategy="fedbuff", num_clients=2)
        log.write("eval", t=0.0, version=0, updates=0, accuracy=0.1, loss=2.3)
        log.write("dispatch", t=0.0, client=0, bytes_down=1000, raw_bytes_down=1000)
        log.write("arrival", t=1.5, client=0, staleness=2, status="accepted", bytes_up=250,
                  raw_bytes_up=1000)
        log.write("arrival", t=1.7, client=1, staleness=0, status="dropped", bytes_up=500,
                  raw_bytes_up=1000)
        log.write("update", t=1.5, version=1, updates=1)
        log.write("eval", t=1.5, version=1, updates=1, accuracy=0.4, loss=1.9)
        log.write("end", t=1.7, reason="max_updates")
    acc = _scalars(tmp_path)
    got = {tag: [(s.step, round(s.value, 6)) for s in acc.Scalars(tag)]
           for tag in acc.Tags()["scalars"]}
    assert got["eval/accuracy"] == [(0, 0.1), (1, 0.4)]
    assert got["eval/loss"] == [(0, 2.3), (1, 1.9)]
    assert got["eval_by_sim_ms/accuracy"] == [(0, 0.1), (1500, 0.4)]
    assert got["uplink/bytes"] == [(1, 250.0), (2, 500.0)]
    assert got["uplink/ratio"] == [(1, 4.0), (2, 2.0)]
    assert got["uplink/staleness"] == [(1, 2.0)]  # only accepted updates have a staleness
    assert got["downlink/bytes"] == [(1, 1000.0)]
    assert got["global/version"] == [(1, 1.0)]
    assert (tmp_path / "events.jsonl").read_text().count("\n") == 8  # the JSON log is intact


def test_tensorboard_needs_a_path() -> None:
    with pytest.raises(ValueError, match="run directory"):
        EventLog(None, tensorboard=True)


def test_enabled_from_the_config(tmp_path: Path) -> None:
    from fedpress.experiment.run import run_experiment

    run_dir = tmp_path / "run"
    run_experiment(CONFIG, ["run.tensorboard=true", "run.max_updates=10", "run.plots=false"],
                   run_dir=run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    acc = _scalars(run_dir)
    got = acc.Scalars("eval/accuracy")  # float32 in the event file
    assert [s.step for s in got] == [e["updates"] for e in evals]
    assert [s.value for s in got] == pytest.approx([e["accuracy"] for e in evals], rel=1e-6)
    ups = [e["bytes_up"] for e in events if e["event"] == "arrival"]
    assert [s.value for s in acc.Scalars("uplink/bytes")] == ups


def test_off_by_default(tmp_path: Path) -> None:
    from fedpress.experiment.run import run_experiment

    run_experiment(CONFIG, ["run.max_updates=5", "run.plots=false"], run_dir=tmp_path)
    assert not list(tmp_path.glob("events.out.tfevents.*"))
