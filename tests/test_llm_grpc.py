"""Federated LoRA over the gRPC transport, with real processes over loopback.

The same deploy commands as for CNN runs (``fedpress launch`` / ``server`` / ``client``) pick the
LLM workload from the config's shape. A tiny Llama built in code (configs/llm_tiny.yaml) keeps
the training to about a second; what a test costs is process start-up (each process imports
torch, transformers and peft: tens of seconds on a loaded 2-core machine).

The reference is independent of the gRPC path: the same config simulated in this process with
the same seed must give the same global adapter (up to float summation order, since arrivals
come in real order), the same uplink bytes and the same global loss.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("reasoning_gym")
pytest.importorskip("grpc")
if importlib.util.find_spec("gensim") is None:  # the text files ship in gensim's test data
    pytest.skip("gensim not installed (pip install 'fedpress[llm]')", allow_module_level=True)

import fedpress
from fedpress.config import ExperimentConfig
from fedpress.deploy.workload import ADAPTER_FILE, detect, resolve
from fedpress.llm.config import LLMConfig
from fedpress.metrics.events import read_events

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs" / "llm_tiny.yaml")
SRC = str(Path(fedpress.__file__).resolve().parents[1])
# tiny model: hidden 32, 2 layers; LoRA rank 2 on q_proj and v_proj (A: 2x32, B: 32x2), float32
ADAPTER_BYTES = 2 * 2 * (2 * 32 + 32 * 2) * 4
FAST = ["eval.local_task=false", "run.plots=false", "run.torch_threads=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def env(cache: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e["FEDPRESS_CACHE_DIR"] = cache  # tokenised corpus cached once, shared by every process
    return e


def fp(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedpress.cli", *args]


def test_config_shape_picks_the_workload():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if path.name.startswith("llm_"):
            assert detect(raw) == "llm", path.name
        elif not path.name.startswith("moe_"):
            assert detect(raw) == "cnn", path.name
    wl, cfg = resolve(CFG, ["data.clients=2"])
    assert wl.kind == "llm" and isinstance(cfg, LLMConfig) and cfg.data.clients == 2
    wl, cfg = resolve(ROOT / "configs" / "quick_digits.yaml")
    assert wl.kind == "cnn" and isinstance(cfg, ExperimentConfig)
    # an override can make the shape (an LLM-only key), and the schema then checks it
    assert detect({"model": {"name": "cnn"}}) == "cnn"
    assert detect({"model": {"rank": 8}}) == "llm" and detect({"eval": {}}) == "llm"


def simulate(overrides: list[str], run_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The same config run in this process on the in-process transport: summary and adapter."""
    from fedpress.experiment.run import torch_threads
    from fedpress.llm.config import load_llm_config
    from fedpress.llm.run import summary_extras
    from fedpress.llm.simulation import build_llm_server, prepare_llm
    from fedpress.metrics.events import EventLog

    cfg = load_llm_config(CFG, overrides)
    run_dir.mkdir(parents=True)
    with torch_threads(cfg.run.torch_threads):
        inp = prepare_llm(cfg)
        with EventLog(run_dir / "events.jsonl") as log:
            server, strategy = build_llm_server(cfg, inp, log)
            summary = server.run()
    summary.update(summary_extras(cfg, inp, strategy, run_dir))
    return summary, {k: v.copy() for k, v in server.params.items()}


def test_fedavg_launch_equals_the_simulation(tmp_path: Path, cache: str):
    from safetensors.numpy import load_file

    over = [*FAST, "run.rounds=2", "codec.name=fast", "codec.eb=0.01"]
    run_dir = tmp_path / "run"
    r = subprocess.run(fp("launch", CFG, "--clients", "2", "--run-dir", str(run_dir), "--timeout", "600", *over),
                       env=env(cache), capture_output=True, text=True, timeout=700)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((run_dir / "summary.json").read_text())
    os.environ["FEDPRESS_CACHE_DIR"] = cache
    sim, sim_params = simulate([*over, "data.clients=2"], tmp_path / "sim")

    assert got["transport"] == "grpc" and got["versions"] == 2 and got["updates"] == 4
    # the server's final adapter is the simulation's (real arrival order: float sums may differ)
    adapter = load_file(str(run_dir / ADAPTER_FILE))
    assert adapter.keys() == sim_params.keys() and len(adapter) == 2 * 2 * 2
    for k, v in sim_params.items():
        np.testing.assert_allclose(adapter[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    assert any(np.abs(adapter[k]).max() > 0 for k in adapter if k.endswith("lora_B"))  # it trained
    g, sg = got["global_metrics"], sim["global_metrics"]
    assert g["loss"] == pytest.approx(sg["loss"], rel=1e-4)
    assert g["perplexity"] == pytest.approx(np.exp(g["loss"]), rel=1e-6)
    assert [e["version"] for e in got["agg_errors"]] == [1, 2]
    for a, b in zip(got["agg_errors"], sim["agg_errors"], strict=True):
        assert a["agg_rel_error"] == pytest.approx(b["agg_rel_error"], rel=1e-3, abs=1e-7)
    assert got["local_metrics"]["local_loss"] == pytest.approx(sim["local_metrics"]["local_loss"], rel=1e-4)
    # only adapter tensors travel, coded by the codec layer; the transport adds its framing
    # (payload sizes equal up to the stream sequence number: a deployed client numbers its uplink
    # from the time it joined, a varint a few bytes longer per payload; see deploy.client)
    assert abs(got["bytes_up"] - sim["bytes_up"]) <= 4 * 16 and got["bytes_up_raw"] == 4 * ADAPTER_BYTES
    assert got["bytes_up"] < got["bytes_up_raw"]
    assert got["wire_bytes"]["up"] > got["bytes_up"]
    arr = [e for e in read_events(run_dir) if e["event"] == "arrival"]
    assert {a["client"] for a in arr} == {0, 1} and all(a["status"] == "accepted" for a in arr)
    assert all(a["raw_bytes_up"] == a["raw_bytes_down"] == ADAPTER_BYTES for a in arr)
    assert all(np.isfinite(a["local_loss"]) for a in arr)
    evals = [e for e in read_events(run_dir) if e["event"] == "eval"]
    assert [e["version"] for e in evals] == [0, 1, 2] and all("perplexity" in e for e in evals)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["tiny"] is True


@pytest.mark.slow  # the async path over gRPC is covered in CI by the CNN FedFa launch test
def test_fedbuff_server_and_clients_run_to_the_end(tmp_path: Path, cache: str):
    over = [*FAST, "data.clients=2", "strategy.name=fedbuff", "strategy.K=2", "strategy.max_in_flight=2",
            "run.rounds=null", "run.max_updates=4"]
    run_dir, port_file = tmp_path / "run", tmp_path / "port"
    e = env(cache)
    server = subprocess.Popen(
        fp("server", CFG, *over, "--address", "127.0.0.1:0", "--run-dir", str(run_dir),
           "--port-file", str(port_file), "--heartbeat", "0.5", "--join-timeout", "600"),
        env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [server]
    try:
        import time

        end = time.monotonic() + 600
        while not port_file.is_file():
            assert server.poll() is None, server.communicate()[0][-3000:]
            assert time.monotonic() < end
            time.sleep(0.1)
        addr = f"127.0.0.1:{port_file.read_text().strip()}"
        procs += [subprocess.Popen(fp("client", CFG, *over, "--server", addr, "--id", str(c)), env=e,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for c in (0, 1)]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs[0][-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all("done," in o for o in outs[1:])
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["strategy"] == "fedbuff" and s["stop_reason"] == "max_updates" and s["updates"] >= 4
    assert s["rejected"] == 0 and s["versions"] >= 2 and len(s["agg_errors"]) == s["versions"]
    assert np.isfinite(s["global_metrics"]["loss"]) and (run_dir / ADAPTER_FILE).stat().st_size > ADAPTER_BYTES


def test_adapter_strategy_state_survives_a_checkpoint_file(tmp_path: Path):
    """A server checkpoint of an LLM run keeps the inner rule's state, the buffered adapters and
    the aggregation-error history (written and read by the deploy checkpoint format)."""
    from fedpress.config import FedBuffConfig
    from fedpress.deploy import checkpoint as ckpt
    from fedpress.fl.strategies import build_strategy
    from fedpress.llm.strategy import AdapterStrategy

    def make() -> AdapterStrategy:
        return AdapterStrategy(build_strategy(FedBuffConfig(K=2), 2), "fedavg", 2.0, 2)

    a = make()
    rng = np.random.default_rng(0)
    a._buf = [({"m.lora_A": rng.normal(size=(2, 4)).astype(np.float32)}, 3.0)]
    a.history = [{"version": 1, "agg_error": 0.5, "agg_rel_error": 0.1}]
    a.last = dict(a.history[0])
    ckpt.save(tmp_path / "c.fpck", a.state_dict())
    b = make()
    b.load_state_dict(ckpt.load(tmp_path / "c.fpck"))
    assert b.history == a.history and b.last == a.last and b.inner.state_dict().keys() == a.inner.state_dict().keys()
    (t, w), = b._buf
    assert w == 3.0 and np.array_equal(t["m.lora_A"], a._buf[0][0]["m.lora_A"])


@pytest.mark.slow
def test_llm_server_killed_and_restarted_resumes(tmp_path: Path, cache: str):
    """A federated LoRA server killed mid-run and started again with the same command resumes
    from its checkpoint: one version history, the aggregation errors of every version kept."""
    import signal
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    over = [*FAST, "data.clients=2", "run.rounds=30"]
    run_dir, ck = tmp_path / "run", tmp_path / "ckpt"
    cmd = fp("server", CFG, *over, "--address", f"127.0.0.1:{port}", "--run-dir", str(run_dir),
             "--checkpoint-dir", str(ck), "--heartbeat", "0.3", "--client-timeout", "30", "--join-timeout", "600")
    e = env(cache)
    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen(fp("client", CFG, *over, "--server", f"127.0.0.1:{port}", "--id", str(c),
                                  "--reconnect-timeout", "300"), env=e,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in (0, 1)]
    try:
        end = time.monotonic() + 600
        while True:  # kill it once a few global versions exist
            assert procs[0].poll() is None and time.monotonic() < end
            if (run_dir / "events.jsonl").is_file():
                ups = [ev for ev in read_events(run_dir) if ev["event"] == "update"]
                if ups and ups[-1]["version"] >= 3:
                    break
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        again = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-3000:]
        assert [p.wait(120) for p in procs[1:]] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["resumed"] is True and s["versions"] == 30
    assert [ev["version"] for ev in read_events(run_dir) if ev["event"] == "update"] == list(range(1, 31))
    assert [h["version"] for h in s["agg_errors"]] == list(range(1, 31))
    assert np.isfinite(s["global_metrics"]["loss"])
