"""Paired quality measures of ``fedpress.moe.quality`` against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedpress.llm.models import tiny_causal_lm
from fedpress.llm.tasks import TaskItem, build_prompt, generate_answers
from fedpress.moe.quality import (
    Generations,
    answer,
    common_prefix,
    compare,
    concat,
    generate_tokens,
    mean_se,
    paired,
    token_agreement,
)

torch.set_num_threads(1)


def test_token_agreement_by_hand() -> None:
    ref = [[1, 2, 3, 4], [5, 6], [7]]
    got = [[1, 2, 9, 4], [5, 6], [8, 8]]
    assert common_prefix(ref[0], got[0]) == 2
    a = token_agreement(ref, got)
    assert a["identical"] == pytest.approx(1 / 3)
    assert a["prefix"] == pytest.approx((2 / 4 + 1 + 0) / 3)
    assert token_agreement(ref, ref) == {"identical": 1.0, "prefix": 1.0}
    with pytest.raises(ValueError):
        token_agreement(ref, got[:2])


def test_mean_se_and_paired_match_numpy() -> None:
    rng = np.random.default_rng(0)
    r = rng.random(40) < 0.6
    g = rng.random(40) < 0.5
    m, se = mean_se(list(r))
    assert m == pytest.approx(r.mean()) and se == pytest.approx(r.std(ddof=1) / math.sqrt(40))
    p = paired(list(r), list(g))
    d = g.astype(float) - r.astype(float)
    assert p["diff"] == pytest.approx(d.mean()) and p["diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(40))
    assert p["lost"] == int(((r) & (~g)).sum()) and p["gained"] == int(((~r) & g).sum())
    assert p["gained"] - p["lost"] == pytest.approx(40 * p["diff"])


def test_compare_and_concat() -> None:
    a = Generations([[1], [2]], ["x", "y"], [True, False], [True, True])
    b = Generations([[1], [3]], ["x", "z"], [True, True], [True, False])
    c = compare(a, b)
    assert c["n"] == 2 and c["acc_format"] == 1.0 and c["format_vs_ref"]["gained"] == 1
    assert c["content_vs_ref"]["lost"] == 1 and c["tokens_vs_ref"]["identical"] == 0.5
    ab = concat([a, b])
    assert ab.tokens == [[1], [2], [1], [3]] and ab.formatted == [True, False, True, True]


def test_generated_tokens_decode_to_the_llm_replies() -> None:
    """Independent reference: ``llm.tasks.generate_answers`` (same batching, text only)."""
    model, tok = tiny_causal_lm(seed=5)
    items = [TaskItem(f"What is {a} + {b}?", str(a + b), f"{a} + {b}", "basic_arithmetic",
                      {"question": "", "answer": str(a + b), "metadata": {}}) for a, b in [(1, 2), (3, 4), (5, 5)]]
    prompts = [build_prompt(tok, it) for it in items]
    ids = generate_tokens(model, tok, prompts, 6, batch_size=2)
    assert all(1 <= len(x) <= 6 for x in ids)
    assert tok.batch_decode(ids, skip_special_tokens=True) == generate_answers(model, tok, prompts, 6, 2)
    gens = answer(model, tok, items, None, 6, 2)
    assert gens.tokens == ids and len(gens.formatted) == 3
    same = compare(gens, gens)
    assert same["tokens_vs_ref"] == {"identical": 1.0, "prefix": 1.0} and same["format_vs_ref"]["diff"] == 0.0
