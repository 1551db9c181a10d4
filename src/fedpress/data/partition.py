"""Split a labelled dataset across federated clients (IID, Dirichlet label skew, shards).

Every scheme returns disjoint, covering, sorted index arrays and is a pure function of its
arguments and ``seed``, so a trace can be re-recorded bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCHEMES", "label_counts", "partition"]

SCHEMES = ("iid", "dirichlet", "shards")
_MAX_DIRICHLET_DRAWS = 100


def partition(labels: np.ndarray, num_clients: int, scheme: str = "iid", alpha: float = 0.5,
              shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Assign sample indices to ``num_clients`` clients.

    Parameters
    ----------
    labels : 1-D integer class ids, one per sample.
    num_clients : number of clients (>= 1, <= number of samples).
    scheme : ``"iid"`` (uniform random, sizes differ by at most one), ``"dirichlet"`` (per
        class, proportions ~ Dir(alpha); smaller ``alpha`` means stronger label skew) or
        ``"shards"`` (McMahan et al. 2017: sort by label, cut into
        ``num_clients * shards_per_client`` equal shards, deal them out at random).
    alpha : Dirichlet concentration (> 0).
    shards_per_client : shards per client for ``"shards"``.
    seed : seed of the NumPy generator; same arguments give the same split.

    Returns
    -------
    list of ``num_clients`` sorted int64 index arrays, disjoint, covering ``range(len(labels))``,
    none empty.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    n = labels.shape[0]
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"cannot give {num_clients} clients a sample each from {n} samples")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        parts = _dirichlet(labels, num_clients, alpha, rng)
    elif scheme == "shards":
        parts = _shards(labels, num_clients, shards_per_client, rng)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}; available: {', '.join(SCHEMES)}")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
               ) -> list[np.ndarray]:
    """Per class, cut its (shuffled) indices by Dir(alpha) proportions.

    Draws again (up to a bound) while some client is empty; if small alpha keeps producing
    empty clients, moves single samples from the largest clients to the empty ones, which
    changes the skew by at most one sample per client.
    """
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _ in range(_MAX_DIRICHLET_DRAWS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in by_class:
            p = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                buckets[client].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) > 0:
            return parts
    for client in range(k):  # fix up: every client gets at least one sample
        if len(parts[client]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            take = rng.integers(len(parts[donor]))
            parts[client] = parts[donor][take:take + 1]
            parts[donor] = np.delete(parts[donor], take)
    return parts


def _shards(labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator
            ) -> list[np.ndarray]:
    if per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {per_client}")
    num_shards = k * per_client
    if num_shards > labels.shape[0]:
        raise ValueError(f"{num_shards} shards need at least as many samples, have "
                         f"{labels.shape[0]}")
    shuffled = rng.permutation(labels.shape[0])  # random order inside each class
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(k, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None
                 ) -> np.ndarray:
    """(clients, classes) table of how many samples of each class each client holds."""
    labels = np.asarray(labels)
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    return np.stack([np.bincount(labels[p], minlength=c) for p in parts])
