"""The dense -> MoE builder, the perturbation modes, selectors and activation statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpress.llm.models import tiny_causal_lm
from fedpress.moe.build import BuildRecipe, balanced_kmeans, build_moe, lee_background
from fedpress.moe.layout import find_moe_layers
from fedpress.moe.perturb import perturbed, perturbed_tensors, select
from fedpress.moe.stats import RouterRecorder, entropy_bits, gini, layer_stats

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def built():
    dense, tok = tiny_causal_lm(hidden_size=32, layers=2, heads=4, intermediate_size=64, seed=3)
    with torch.no_grad():  # spread the random weights so that routing is not trivial
        for p in dense.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    texts = lee_background()[:6]
    assert texts, "gensim's lee_background.cor ships with gensim"
    recipe = BuildRecipe(experts=4, top_k=2, route_k=None, shared=16, logit_std=1e-5, router_steps=30, calib_tokens=256)
    moe, report = build_moe(dense, tok, recipe, progress=lambda m: None, texts=texts)
    moe.config._experts_implementation = "eager"
    return dense, tok, moe, report


def test_moe_with_all_experts_reproduces_the_dense_model(built) -> None:
    dense, tok, moe, report = built
    assert moe.config.model_type == "qwen2_moe" and len(find_moe_layers(moe)) == 2
    ids = tok("Wind and rain hit the coast", return_tensors="pt")["input_ids"][:, :24]
    with torch.no_grad():
        want = dense(ids).logits
        sparse = moe(ids).logits
        for layer in moe.model.layers:
            layer.mlp.gate.top_k = 4  # every expert: the split is exact up to the router's 1/E
        full = moe(ids).logits
        for layer in moe.model.layers:
            layer.mlp.gate.top_k = 2
    assert (full - want).abs().max() < 1e-3 * want.abs().max()
    assert (sparse - want).abs().max() > 10 * (full - want).abs().max()
    assert all(0 <= r <= 1 for r in report["router_recall"])


def test_balanced_kmeans_makes_equal_groups_and_finds_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=g) * 5
    feats = torch.cat([c + 0.1 * torch.randn(8, 10, generator=g) for c in centers])
    labels = balanced_kmeans(feats, 3)
    assert sorted(torch.bincount(labels).tolist()) == [8, 8, 8]
    for block in labels.view(3, 8):
        assert len(set(block.tolist())) == 1


def test_stats_formulas() -> None:
    c = np.array([0, 0, 0, 4])
    pairwise = np.abs(c[:, None] - c[None, :]).sum() / (2 * len(c) ** 2 * c.mean())
    assert gini(c) == pytest.approx(pairwise)
    assert gini(np.ones(5)) == pytest.approx(0)
    assert entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(2.0)
    s = layer_stats({3: np.array([2, 0, 6, 0])})[0]
    assert s["utilisation"] == 0.5 and s["top_expert"] == 2


def test_selectors(built) -> None:
    moe = built[2]
    layers = find_moe_layers(moe)
    counts = {x.index: np.array([5, 9, 0, 2]) for x in layers}
    li = layers[0].index
    assert select("top1", layers, counts, li) == [(li, 1)]
    assert select("topk", layers, counts, li, k=2) == [(li, 1), (li, 0)]
    assert select("one", layers, counts, li) == [(li, 3)]
    assert select("layer", layers, counts, li) == [(li, e) for e in range(4)]
    assert select("group_top1", layers, counts, group="shallow") == [(li, 1)]
    with pytest.raises(ValueError, match="unknown selector"):
        select("nope", layers, counts, li)


def test_perturbation_modes_have_the_stated_size() -> None:
    rng = np.random.default_rng(0)
    x = {"w": rng.standard_normal((200, 100)).astype(np.float32)}
    b = 0.3 * np.abs(x["w"]).mean()
    g = perturbed_tensors(x, "gauss", 0.3, np.random.default_rng(1))["w"] - x["w"]
    assert np.std(g) == pytest.approx(b, rel=0.03)
    u = perturbed_tensors(x, "uniform", 0.3, np.random.default_rng(1))["w"] - x["w"]
    assert np.abs(u).max() <= b * (1 + 1e-6) and np.std(u) == pytest.approx(b / np.sqrt(3), rel=0.03)
    for codec in ("fixedrate", "sz3"):
        c = perturbed_tensors(x, "codec", 0.3, np.random.default_rng(1), codec)["w"] - x["w"]
        assert 0 < np.abs(c).max() <= b * (1 + 1e-6)


def test_perturbed_restores_exact_weights_and_counts_routes(built) -> None:
    _, tok, moe, _ = built
    layers = find_moe_layers(moe)
    before = {k: v.clone() for k, v in moe.state_dict().items()}
    ids = tok("The storm", return_tensors="pt")["input_ids"]
    with RouterRecorder(layers) as rec, torch.no_grad():
        base = moe(ids).logits
    assert all(c.sum() == ids.shape[1] * 2 for c in rec.counts.values())
    keys = select("layer", layers, rec.counts, layers[1].index)
    with perturbed(layers, keys, "gauss", 0.8) as info, torch.no_grad():
        assert not torch.equal(moe(ids).logits, base)
    assert info["experts"] == 4 and info["rel_l2"] > 0.5
    for k, v in moe.state_dict().items():
        assert torch.equal(v, before[k]), k
