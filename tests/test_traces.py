"""Trace recorder on a tiny digits run: file layout, delta semantics, server step, uplink."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedpress.data import load_dataset
from fedpress.models import build_model
from fedpress.traces import (
    TraceConfig,
    client_partitions,
    load_delta,
    local_update,
    main_record,
    record_traces,
    state_delta,
    trace_file,
)

CFG = TraceConfig(dataset="digits", model="cnn", clients=2, rounds=2, samples_per_client=64,
                  batch_size=32, test_samples=100, threads=1, seed=7)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trace")
    return out, record_traces(CFG, out, progress=False)


def test_layout_names_shapes_dtypes(run: tuple[Path, dict]) -> None:
    out, trace = run
    torch.manual_seed(0)
    ref = build_model("cnn", 1, 10, 8).state_dict()
    for c in range(2):
        for r in (1, 2):
            path = out / f"client_{c}" / f"round_{r}.safetensors"
            assert path == trace_file(out, c, r) and path.is_file()
            delta = load_delta(out, c, r)
            assert set(delta) == set(ref)
            for key, t in ref.items():
                assert delta[key].shape == tuple(t.shape)
                want = np.float32 if t.is_floating_point() else np.int64
                assert delta[key].dtype == want, key
            # 64 samples / batch 32 = 2 steps: num_batches_tracked goes up by 2
            assert delta["features.0.1.num_batches_tracked"] == -2
    assert not (out / "client_2").exists() and not trace_file(out, 0, 3).exists()


def test_trace_json(run: tuple[Path, dict]) -> None:
    out, trace = run
    saved = json.loads((out / "trace.json").read_text())
    assert saved == json.loads(json.dumps(trace))
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    for r in saved["rounds"]:
        assert 0 <= r["test_accuracy"] <= 1 and r["test_loss"] > 0 and r["seconds"] > 0
    assert saved["final_accuracy"] == saved["rounds"][-1]["test_accuracy"]
    assert saved["config"]["dataset"] == "digits" and saved["num_parameters"] > 50_000
    assert saved["client_samples"] == [64, 64] and saved["dataset"]["test_samples"] == 100


def test_delta_is_before_minus_after(run: tuple[Path, dict]) -> None:
    """Replay client 1 of round 1 by hand and compare bit for bit."""
    out, _ = run
    train = load_dataset("digits")
    idx = client_partitions(CFG, train.y)[1]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(CFG.seed)
        model = build_model("cnn", 1, 10, 8)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        initial = load_file(str(out / "initial.safetensors"))
        assert all(np.array_equal(initial[k], v.numpy()) for k, v in before.items())
        local_update(model, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]),
                     CFG, 1, 1)
    finally:
        torch.set_num_threads(old)
    after = model.state_dict()
    saved = load_delta(out, 1, 1)
    key = "features.2.0.weight"  # the 5x5 conv
    np.testing.assert_array_equal(saved[key], (before[key] - after[key]).numpy())
    assert all(np.array_equal(saved[k], v) for k, v in state_delta(before, after).items())


def test_server_applies_mean_of_deltas(run: tuple[Path, dict]) -> None:
    out, _ = run
    w = load_file(str(out / "initial.safetensors"))
    final = load_file(str(out / "final.safetensors"))
    for key in w:
        expect = w[key].astype(np.float64)
        for r in (1, 2):
            expect = expect - (load_delta(out, 0, r)[key].astype(np.float64)
                               + load_delta(out, 1, r)[key]) / 2
        np.testing.assert_allclose(final[key], expect, atol=1e-5, err_msg=key)
    assert final["features.0.1.num_batches_tracked"] == 4


def test_uplink_called_and_used(tmp_path: Path) -> None:
    calls = []

    def zero_uplink(client: int, rnd: int, delta: dict[str, np.ndarray]) -> dict:
        calls.append((client, rnd))
        return {k: np.zeros_like(v) for k, v in delta.items()}

    cfg = replace(CFG, rounds=2, samples_per_client=32)
    record_traces(cfg, tmp_path, uplink=zero_uplink, progress=False)
    assert calls == [(0, 1), (1, 1), (0, 2), (1, 2)]
    initial = load_file(str(tmp_path / "initial.safetensors"))
    final = load_file(str(tmp_path / "final.safetensors"))
    assert all(np.array_equal(initial[k], final[k]) for k in initial)  # server saw zeros
    assert np.abs(load_delta(tmp_path, 0, 2)["head.weight"]).max() > 0  # raw delta saved

    with pytest.raises(ValueError, match="same keys"):
        record_traces(cfg, tmp_path / "bad", uplink=lambda c, r, d: {}, progress=False)


def test_config_validation(tmp_path: Path) -> None:
    for bad in ({"dataset": "imagenet"}, {"model": "vgg"}, {"partition": "x"},
                {"clients": 0}, {"samples_per_client": 0}, {"lr": 0.0}):
        with pytest.raises(ValueError):
            record_traces(replace(CFG, **bad), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # validated before writing anything


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_record(["--out", str(tmp_path / "x"), "--dataset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedpress record-traces: error:") and "\n" not in err
    assert main_record(["--out", str(tmp_path), "--dataset", "mnist", "--root",
                        str(tmp_path / "empty")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main_record(["--help"]) == 0
    assert main_record(["--dataset", "digits"]) == 2  # --out missing: argparse usage error
    capsys.readouterr()
    argv = ["--out", str(tmp_path / "ok"), "--dataset", "digits", "--clients", "2", "--rounds",
            "1", "--samples-per-client", "32", "--test-samples", "50", "--no-progress",
            "--partition", "dirichlet", "--alpha", "0.3"]
    assert main_record(argv) == 0
    trace = json.loads((tmp_path / "ok" / "trace.json").read_text())
    assert trace["config"]["partition"] == "dirichlet" and trace["config"]["alpha"] == 0.3
    assert "final test accuracy" in capsys.readouterr().out
