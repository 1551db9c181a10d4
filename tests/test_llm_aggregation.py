"""Adapter aggregation rules against plain numpy formulas (products formed explicitly)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpress.llm.aggregation import aggregate, fedavg_ab, product_error, stack, svd_refactor


def _clients(ranks, d_out=7, d_in=5, seed=0):
    rng = np.random.default_rng(seed)
    As = [rng.normal(size=(r, d_in)) for r in ranks]
    Bs = [rng.normal(size=(d_out, r)) for r in ranks]
    return As, Bs


def _mean_product(As, Bs, w):
    w = np.asarray(w, float) / np.sum(w)
    return sum(wi * b @ a for wi, a, b in zip(w, As, Bs, strict=True))


W = [3.0, 1.0, 2.0]


def test_fedavg_ab_is_elementwise_mean_not_mean_product():
    As, Bs = _clients([3, 3, 3])
    A, B = fedavg_ab(As, Bs, W)
    p = np.array(W) / 6
    np.testing.assert_allclose(A, p[0] * As[0] + p[1] * As[1] + p[2] * As[2])
    np.testing.assert_allclose(B, p[0] * Bs[0] + p[1] * Bs[1] + p[2] * Bs[2])
    err = np.linalg.norm(_mean_product(As, Bs, W) - B @ A)
    assert err > 1e-3
    assert product_error(As, Bs, W, A, B) == pytest.approx(err, rel=1e-9)


def test_frozen_a_is_exact():
    As, Bs = _clients([2, 2, 2])
    shared = [As[0]] * 3
    A, B = aggregate("frozen_a", shared, Bs, W)
    np.testing.assert_allclose(B @ A, _mean_product(shared, Bs, W), atol=1e-12)
    assert product_error(shared, Bs, W, A, B) < 1e-9


def test_stack_is_exact_for_heterogeneous_ranks():
    As, Bs = _clients([1, 4, 2])
    A, B = stack(As, Bs, W)
    assert A.shape == (7, 5) and B.shape == (7, 7)
    np.testing.assert_allclose(B @ A, _mean_product(As, Bs, W), atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_svd_refactor_is_the_best_rank_r_approximation(rank):
    As, Bs = _clients([2, 3, 4], d_out=9, d_in=8, seed=1)
    A, B = svd_refactor(As, Bs, W, rank)
    assert A.shape == (rank, 8) and B.shape == (9, rank)
    M = _mean_product(As, Bs, W)
    u, s, vt = np.linalg.svd(M)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(B @ A, best, atol=1e-10)
    # Eckart-Young: the error is the norm of the dropped singular values
    tail = float(np.sqrt((s[rank:] ** 2).sum()))
    assert product_error(As, Bs, W, A, B) == pytest.approx(tail, rel=1e-6, abs=1e-9)


def test_svd_pads_when_the_product_has_lower_rank():
    As, Bs = _clients([1, 1])
    A, B = svd_refactor(As, Bs, None, rank=4)
    assert A.shape == (4, 5) and B.shape == (7, 4)
    np.testing.assert_allclose(B @ A, _mean_product(As, Bs, [1, 1]), atol=1e-12)


def test_bad_input():
    As, Bs = _clients([2, 2])
    with pytest.raises(ValueError, match="unknown adapter aggregation"):
        aggregate("median", As, Bs)
    with pytest.raises(ValueError, match="weights"):
        fedavg_ab(As, Bs, [1.0])
