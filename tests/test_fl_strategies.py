"""Strategy math on hand-made numbers: FedAvg, FedAsync, FedBuff, FedFa, staleness, optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from fedpress.fl.aggregate import RunningSum
from fedpress.fl.context import ServerContext
from fedpress.fl.server_opt import ServerAdam, ServerMomentum, ServerSGD
from fedpress.fl.staleness import available_staleness, get_staleness
from fedpress.fl.strategies import FedAsync, FedAvg, FedBuff, FedFa, available_strategies
from fedpress.fl.types import GlobalState, Update, to_pseudo_gradient
from fedpress.fl.versions import VersionStore


def ctx_with(params: dict, num_clients: int = 4, keep_old: bool = True, seed: int = 0) -> ServerContext:
    vs = VersionStore(keep_old=keep_old)
    vs.publish(0, params)
    return ServerContext(GlobalState(params, 0), [10] * num_clients, np.random.default_rng(seed), vs)


def publish(ctx: ServerContext, params: dict) -> None:
    ctx.state.params = params
    ctx.state.version += 1
    ctx.versions.publish(ctx.state.version, params)


def upd(cid: int, delta: dict, n: int = 10, base: int = 0, tau: int = 0) -> Update:
    return Update(cid, base, delta, n, staleness=tau)


def arr(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


def test_registry_names():
    assert available_strategies() == ["fedasync", "fedavg", "fedbuff", "fedfa"]
    assert {"constant", "polynomial", "hinge", "exponential"} <= set(available_staleness())


def test_fedavg_weighted_mean_by_samples():
    ctx = ctx_with({"w": arr(1.0, 1.0)}, num_clients=2)
    s = FedAvg()
    assert sorted(s.select(ctx, None)) == [0, 1]
    assert s.select(ctx, None) == []  # round open: nobody else
    assert s.accept(upd(0, {"w": arr(1.0, 0.0)}, n=30), ctx)
    assert not s.ready(ctx)
    assert s.accept(upd(1, {"w": arr(-1.0, 4.0)}, n=10), ctx)
    assert s.ready(ctx)
    new = s.apply(ctx)
    # w + (30 * d0 + 10 * d1) / 40 = 1 + (0.5, 1.0)
    np.testing.assert_allclose(new["w"], [1.5, 2.0])
    assert new["w"].dtype == np.float32


def test_fedavg_eta_g_and_drops_stragglers_of_past_rounds():
    ctx = ctx_with({"w": arr(0.0)}, num_clients=3)
    s = FedAvg(ServerSGD(0.5), min_responses=2, timeout=5.0)
    cohort = s.select(ctx, None)
    assert len(cohort) == 3
    s.accept(upd(cohort[0], {"w": arr(2.0)}), ctx)
    s.accept(upd(cohort[1], {"w": arr(4.0)}), ctx)
    assert not s.ready(ctx)  # 2 of 3, before the timeout
    assert s.deadline(ctx) == 5.0
    ctx.now = 5.0
    assert s.deadline(ctx) is None and s.ready(ctx)
    publish(ctx, s.apply(ctx))
    np.testing.assert_allclose(ctx.state.params["w"], [1.5])  # 0.5 * mean(2, 4)
    assert not s.accept(upd(cohort[2], {"w": arr(100.0)}, base=0, tau=1), ctx)


def test_fedavg_timeout_waits_for_min_responses():
    ctx = ctx_with({"w": arr(0.0)}, num_clients=3)
    s = FedAvg(min_responses=2, timeout=1.0)
    c = s.select(ctx, None)
    ctx.now = 2.0
    s.accept(upd(c[0], {"w": arr(1.0)}), ctx)
    assert not s.ready(ctx) and s.deadline(ctx) is None  # past the deadline, still 1 < 2
    s.accept(upd(c[1], {"w": arr(3.0)}), ctx)
    assert s.ready(ctx)


def test_fedavg_reject_shrinks_the_round():
    ctx = ctx_with({"w": arr(0.0)}, num_clients=2)
    s = FedAvg()
    c = s.select(ctx, None)
    s.accept(upd(c[0], {"w": arr(2.0)}), ctx)
    s.on_reject(c[1], ctx)
    assert s.ready(ctx)
    np.testing.assert_allclose(s.apply(ctx)["w"], [2.0])


def test_fedasync_mixing_with_staleness():
    w0 = {"w": arr(0.0, 10.0)}
    ctx = ctx_with(w0)
    poly = get_staleness("polynomial", a=1.0)  # s(tau) = 1 / (1 + tau)
    s = FedAsync(alpha=0.5, staleness=poly)
    ctx.versions.acquire(0)
    publish(ctx, {"w": arr(2.0, 2.0)})  # the global moved on: version 1
    # the client trained from version 0: w_i = w0 + delta = (4, 6); tau = 1 -> a = 0.25
    assert s.accept(upd(0, {"w": arr(4.0, -4.0)}, base=0, tau=1), ctx)
    assert s.ready(ctx)
    new = s.apply(ctx)
    np.testing.assert_allclose(new["w"], [0.75 * 2 + 0.25 * 4, 0.75 * 2 + 0.25 * 6])
    assert not s.ready(ctx)


def test_fedbuff_with_k_equal_cohort_equals_fedavg_exactly():
    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal((7, 5)).astype(np.float32), "b": arr(0.5, -1.0)}
    deltas = [
        {k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32) for k, v in params.items()}
        for _ in range(4)
    ]
    ctx_a = ctx_with(params, num_clients=4)
    avg = FedAvg(ServerSGD(0.7))
    cohort = avg.select(ctx_a, None)
    for c, d in zip(cohort, deltas, strict=True):
        avg.accept(upd(c, d, n=50), ctx_a)
    ctx_b = ctx_with(params, num_clients=4)
    buff = FedBuff(K=4, optimizer=ServerSGD(0.7), staleness=get_staleness("constant"))
    for c, d in zip(cohort, deltas, strict=True):
        assert not buff.ready(ctx_b)
        buff.accept(upd(c, d, n=50), ctx_b)
    assert avg.ready(ctx_a) and buff.ready(ctx_b)
    a, b = avg.apply(ctx_a), buff.apply(ctx_b)
    for k in params:
        assert np.array_equal(a[k], b[k]), k


def test_fedbuff_staleness_weights_and_divides_by_k():
    ctx = ctx_with({"w": arr(0.0)})
    buff = FedBuff(K=2, staleness=get_staleness("polynomial", a=1.0))
    buff.accept(upd(0, {"w": arr(2.0)}, tau=0), ctx)  # weight 1
    buff.accept(upd(1, {"w": arr(4.0)}, tau=3), ctx)  # weight 1/4
    np.testing.assert_allclose(buff.apply(ctx)["w"], [(2.0 + 1.0) / 2])
    assert not buff.ready(ctx)


def test_fedbuff_and_fedasync_keep_max_in_flight_busy():
    ctx = ctx_with({"w": arr(0.0)}, num_clients=6)
    buff = FedBuff(K=2, max_in_flight=3)
    first = buff.select(ctx, None)
    assert len(first) == 3 and len(set(first)) == 3
    ctx.in_flight.update(first)
    ctx.in_flight.discard(first[0])
    again = buff.select(ctx, first[0])
    assert len(again) == 1 and again[0] not in ctx.in_flight


def test_fedfa_window_slides_and_holds_duplicates_of_fast_clients():
    ctx = ctx_with({"w": arr(0.0)}, num_clients=5)
    fa = FedFa(K=3, variant="model", max_in_flight=3)
    initial = fa.select(ctx, None)
    assert len(initial) == 3 and len(set(initial)) == 3  # K clients dispatched at the start
    ctx.in_flight.update({0, 1, 2})  # say the draw picked clients 0, 1, 2
    seq = [(0, 3.0), (1, 6.0), (0, 9.0), (0, 12.0), (2, 0.0)]
    means = []
    for cid, value in seq:
        ctx.in_flight.discard(cid)
        fa.accept(upd(cid, {"w": arr(value)}, base=0, tau=ctx.state.version), ctx)
        if fa.ready(ctx):
            new = fa.apply(ctx)
            means.append(float(new["w"][0]))
            ctx.state.params = new  # base version 0 stays what clients started from
            ctx.state.version += 1
        # the arriving client is re-dispatched at once
        assert fa.select(ctx, cid) == [cid]
        ctx.in_flight.add(cid)
    assert fa.window_clients() == [0, 0, 2]
    # window means: (3,6,9) -> 6, (6,9,12) -> 9, (9,12,0) -> 7
    assert means == [6.0, 9.0, 7.0]


def test_fedfa_delta_variant_and_staleness_weighting():
    ctx = ctx_with({"w": arr(1.0)}, keep_old=False)
    fa = FedFa(K=2, variant="delta", optimizer=ServerSGD(0.5))
    fa.accept(upd(0, {"w": arr(2.0)}), ctx)
    assert not fa.ready(ctx)  # window not full yet
    fa.accept(upd(1, {"w": arr(4.0)}), ctx)
    np.testing.assert_allclose(fa.apply(ctx)["w"], [1.0 + 0.5 * 3.0])
    assert not fa.ready(ctx)  # nothing new since the last update

    ctx2 = ctx_with({"w": arr(0.0)})
    fw = FedFa(K=2, variant="model", staleness=get_staleness("polynomial", a=1.0))
    fw.accept(upd(0, {"w": arr(3.0)}, tau=0), ctx2)  # weight 1
    fw.accept(upd(1, {"w": arr(6.0)}, tau=1), ctx2)  # weight 1/2
    np.testing.assert_allclose(fw.apply(ctx2)["w"], [(3.0 + 3.0) / 1.5])


def test_staleness_functions():
    assert get_staleness("constant")(7) == 1.0
    assert get_staleness("polynomial", a=0.5)(3) == pytest.approx(0.5)
    hinge = get_staleness("hinge", a=10, b=4)
    assert hinge(4) == 1.0 and hinge(5) == pytest.approx(1 / 11)
    assert get_staleness("exponential", a=0.5)(2) == pytest.approx(np.exp(-1))
    for name in available_staleness():
        assert get_staleness(name)(0) == 1.0
    with pytest.raises(ValueError, match="unknown staleness"):
        get_staleness("nope")
    with pytest.raises(ValueError, match=">= 0"):
        get_staleness("polynomial")(-1)


def test_server_optimizers():
    p = {"w": arr(0.0)}
    m = ServerMomentum(1.0, beta1=0.5)
    p1 = m.step(p, {"w": np.array([2.0])})
    p2 = m.step(p1, {"w": np.array([2.0])})
    np.testing.assert_allclose([p1["w"][0], p2["w"][0]], [2.0, 2.0 + 3.0])
    adam = ServerAdam(0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    q = adam.step(p, {"w": np.array([4.0])})
    m1, v1 = 0.4, 0.01 * 16
    np.testing.assert_allclose(q["w"], [0.1 * m1 / (np.sqrt(v1) + 1e-3)], rtol=1e-6)
    assert p["w"][0] == 0.0  # inputs untouched


def test_running_sum_and_version_store():
    acc = RunningSum()
    acc.add({"x": arr(1.0)}, 1.0)
    acc.add({"x": arr(3.0)}, 3.0)
    assert acc.mean()["x"][0] == pytest.approx(2.5)
    assert acc.mean(denominator=2)["x"][0] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        acc.add({"y": arr(1.0)})

    vs = VersionStore()
    vs.publish(0, {"x": arr(0.0)})
    vs.acquire(0)
    vs.publish(1, {"x": arr(1.0)})
    assert len(vs) == 2  # version 0 still referenced by a client in flight
    vs.release(0)
    assert len(vs) == 1
    with pytest.raises(KeyError, match="no longer held"):
        vs.get(0)


def test_pseudo_gradient_sign():
    delta = {"w": arr(1.0, -2.0)}  # w_after - w_before
    np.testing.assert_array_equal(to_pseudo_gradient(delta)["w"], arr(-1.0, 2.0))
