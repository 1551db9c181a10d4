"""Flower side by side (``benchmarks/bench_grpc_flower.py``): the parts that need no Flower run in
fedpress's venv (Flower's training equals fedpress's, same shards and initial weights, the
per-round analysis, the one-line skip); the real run needs root and Flower's venv."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_grpc_flower as bench  # noqa: E402
import flower_grpc_app as app  # noqa: E402

from fedpress.config import load_config  # noqa: E402
from fedpress.fl.client import LocalTrainer, TrainSpec, derive_seed  # noqa: E402
from fedpress.fl.params import get_params, set_params  # noqa: E402


def test_flower_local_training_is_fedpress_local_trainer():
    from fedpress.data import load_dataset
    from fedpress.models import build_model

    ds = load_dataset("mnist", "train", limit=80)
    x, y = torch.from_numpy(np.array(ds.x)), torch.from_numpy(np.array(ds.y))
    idx = np.arange(5, 38)  # 33 samples, batch 16: a one-sample remainder that both skip
    torch.manual_seed(3)
    params = get_params(build_model("mlp", 1, 10, 28))
    spec = TrainSpec(lr=0.1, momentum=0.9, weight_decay=1e-3, batch_size=16, local_epochs=2)
    seed = derive_seed(0, 1, 2)
    delta, seen, _ = LocalTrainer(build_model("mlp", 1, 10, 28), x, y, spec).train(params, idx, seed)

    model = build_model("mlp", 1, 10, 28)
    set_params(model, params)
    job = {"lr": 0.1, "momentum": 0.9, "wd": 1e-3, "batch": 16, "local_epochs": 2}
    assert app.local_train(model, x, y, idx, job, app.derive_seed(0, 1, 2)) == seen == 64
    after = get_params(model)
    assert any(np.abs(delta[k]).max() > 0 for k in delta)
    for k in params:
        np.testing.assert_array_equal(after[k] - params[k], delta[k])
    assert [app.derive_seed(*p) for p in [(0, 0, 0), (7, 3, 11)]] == [derive_seed(0, 0, 0), derive_seed(7, 3, 11)]


def test_flower_gets_the_same_shards_and_initial_weights_as_fedpress():
    from fedpress.experiment.build import build_server
    from fedpress.experiment.run import prepare_inputs

    cfg = load_config(str(bench.CONFIG), ["data.samples_per_client=40", "data.test_limit=20"])
    job = json.loads(json.dumps(bench.make_job(cfg)))  # it travels as JSON
    assert (job["model"], job["clients"], job["lr"], job["batch"], job["local_epochs"]) == (
        "cnn-fedavg", 2, 0.05, 32, 1)
    inputs = prepare_inputs(cfg)
    for cid in range(cfg.data.clients):
        x, y, idx = app.shard(job, cid)
        np.testing.assert_array_equal(idx, inputs.parts[cid])
        np.testing.assert_array_equal(x.numpy(), inputs.train_x)
        np.testing.assert_array_equal(y.numpy(), inputs.train_y)
    init = app.initial_weights(job)
    server_params = build_server(cfg, inputs).params
    assert len(init) == len(server_params)
    for a, b in zip(init, server_params.values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_flower_round_metrics_on_a_recorded_run():
    # three rounds as the Flower server records them (2 clients)
    rec = {"rounds": [
        {"round": 1, "t_configure": 100.0, "t_aggregate": 109.0, "t_done": 109.5, "clients": 2,
         "bytes_down_per_client": 1000, "bytes_up": 2000, "train_s": [5.0, 8.0]},
        {"round": 2, "t_configure": 109.6, "t_aggregate": 111.6, "t_done": 111.7, "clients": 2,
         "bytes_down_per_client": 1000, "bytes_up": 2000, "train_s": [0.5, 0.7]},
        {"round": 3, "t_configure": 111.8, "t_aggregate": 114.3, "t_done": 114.4, "clients": 2,
         "bytes_down_per_client": 1000, "bytes_up": 2000, "train_s": [0.9, 0.4]},
    ]}
    m = app.flower_round_metrics(rec)
    assert [r["round_time_s"] for r in m["rounds"]][0] is None
    assert m["round_time_s"] == pytest.approx(((111.7 - 109.5) + (114.4 - 111.7)) / 2)
    assert m["comm_s"] == pytest.approx(((111.7 - 109.6 - 0.7) + (114.4 - 111.8 - 0.9)) / 2)
    assert m["rounds"][0]["comm_s"] == pytest.approx(109.5 - 100.0 - 8.0)
    assert (m["bytes_up_per_round"], m["bytes_down_per_round"]) == (2000, 2000)


def test_skips_in_one_line_without_flower(tmp_path: Path):
    r = subprocess.run([sys.executable, str(BENCH / "bench_grpc_flower.py"), "--flwr-python",
                        str(tmp_path / "no-venv" / "python"), "--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_grpc_flower: skipped: no Flower venv at ")
    assert not (tmp_path / "x.json").exists()


def _npy_bytes(arrays: list[np.ndarray]) -> int:
    """What Flower puts on the wire per tensor: ``np.save`` of it, no pickle."""
    total = 0
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        total += buf.getbuffer().nbytes
    return total


@pytest.mark.slow
def test_quick_side_by_side_run(tmp_path: Path):
    why = bench.skip_reason(bench.DEFAULT_FLWR)  # here, not at collection: it starts Flower's python
    if why is not None:
        pytest.skip(f"Flower side by side cannot run: {why}")
    out = tmp_path / "quick.json"
    r = subprocess.run([sys.executable, str(BENCH / "bench_grpc_flower.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    cases = {c["codec"]: c for c in res["cases"]}
    flower, none, grad = cases["flower (.npy)"], cases["none"], cases["grad"]
    job = bench.make_job(load_config(str(bench.CONFIG), res["setting"]["overrides"]))
    per_client = _npy_bytes(app.initial_weights(job))
    n = res["setting"]["clients"]
    assert flower["bytes_up_per_round"] == flower["bytes_down_per_round"] == n * per_client
    # the same training from the same weights on the same shards: the same final model
    assert flower["final_accuracy"] == none["final_accuracy"]
    for c in (flower, none, grad):
        assert c["link_bytes"]["up"] >= res["setting"]["rounds"] * c["bytes_up_per_round"]
        assert c["comm_s"] > 0 and c["round_time_s"] > 0
    assert grad["bytes_up_per_round"] < flower["bytes_up_per_round"] / 3
    assert out.with_suffix(".png").is_file()
