"""The bar benchmark's parts: plan strings, interleaved timing on a tiny MoE, the summary."""

from __future__ import annotations

import pytest
import torch
from test_moe_runtime import PROMPTS, tiny

from fedpress.moe.bench import interleaved_speed, speed_summary
from fedpress.moe.layout import find_moe_layers, iter_experts
from fedpress.moe.runtime import greedy_generate
from fedpress.moe.store import CodecPlan, ExpertStore

torch.set_num_threads(1)


def test_plan_string_sets_groups() -> None:
    plan = CodecPlan.parse("fast:eb=0.003;middle=fast:eb=0.001; deep=raw")
    assert str(plan.default) == "fast:eb=0.003"
    assert {g: str(s) for g, s in plan.groups.items()} == {"middle": "fast:eb=0.001", "deep": "raw"}
    # 9 MoE layers: thirds are shallow 0-2, middle 3-5, deep 6-8
    assert [str(plan.spec_for(i, i, 9)) for i in (0, 4, 8)] == ["fast:eb=0.003", "fast:eb=0.001", "raw"]
    with pytest.raises(ValueError):
        CodecPlan.parse("raw;top=raw")


def test_interleaved_speed_alternates_and_stays_exact(tmp_path) -> None:
    model = tiny("qwen2_moe")
    layers = find_moe_layers(model)
    idx = [x.index for x in layers]
    ref = [greedy_generate(model, ids, 5)[0, ids.shape[1]:].tolist() for ids in PROMPTS]
    stores = {"raw": ExpertStore.build(iter_experts(layers), CodecPlan.parse("raw"), idx, tmp_path / "raw"),
              "zstd": ExpertStore.build(iter_experts(layers), CodecPlan.parse("zstd"), idx)}
    rows = interleaved_speed(model, PROMPTS, stores, 4, ["lru", "lfu+prefetch"], 2, 5, ref, progress=lambda m: None)
    assert [(r["round"], r["policy"], r["plan"]) for r in rows] == [
        (0, "lru", "raw"), (0, "lru", "zstd"), (0, "lfu+prefetch", "raw"), (0, "lfu+prefetch", "zstd"),
        (1, "lru", "zstd"), (1, "lru", "raw"), (1, "lfu+prefetch", "zstd"), (1, "lfu+prefetch", "raw")]
    assert all(r["same_tokens_as_resident"] for r in rows)  # both codecs are lossless
    # the resident experts are back after every run
    assert greedy_generate(model, PROMPTS[0], 5)[0, PROMPTS[0].shape[1]:].tolist() == ref[0]
    summ = speed_summary(rows, "raw")
    assert len(summ) == 4 and all(s["rounds"] == 2 for s in summ)
    assert next(s for s in summ if s["plan"] == "raw")["speed_ratio_median"] == pytest.approx(1.0)


def test_speed_summary_uses_per_round_ratios() -> None:
    def row(plan, rnd, tps, b):
        return {"plan": plan, "policy": "lru", "round": rnd, "tokens_per_s": tps, "bytes_per_token": b, "hit_rate": 0.0}

    rows = [row("raw", 0, 1.0, 100), row("c", 0, 2.0, 20), row("raw", 1, 4.0, 100), row("c", 1, 2.0, 20),
            row("raw", 2, 2.0, 100), row("c", 2, 3.0, 25)]
    c = next(s for s in speed_summary(rows, "raw") if s["plan"] == "c")
    assert c["speed_ratios"] == [2.0, 0.5, 1.5] and c["speed_ratio_median"] == 1.5
    assert c["tokens_per_s_median"] == 2.0 and c["bytes_share_median"] == pytest.approx(0.2)
