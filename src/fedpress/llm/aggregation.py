"""Aggregation rules for LoRA factors, and the aggregation error they make.

For one adapted module client i holds ``B_i`` (``d_out x r_i``) and ``A_i`` (``r_i x d_in``);
its weight update is ``B_i A_i`` (LoRA scales are folded into B by the caller). With weights
``p_i = w_i / sum w`` the ideal global update is ``M = sum_i p_i B_i A_i``. The rules:

* ``fedavg``: ``A = sum p_i A_i``, ``B = sum p_i B_i`` (the common baseline; ``B A != M``);
* ``frozen_a``: every client shares one fixed ``A``; ``B = sum p_i B_i`` gives ``B A = M`` exactly;
* ``stack``: ``A = [A_1; A_2; ...]``, ``B = [p_1 B_1, p_2 B_2, ...]``: exact for any ranks,
  the rank is the sum of the clients' ranks;
* ``svd``: the best rank-``r`` factorisation of ``M`` (truncated SVD), ordered by singular value.

``M`` is never formed: stacked factors are orthogonalised (QR) and only an ``R x R`` core is
decomposed, so cost and memory stay ``O((d_in + d_out) R^2)`` with ``R = sum r_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RULES = ("fedavg", "frozen_a", "stack", "svd")


def _weights(w: Sequence[float] | None, n: int) -> np.ndarray:
    p = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    if p.shape != (n,) or (p < 0).any() or p.sum() <= 0:
        raise ValueError("weights must be n non-negative numbers with a positive sum")
    return p / p.sum()


def fedavg_ab(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray], w: Sequence[float] | None = None):
    """``(sum p_i A_i, sum p_i B_i)``; all ranks must be equal."""
    p = _weights(w, len(As))
    A = sum(pi * np.asarray(a, np.float64) for pi, a in zip(p, As, strict=True))
    B = sum(pi * np.asarray(b, np.float64) for pi, b in zip(p, Bs, strict=True))
    return A, B


def frozen_a(A: np.ndarray, Bs: Sequence[np.ndarray], w: Sequence[float] | None = None):
    """``(A, sum p_i B_i)`` for clients that share the frozen ``A``: exact."""
    p = _weights(w, len(Bs))
    return np.asarray(A, np.float64), sum(pi * np.asarray(b, np.float64) for pi, b in zip(p, Bs, strict=True))


def stack(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray], w: Sequence[float] | None = None):
    """``([A_1; ...], [p_1 B_1, ...])``: ``B A = M`` exactly, for heterogeneous ranks too."""
    p = _weights(w, len(As))
    A = np.concatenate([np.asarray(a, np.float64) for a in As], axis=0)
    B = np.concatenate([pi * np.asarray(b, np.float64) for pi, b in zip(p, Bs, strict=True)], axis=1)
    return A, B


def svd_factors(A: np.ndarray, B: np.ndarray, rank: int | None = None, rtol: float = 0.0):
    """Balanced factors ``(A', B')`` of ``B A`` truncated to ``rank`` (and to singular values
    above ``rtol * s_max``): ``B' = U sqrt(S)``, ``A' = sqrt(S) V^T``, largest first."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    qb, rb = np.linalg.qr(B)  # B = qb rb
    qa, ra = np.linalg.qr(A.T)  # A = ra^T qa^T
    u, s, vt = np.linalg.svd(rb @ ra.T)
    keep = len(s) if rank is None else min(rank, len(s))
    if rtol > 0 and len(s):
        keep = min(keep, int((s > rtol * s[0]).sum()))
    root = np.sqrt(s[:keep])
    B2 = (qb @ u[:, :keep]) * root
    A2 = root[:, None] * (vt[:keep] @ qa.T)
    if keep < (rank or 0):  # pad with zeros so the global shapes never change
        B2 = np.pad(B2, ((0, 0), (0, rank - keep)))
        A2 = np.pad(A2, ((0, rank - keep), (0, 0)))
    return A2, B2


def svd_refactor(As, Bs, w: Sequence[float] | None = None, rank: int | None = None):
    """Truncated-SVD factors of ``M = sum p_i B_i A_i`` at ``rank`` (default: the clients' max)."""
    A, B = stack(As, Bs, w)
    r = max(np.shape(a)[0] for a in As) if rank is None else rank
    return svd_factors(A, B, r)


def product_error(As, Bs, w, A: np.ndarray, B: np.ndarray) -> float:
    """``|| sum p_i B_i A_i - B A ||_F`` computed from factors (Gram matrices), never forming M."""
    As_, Bs_ = stack(As, Bs, w)
    left = np.concatenate([Bs_, -np.asarray(B, np.float64)], axis=1)
    right = np.concatenate([As_, np.asarray(A, np.float64)], axis=0)
    gram = (left.T @ left) * (right @ right.T)
    return float(np.sqrt(max(gram.sum(), 0.0)))


def aggregate(rule: str, As, Bs, w=None, rank: int | None = None):
    """Dispatch to one rule by name; ``frozen_a`` takes ``As[0]`` as the shared A."""
    if rule == "fedavg":
        return fedavg_ab(As, Bs, w)
    if rule == "frozen_a":
        return frozen_a(As[0], Bs, w)
    if rule == "stack":
        return stack(As, Bs, w)
    if rule == "svd":
        return svd_refactor(As, Bs, w, rank)
    raise ValueError(f"unknown adapter aggregation {rule!r}; known: {', '.join(RULES)}")
