"""Text partitioners, quantile buckets, corruption tiers and wiki stripping, checked directly."""

from __future__ import annotations

import numpy as np
import pytest

from fedpress.llm.partition import bucketize, histogram, partition_text
from fedpress.llm.text import CORRUPTION_RATES, corrupt, corrupt_answer, strip_wiki

RNG = np.random.default_rng(0)
TOKENS = RNG.integers(10, 129, size=600)
CATS = RNG.integers(0, 4, size=600)
T = 30000


def _check_basic(parts, n):
    allidx = np.concatenate(parts)
    assert len(parts) == n and all(len(p) for p in parts)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    total = int(TOKENS[allidx].sum())
    assert abs(total - T) <= n * TOKENS.max()  # total fixed up to one sample per client


@pytest.mark.parametrize("skew", ["iid", "quantity", "length", "quality"])
def test_partitions_are_disjoint_with_fixed_total(skew):
    _check_basic(partition_text(CATS, TOKENS, 5, skew, 0.5, T, seed=1), 5)


def test_iid_budgets_are_equal():
    parts = partition_text(CATS, TOKENS, 5, "iid", 0.1, T, seed=2)
    per = np.array([TOKENS[p].sum() for p in parts])
    assert np.all(np.abs(per - T / 5) <= TOKENS.max())


def _shares(parts):
    return np.array([np.bincount(CATS[p], minlength=4) / len(p) for p in parts])


def test_small_alpha_skews_categories_and_large_alpha_does_not():
    skewed = _shares(partition_text(CATS, TOKENS, 5, "length", 0.01, T, seed=3))
    flat = _shares(partition_text(CATS, TOKENS, 5, "length", 1000.0, T, seed=3))
    assert skewed.max(axis=1).mean() > 0.8
    glob = np.bincount(CATS, minlength=4) / len(CATS)
    assert np.abs(flat - glob).max() < 0.15


def test_quantity_skew_uneven_budgets():
    parts = partition_text(CATS, TOKENS, 5, "quantity", 0.1, T, seed=4)
    per = np.array([TOKENS[p].sum() for p in parts], float)
    assert per.std() / per.mean() > 0.5


def test_bad_partition_input():
    with pytest.raises(ValueError, match="exceeds"):
        partition_text(CATS, TOKENS, 3, "iid", 1.0, int(TOKENS.sum()) + 1)
    with pytest.raises(ValueError, match="unknown skew"):
        partition_text(CATS, TOKENS, 3, "topic", 1.0, 100)


def test_bucketize_equal_counts_and_histogram():
    v = np.arange(100)[::-1]
    b = bucketize(v, 4)
    assert histogram(b, 4) == [25, 25, 25, 25]
    assert (b[v < 25] == 0).all() and (b[v >= 75] == 3).all()


def test_corruption_rates_and_determinism():
    text = " ".join(f"w{i}" for i in range(2000))
    vocab = ["zzz"]
    assert corrupt(text, 0.0, np.random.default_rng(0), vocab) == text
    a = corrupt(text, 0.25, np.random.default_rng(5), vocab)
    assert a == corrupt(text, 0.25, np.random.default_rng(5), vocab)
    # every corruption moves, drops, repeats or alters a word: count words left untouched in place
    words = text.split()
    kept = sum(1 for w in a.split() if w in set(words))
    assert 0.6 < kept / len(words) < 0.95
    assert CORRUPTION_RATES[0] == 0.0 and list(CORRUPTION_RATES) == sorted(CORRUPTION_RATES)


def test_corrupt_answer():
    rng = np.random.default_rng(0)
    assert all(corrupt_answer("7", 0.0, rng) == "7" for _ in range(20))
    wrong = [corrupt_answer("7", 1.0, rng) for _ in range(50)]
    assert all(w != "7" and abs(int(w) - 7) <= 3 for w in wrong)


def test_strip_wiki():
    src = ("'''Alan''' was a [[mathematician|maths person]] {{Infobox|x={{nested}}}} "
           "born in [[London]].<ref>cite</ref>\n== Life ==\nHe [[File:a.jpg|thumb|pic]]worked.")
    out = " ".join(strip_wiki(src).split())
    assert out == "Alan was a maths person born in London. He worked."
