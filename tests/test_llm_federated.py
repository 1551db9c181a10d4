"""Federated LoRA on the engine with a tiny Llama built in code: strategies, aggregation rules,
adapter codecs, bad updates, local and global metrics, and the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("reasoning_gym")
if importlib.util.find_spec("gensim") is None:  # the text files ship in gensim's test data
    pytest.skip("gensim not installed (pip install 'fedpress[llm]')", allow_module_level=True)

from fedpress.llm import simulation
from fedpress.llm.cli import main as llm_main
from fedpress.llm.config import load_llm_config
from fedpress.llm.lora import (
    AdapterError,
    adapter_parameters,
    check_adapter,
    get_adapter,
    set_adapter,
)
from fedpress.llm.models import tiny_causal_lm
from fedpress.llm.run import run_llm
from fedpress.llm.simulation import prepare_llm

CFG = Path(__file__).resolve().parents[1] / "configs" / "llm_tiny.yaml"
# tiny model: hidden 32, 4 heads (kv heads 4), 2 layers; LoRA rank 2 on q_proj and v_proj
HIDDEN, LAYERS, RANK = 32, 2, 2


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    import os

    os.environ["FEDPRESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)
    cfg = load_llm_config(CFG)
    inp = prepare_llm(cfg, tiny_causal_lm(seed=0))
    return inp


def _run(shared, tmp_path, *overrides):
    cfg = load_llm_config(CFG, ["run.out_dir=" + str(tmp_path), *overrides])
    inp = prepare_llm(cfg, (shared.model, shared.tok), shared.corpus)
    return run_llm(cfg, inputs=inp, run_dir=tmp_path / "run")


def _events(tmp_path, kind):
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_fedavg_run_reports_local_and_global_metrics(shared, tmp_path):
    s = _run(shared, tmp_path)
    g, loc = s["global_metrics"], s["local_metrics"]
    assert g["perplexity"] == pytest.approx(np.exp(g["loss"]), rel=1e-6)
    assert 0 <= g["acc_format"] <= g["acc_content"] <= 1
    assert {"local_loss", "local_perplexity"} <= set(loc)
    arr = _events(tmp_path, "arrival")
    assert len(arr) == 6 and all(a["status"] == "accepted" for a in arr)
    # only adapter tensors travel: A (r x d) and B (d x r) for q and v in each layer, float32
    raw = LAYERS * 2 * (RANK * HIDDEN + HIDDEN * RANK) * 4
    assert all(a["raw_bytes_up"] == raw for a in arr)
    assert len(s["agg_errors"]) == 2 and s["agg_errors"][0]["agg_rel_error"] > 0


@pytest.mark.parametrize("strategy", [
    "fedbuff",
    pytest.param("fedasync", marks=pytest.mark.slow),
    pytest.param("fedfa", marks=pytest.mark.slow),
])
def test_async_strategies_drive_it(shared, tmp_path, strategy):
    s = _run(shared, tmp_path, f"strategy.name={strategy}", "strategy.K=2", "strategy.max_in_flight=2",
             "run.rounds=null", "run.max_updates=3", "eval.local_task=false")
    assert s["updates"] >= 3 and s["rejected"] == 0
    assert np.isfinite(s["global_metrics"]["loss"])


def test_frozen_a_is_exact_and_sends_only_b(shared, tmp_path):
    s = _run(shared, tmp_path, "model.aggregation=frozen_a", "run.rounds=1", "eval.local_task=false")
    assert s["agg_errors"][0]["agg_rel_error"] < 1e-6
    arr = _events(tmp_path, "arrival")
    assert all(a["raw_bytes_up"] == LAYERS * 2 * HIDDEN * RANK * 4 for a in arr)


def test_svd_error_not_above_fedavg_in_the_same_round(shared, tmp_path):
    over = ("run.rounds=1", "eval.local=false")
    e_avg = _run(shared, tmp_path / "a", *over)["agg_errors"][0]["agg_error"]
    e_svd = _run(shared, tmp_path / "b", "model.aggregation=svd", *over)["agg_errors"][0]["agg_error"]
    assert e_svd <= e_avg * (1 + 1e-6)


def test_svd_needs_fedavg():
    with pytest.raises(Exception, match="needs strategy.name=fedavg"):
        load_llm_config(CFG, ["model.aggregation=svd", "strategy.name=fedasync"])


@pytest.mark.parametrize("codec", ["sz3", pytest.param("grad", marks=pytest.mark.slow)])
def test_adapter_codecs_shrink_uplink(shared, tmp_path, codec):
    s = _run(shared, tmp_path, f"codec.name={codec}", "codec.eb=0.05", "run.rounds=1", "eval.local=false")
    assert s["rejected"] == 0 and s["bytes_up"] < s["bytes_up_raw"]


@pytest.mark.parametrize("bad", ["nan", "rank"])
def test_bad_client_update_is_rejected_and_run_continues(shared, tmp_path, monkeypatch, bad):
    poisoned = {"n": 0}

    class Poison(simulation.ClientLM):
        def train(self, params, indices, seed):
            delta, samples, metrics = super().train(params, indices, seed)
            if poisoned["n"] == 0:  # the first client to train sends NaN, or a rank+1 A factor
                poisoned["n"] += 1
                if bad == "nan":
                    delta = {k: np.full_like(v, np.nan) for k, v in delta.items()}
                else:
                    k = next(k for k in delta if k.endswith("lora_A"))
                    delta[k] = np.zeros((RANK + 1, HIDDEN), np.float32)
            return delta, samples, metrics

    monkeypatch.setattr(simulation, "ClientLM", Poison)
    s = _run(shared, tmp_path, "eval.local_task=false")
    assert s["rejected"] == 1 and s["versions"] == 2
    reasons = [a.get("reason", "") for a in _events(tmp_path, "arrival") if a["status"] == "rejected"]
    # a wrong-rank factor is refused from its manifest, before decoding: its declared size
    # exceeds the model-sized limit, or its shape differs from the model's
    expected = ("NaN",) if bad == "nan" else ("shape", "over the limit")
    assert reasons and any(word in reasons[0] for word in expected)
    assert np.isfinite(s["global_metrics"]["loss"])


def test_adapter_checks(shared):
    model = shared.model
    good = get_adapter(model)
    shapes = {k: v.shape for k, v in good.items()}
    name = next(k for k in good if k.endswith("lora_A"))
    wrong_rank = dict(good)
    wrong_rank[name] = np.zeros((RANK + 1, HIDDEN), np.float32)
    with pytest.raises(AdapterError, match="rank mismatch"):
        check_adapter(wrong_rank, shapes)
    nan = dict(good)
    nan[name] = np.full_like(good[name], np.inf)
    with pytest.raises(AdapterError, match="NaN/Inf"):
        set_adapter(model, nan)
    with pytest.raises(AdapterError, match="names differ"):
        set_adapter(model, {"x.lora_A": good[name]})
    set_adapter(model, good)
    assert all(np.array_equal(get_adapter(model)[k], v) for k, v in good.items())
    assert len(adapter_parameters(model)) == LAYERS * 2 * 2


def test_cli_run_and_errors(tmp_path, capsys):
    rc = llm_main(["run", str(CFG), "--quiet", f"run.out_dir={tmp_path}", "run.rounds=1",
                   "eval.local_task=false"])
    assert rc == 0 and "global loss" in capsys.readouterr().out
    rc = llm_main(["run", str(CFG), "--quiet", "data.skeww=iid"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.skeww: unknown key" in err and err.count("\n") == 1


def test_cli_partition_writes_histograms(tmp_path):
    out = tmp_path / "part"
    rc = llm_main(["partition", str(CFG), "--out", str(out), "data.skew=length", "data.alpha=0.1"])
    assert rc == 0
    rep = json.loads((out / "partition.json").read_text())
    assert (out / "partition.png").stat().st_size > 1000
    assert len(rep["clients"]) == 3
    tok = sum(c["tokens"] for c in rep["clients"])
    assert abs(tok - rep["total_tokens"]) <= 3 * rep["max_sample_tokens"]
    for c in rep["clients"]:
        assert sum(c["length_hist"]) == c["samples"] == sum(c["tier_hist"])


def test_heterogeneous_rank_client_trains_only_its_components(shared):
    from fedpress.llm.train import ClientLM, LMTrainer, LMTrainSpec

    c = shared.corpus
    trainer = LMTrainer(shared.model, shared.tok, c.ids, c.loss_start, LMTrainSpec(lr=0.01, local_steps=2))
    rng = np.random.default_rng(0)
    params = {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in get_adapter(shared.model).items()}
    client = ClientLM(trainer, np.zeros(0, np.int64), c.items, rank=1)
    delta, _, _ = client.train(params, shared.parts[0], seed=0)
    for k, v in params.items():
        absolute = v + delta[k]
        if k.endswith("lora_A"):
            assert np.all(absolute[1:] == 0) and np.any(absolute[0] != v[0])
        else:
            assert np.all(absolute[:, 1:] == 0)


def test_heterogeneous_ranks_run_with_stacking(shared, tmp_path):
    s = _run(shared, tmp_path, "model.aggregation=stack", "model.client_ranks=[1,2]", "run.rounds=1",
             "eval.local=false")
    assert s["rejected"] == 0 and np.isfinite(s["global_metrics"]["loss"])
    with pytest.raises(Exception, match="client_ranks"):
        load_llm_config(CFG, ["model.client_ranks=[3]"])


def test_token_nll_matches_transformers_loss(shared):
    from fedpress.llm.train import collate, token_nll

    c = shared.corpus
    idx = [i for i, s in enumerate(c.source) if s == "task"][:2] + [0, 1]
    batch = collate([c.ids[i] for i in idx], c.loss_start[idx], pad_id=0)
    with torch.no_grad():
        ours, n = token_nll(shared.model, batch)
        ref = shared.model(**batch).loss  # transformers' own shifted, masked mean
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert float(ours) / n == pytest.approx(float(ref), rel=1e-5)
