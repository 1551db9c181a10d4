"""Offloaded inference on tiny MoE models of three families built in code."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers

from fedpress.moe.cache import ExpertCache
from fedpress.moe.layout import NotMoeError, check_moe_config, find_moe_layers
from fedpress.moe.runtime import BudgetError, greedy_generate, offload, parse_budget
from fedpress.moe.store import CorruptExpertError, ExpertStore

torch.set_num_threads(1)
COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, experts_implementation="eager",
              eos_token_id=1, pad_token_id=0, bos_token_id=2)


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(intermediate_size=48, moe_intermediate_size=16,
                                          shared_expert_intermediate_size=16, num_experts=8,
                                          num_experts_per_tok=2, **COMMON)
    elif family == "mixtral":
        cfg = transformers.MixtralConfig(intermediate_size=16, num_local_experts=6,
                                         num_experts_per_tok=2, **COMMON)
    else:
        cfg = transformers.OlmoeConfig(intermediate_size=16, num_experts=8, num_experts_per_tok=2, **COMMON)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # larger weights than the init so that routing and tokens vary
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


PROMPTS = [torch.tensor([[5, 17, 33, 2, 71]]), torch.tensor([[40, 41, 9]])]


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral", "olmoe"])
@pytest.mark.parametrize("policy,prefetch,budget", [("lru", False, "25%"), ("lfu", True, 3)])
def test_lossless_offloading_is_token_exact(family: str, policy: str, prefetch: bool, budget) -> None:
    ref = tiny(family)
    model = copy.deepcopy(ref)
    rt = offload(model, "raw", budget=budget, policy=policy, prefetch=prefetch)
    for ids in PROMPTS:
        want = greedy_generate(ref, ids, 12)
        assert greedy_generate(model, ids, 12).tolist() == want.tolist()
    with torch.no_grad():
        assert torch.equal(model(PROMPTS[0]).logits, ref(PROMPTS[0]).logits)
    rt.cache.drain()
    s = rt.cache.stats
    assert s.loads >= 1 and len(rt.cache) <= rt.cache.slots
    assert s.requests == s.hits + s.prefetch_hits + s.misses
    if prefetch:
        assert s.prefetch_loads > 0
    rt.close()


def test_lossy_store_moves_fewer_bytes_and_stays_within_bound(tmp_path) -> None:
    ref = tiny("qwen2_moe")
    layers = find_moe_layers(ref)
    want = layers[1].expert_tensors(3)
    model = copy.deepcopy(ref)
    rt = offload(model, {"default": "fixedrate:eb=0.01", "deep": "raw"}, budget=4,
                 store_dir=tmp_path / "store")
    assert rt.store.stored_bytes < rt.store.raw_bytes
    got, _, nbytes = rt.store.load(layers[1].index, 3)
    for k, x in want.items():
        bound = 0.01 * (x.max() - x.min())
        assert np.abs(got[k].numpy() - x).max() <= bound
    assert nbytes < sum(x.nbytes for x in want.values())
    assert rt.store.codecs[layers[-1].index] == "raw"
    with torch.no_grad():  # lossy weights change the logits, a little
        diff = (model(PROMPTS[0]).logits - ref(PROMPTS[0]).logits).abs().max().item()
    assert 0 < diff < 1
    rt.close()


def test_corrupted_stored_expert_is_reported_not_used(tmp_path) -> None:
    model = tiny("mixtral")
    rt = offload(model, "fixedrate:eb=0.01", budget=2, store_dir=tmp_path / "s")
    rt.close()
    entry = rt.store.entries[(0, 1)]
    blob = bytearray((tmp_path / "s" / "experts.bin").read_bytes())
    blob[entry.offset + entry.length - 3] ^= 0x01
    (tmp_path / "s" / "experts.bin").write_bytes(bytes(blob))
    store = ExpertStore.open(tmp_path / "s")
    store.load(0, 0)  # the others are fine
    with pytest.raises(CorruptExpertError, match=r"layer 0, expert 1"):
        store.load(0, 1)
    cache = ExpertCache(lambda k: store.load(*k), slots=2)
    cache.prefetch([(0, 1)])
    with pytest.raises(CorruptExpertError):
        cache.get((0, 1))


def test_budget_and_config_errors(tmp_path) -> None:
    assert parse_budget("25%", 100, 40) == 10
    assert parse_budget(3, 100, 40) == 3
    assert parse_budget("1kB", 100, 40) == 10
    with pytest.raises(BudgetError, match="smaller than one"):
        parse_budget("1%", 100, 40)
    with pytest.raises(BudgetError, match="smaller than one decoded expert"):
        parse_budget("50B", 100, 40)
    transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(NotMoeError, match="not a mixture-of-experts"):
        check_moe_config(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_local_experts"] = 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert check_moe_config(tmp_path)["num_local_experts"] == 4
    dense = transformers.AutoModelForCausalLM.from_config(
        transformers.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=8))
    with pytest.raises(NotMoeError):
        offload(dense, "raw")


class _ListMoe(torch.nn.Module):
    """A per-expert ``ModuleList`` layout, as older transformers and custom models have it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(8, 4, bias=False)
        self.experts = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.GELU(), torch.nn.Linear(6, 8))
            for _ in range(4))

    def forward(self, x):
        idx = self.gate(x).argmax(-1)
        return torch.stack([self.experts[int(i)](row) for i, row in zip(idx, x, strict=True)])


def test_modulelist_layout_is_offloaded_exactly() -> None:
    torch.manual_seed(1)
    layer = torch.nn.Module()
    layer.mlp = _ListMoe()
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer])
    x = torch.randn(10, 8)
    want = layer.mlp(x)
    rt = offload(model, "raw", budget=2)
    assert torch.equal(layer.mlp(x), want)
    assert rt.cache.stats.misses > 0 and not any(p.device.type != "meta" for e in layer.mlp.experts
                                                  for p in e.template[0].parameters())
