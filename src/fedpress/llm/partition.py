"""Non-IID partitioners for unlabeled text, driven by a Dirichlet alpha, total tokens fixed.

Every sample has a token count and a category (its length bucket, or its quality bin). A
partition hands each client a token budget and per-category proportions:

* ``iid``: equal budgets ``T / n``, samples drawn at random (categories ignored);
* ``quantity``: budgets ``T q_i`` with ``q ~ Dir(alpha)``, samples drawn at random;
* ``length`` / ``quality``: equal budgets, category proportions ``p_i ~ Dir(alpha 1_K)``.

Clients are filled one sample at a time in turn, each from its category with the largest unmet
budget, without replacement, until every client holds its budget (``T`` tokens in all, give or
take one sample per client). Small alpha = strong skew, large alpha = near IID.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SKEWS = ("iid", "quantity", "length", "quality")


def bucketize(values: Sequence[float], n_bins: int) -> np.ndarray:
    """Quantile bins ``0..n_bins-1`` of ``values`` (equal-count bins; ties stay together)."""
    v = np.asarray(values, dtype=np.float64)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(v) else np.array([])
    return np.searchsorted(edges, v, side="right").astype(np.int64)


def partition_text(
    categories: Sequence[int],
    tokens: Sequence[int],
    n_clients: int,
    skew: str,
    alpha: float,
    total_tokens: int,
    seed: int = 0,
) -> list[np.ndarray]:
    """Sample indices per client; see the module docstring for the rules.

    Parameters
    ----------
    categories
        Category of each sample (length bucket or quality bin); ignored for iid/quantity.
    tokens
        Token count of each sample (what budgets are measured in).
    n_clients, skew, alpha, total_tokens, seed
        Number of clients, one of ``SKEWS``, Dirichlet concentration, the fixed total, RNG seed.

    Returns
    -------
    list of numpy.ndarray
        Disjoint index arrays, one per client, each non-empty.
    """
    if skew not in SKEWS:
        raise ValueError(f"unknown skew {skew!r}; known: {', '.join(SKEWS)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    tok = np.asarray(tokens, dtype=np.int64)
    if total_tokens > tok.sum():
        raise ValueError(f"total_tokens {total_tokens} exceeds the corpus's {int(tok.sum())} tokens")
    if n_clients < 1 or n_clients > len(tok):
        raise ValueError(f"need 1 <= clients <= samples ({len(tok)}), got {n_clients}")
    rng = np.random.default_rng([seed, 7])
    cats = np.zeros(len(tok), np.int64) if skew in ("iid", "quantity") else np.asarray(categories, np.int64)
    k = int(cats.max()) + 1
    if skew == "quantity":
        q = rng.dirichlet(np.full(n_clients, alpha))
        budget = np.maximum(q * total_tokens, 1.0)
    else:
        budget = np.full(n_clients, total_tokens / n_clients)
    props = rng.dirichlet(np.full(k, alpha), size=n_clients) if k > 1 else np.ones((n_clients, 1))
    want = props * budget[:, None]
    pools = [list(rng.permutation(np.flatnonzero(cats == c))) for c in range(k)]
    got = np.zeros((n_clients, k))
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    active = list(range(n_clients))
    while active:
        still = []
        for i in active:
            if got[i].sum() >= budget[i] and parts[i]:
                continue
            avail = [c for c in range(k) if pools[c]]
            if not avail:
                still = []
                break
            deficit = np.array([want[i, c] - got[i, c] for c in avail])
            c = avail[int(np.argmax(deficit))] if deficit.max() > 0 else avail[int(np.argmax(props[i, avail]))]
            s = int(pools[c].pop())
            parts[i].append(s)
            got[i, c] += tok[s]
            still.append(i)
        active = still
    return [np.asarray(sorted(p), dtype=np.int64) for p in parts]


def histogram(values: Sequence[int], n_bins: int) -> list[int]:
    """Counts of integer categories ``0..n_bins-1``."""
    return np.bincount(np.asarray(values, np.int64), minlength=n_bins)[:n_bins].tolist()
