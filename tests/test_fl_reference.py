"""Every strategy against reference formulas written here, independently of the engine, over
several steps on random multi-tensor inputs; plus the checks that catch the mutants of issue 11
(FedAvg's cohort check, Adam forgetting its moments, an off-by-one in the server's staleness).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_fl_support import digits_inputs, quick_config

from fedpress.experiment.build import build_server
from fedpress.fl.context import ServerContext
from fedpress.fl.server_opt import make_server_optimizer
from fedpress.fl.staleness import get_staleness
from fedpress.fl.strategies import FedAsync, FedAvg, FedBuff, FedFa
from fedpress.fl.types import GlobalState, Update
from fedpress.fl.versions import VersionStore
from fedpress.metrics.events import EventLog

SHAPES = {"conv.weight": (4, 3, 3), "fc.weight": (5, 7), "fc.bias": (5,)}
STEPS = 5


def rand_tensors(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}


def make_ctx(params: dict, num_clients: int, seed: int = 0) -> ServerContext:
    vs = VersionStore(keep_old=True)
    vs.publish(0, params)
    return ServerContext(GlobalState(params, 0), [1] * num_clients, np.random.default_rng(seed), vs)


def publish(ctx: ServerContext, params: dict) -> None:
    ctx.state.params = params
    ctx.state.version += 1
    ctx.versions.publish(ctx.state.version, params)


# -- reference server optimizers (Reddi et al. 2021, Algorithm 2; FedAvgM) ---------------------
class RefOpt:
    def __init__(self, name: str, eta: float, b1: float, b2: float, tau: float) -> None:
        self.name, self.eta, self.b1, self.b2, self.tau = name, eta, b1, b2, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, w: dict, d: dict) -> dict:
        out = {}
        for k in w:
            dk = d[k].astype(np.float64)
            if self.name == "sgd":
                new = w[k] + self.eta * dk
            elif self.name == "momentum":
                self.m[k] = dk if k not in self.m else self.b1 * self.m[k] + dk
                new = w[k] + self.eta * self.m[k]
            else:
                m0 = self.m.get(k, np.zeros_like(dk))
                v0 = self.v.get(k, np.zeros_like(dk))
                m = self.b1 * m0 + (1 - self.b1) * dk
                if self.name == "adam":
                    v = self.b2 * v0 + (1 - self.b2) * dk**2
                elif self.name == "yogi":
                    v = v0 - (1 - self.b2) * dk**2 * np.sign(v0 - dk**2)
                else:  # adagrad
                    v = v0 + dk**2
                self.m[k], self.v[k] = m, v
                new = w[k] + self.eta * m / (np.sqrt(v) + self.tau)
            out[k] = new.astype(np.float32)
        return out


OPT_PARAMS = {  # explicit, so the reference does not read the engine's defaults
    "sgd": (0.7, 0.0, 0.0, 0.0),
    "momentum": (0.3, 0.9, 0.0, 0.0),
    "adam": (0.01, 0.9, 0.99, 1e-3),
    "yogi": (0.01, 0.9, 0.99, 1e-3),
    "adagrad": (0.01, 0.9, 0.0, 1e-3),
}


def build_opt(name: str):
    eta, b1, b2, tau = OPT_PARAMS[name]
    return make_server_optimizer(name, eta, b1, b2, tau or None)


def ref_staleness(fn: str, a: float, b: float, tau: int) -> float:
    if fn == "constant":
        return 1.0
    if fn == "polynomial":
        return (1.0 + tau) ** (-a)
    if fn == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    return math.exp(-a * tau)


@pytest.mark.parametrize("opt", sorted(OPT_PARAMS))
def test_fedavg_with_each_server_optimizer(opt):
    rng = np.random.default_rng(11)
    n = 6
    w = rand_tensors(rng)
    ctx = make_ctx(w, n)
    s = FedAvg(build_opt(opt), clients_per_round=4)
    ref, ref_w = RefOpt(opt, *OPT_PARAMS[opt]), dict(w)
    for _ in range(STEPS):
        cohort = s.select(ctx, None)
        assert len(cohort) == 4 and len(set(cohort)) == 4
        deltas = {c: rand_tensors(rng, 0.1) for c in cohort}
        sizes = {c: int(rng.integers(1, 100)) for c in cohort}
        for c in cohort:
            assert s.accept(Update(c, ctx.state.version, deltas[c], sizes[c]), ctx)
        assert s.ready(ctx)
        new = s.apply(ctx)
        total = sum(sizes.values())
        mean = {k: sum(sizes[c] / total * deltas[c][k].astype(np.float64) for c in cohort) for k in w}
        ref_w = ref.step(ref_w, mean)
        for k in w:
            np.testing.assert_allclose(new[k], ref_w[k], rtol=2e-6, atol=2e-7, err_msg=f"{opt} {k}")
        publish(ctx, new)


def test_fedavg_refuses_clients_outside_its_cohort():
    """Kills the mutant that deletes the cohort check: an update of the right base version
    from a client that was not drawn must not enter the aggregate."""
    rng = np.random.default_rng(5)
    w = rand_tensors(rng)
    ctx = make_ctx(w, 4)
    s = FedAvg(build_opt("sgd"), clients_per_round=2)
    cohort = s.select(ctx, None)
    outsider = next(c for c in range(4) if c not in cohort)
    deltas = {c: rand_tensors(rng, 0.1) for c in range(4)}
    assert not s.accept(Update(outsider, 0, deltas[outsider], 10), ctx)
    assert s.accept(Update(cohort[0], 0, deltas[cohort[0]], 10), ctx)
    assert not s.accept(Update(cohort[0], 0, deltas[cohort[0]], 10), ctx)  # no second answer
    assert not s.ready(ctx)
    assert s.accept(Update(cohort[1], 0, deltas[cohort[1]], 30), ctx)
    new = s.apply(ctx)
    for k in w:
        want = w[k] + 0.7 * (0.25 * deltas[cohort[0]][k].astype(np.float64) + 0.75 * deltas[cohort[1]][k])
        np.testing.assert_allclose(new[k], want.astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn,a,b", [("constant", 0.5, 4.0), ("polynomial", 0.5, 4.0),
                                    ("hinge", 2.0, 1.0), ("exponential", 0.3, 4.0)])
def test_fedasync_with_each_staleness_function(fn, a, b):
    rng = np.random.default_rng(17)
    w = rand_tensors(rng)
    ctx = make_ctx(w, 8)
    s = FedAsync(alpha=0.6, staleness=get_staleness(fn, a=a, b=b))
    models = {0: dict(w)}
    ctx.versions.acquire(0)  # keep every version for the draws below
    ref_w = {k: v.astype(np.float64) for k, v in w.items()}
    for step in range(STEPS + 2):
        base = int(rng.integers(max(0, step - 3), step + 1))  # a version still held
        tau = ctx.state.version - base
        delta = rand_tensors(rng, 0.1)
        assert s.accept(Update(step % 8, base, delta, 10, staleness=tau), ctx)
        assert s.ready(ctx)
        new = s.apply(ctx)
        at = 0.6 * ref_staleness(fn, a, b, tau)
        ref_w = {k: (1 - at) * ref_w[k] + at * (models[base][k].astype(np.float64) + delta[k])
                 for k in w}
        for k in w:
            np.testing.assert_allclose(new[k], ref_w[k], rtol=2e-6, atol=2e-7, err_msg=f"{fn} {k}")
        ref_w = {k: v.astype(np.float32).astype(np.float64) for k, v in new.items()}
        publish(ctx, new)
        models[ctx.state.version] = new
        ctx.versions.acquire(ctx.state.version)  # keep every version for the draws above


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_fedbuff_with_staleness_and_optimizer(opt):
    rng = np.random.default_rng(23)
    K = 3
    w = rand_tensors(rng)
    ctx = make_ctx(w, 8)
    s = FedBuff(K, build_opt(opt), get_staleness("polynomial", a=0.5))
    ref, ref_w = RefOpt(opt, *OPT_PARAMS[opt]), dict(w)
    buf: list[tuple[float, dict]] = []
    for i in range(K * STEPS):
        tau = int(rng.integers(0, 5))
        delta = rand_tensors(rng, 0.1)
        assert s.accept(Update(i % 8, 0, delta, 10, staleness=tau), ctx)
        buf.append(((1 + tau) ** -0.5, delta))
        assert s.ready(ctx) is (len(buf) == K)
        if len(buf) == K:
            new = s.apply(ctx)
            mean = {k: sum(wt * d[k].astype(np.float64) for wt, d in buf) / K for k in w}
            ref_w = ref.step(ref_w, mean)
            for k in w:
                np.testing.assert_allclose(new[k], ref_w[k], rtol=2e-6, atol=2e-7)
            publish(ctx, new)
            buf = []


@pytest.mark.parametrize("variant", ["model", "delta"])
def test_fedfa_window_both_variants(variant):
    rng = np.random.default_rng(29)
    K = 3
    w = rand_tensors(rng)
    ctx = make_ctx(w, 6)
    s = FedFa(K, variant, build_opt("sgd"))
    models = {0: dict(w)}
    ctx.versions.acquire(0)
    window: list[dict] = []
    cur = dict(w)
    for step in range(K + STEPS):
        base = int(rng.integers(max(0, ctx.state.version - 2), ctx.state.version + 1))
        delta = rand_tensors(rng, 0.1)
        assert s.accept(Update(step % 6, base, delta, 10, staleness=ctx.state.version - base), ctx)
        entry = ({k: models[base][k].astype(np.float64) + delta[k] for k in w}
                 if variant == "model" else delta)
        window = (window + [entry])[-K:]
        assert s.ready(ctx) is (len(window) == K)
        if len(window) < K:
            continue
        new = s.apply(ctx)
        assert not s.ready(ctx)  # one update per arrival
        if variant == "model":
            want = {k: sum(e[k] for e in window) / K for k in w}
        else:
            want = {k: cur[k] + 0.7 * sum(e[k].astype(np.float64) for e in window) / K for k in w}
        for k in w:
            np.testing.assert_allclose(new[k], want[k].astype(np.float32), rtol=2e-6, atol=2e-7)
        publish(ctx, new)
        cur = new
        models[ctx.state.version] = new
        ctx.versions.acquire(ctx.state.version)


def test_adam_keeps_its_moments_between_steps():
    """Kills the mutant that resets Adam's moments: the same delta twice moves the weights
    by the two different amounts the recursion gives, not twice the first."""
    opt = make_server_optimizer("adam", 0.1, 0.9, 0.99, 1e-3)
    w = {"x": np.zeros(3, np.float32)}
    d = {"x": np.array([0.5, -0.2, 0.01])}
    w1 = opt.step(w, d)
    w2 = opt.step(w1, d)
    m1, v1 = 0.1 * d["x"], 0.01 * d["x"] ** 2
    m2, v2 = 0.9 * m1 + 0.1 * d["x"], 0.99 * v1 + 0.01 * d["x"] ** 2
    step1 = 0.1 * m1 / (np.sqrt(v1) + 1e-3)
    step2 = 0.1 * m2 / (np.sqrt(v2) + 1e-3)
    np.testing.assert_allclose(w1["x"], step1, rtol=1e-6)
    np.testing.assert_allclose(w2["x"] - w1["x"], step2, rtol=1e-5)
    assert not np.allclose(step1, step2, rtol=1e-2)


def test_server_staleness_is_versions_published_since_dispatch():
    """Kills an off-by-one in the server's staleness: each arrival's logged staleness must equal
    the number of global updates published between its dispatch and its arrival, counted here
    from the order of events."""
    cfg = quick_config("fedasync", clients=6, strategy__max_in_flight=4, run__max_updates=30)

    class Log(EventLog):
        def __init__(self):
            super().__init__(None)
            self.events = []

        def write(self, event, **f):
            self.events.append({"event": event, **f})
            return super().write(event, **f)

    log = Log()
    build_server(cfg, digits_inputs(clients=6), log).run()
    published = 0
    dispatched_at_count: dict[int, int] = {}
    checked = 0
    taus = []
    for e in log.events:
        if e["event"] == "update":
            published += 1
        elif e["event"] == "dispatch":
            dispatched_at_count[e["client"]] = published
        elif e["event"] == "arrival":
            want = published - dispatched_at_count.pop(e["client"])
            assert e["staleness"] == want, e
            taus.append(want)
            checked += 1
    assert checked == 30 and max(taus) >= 2 and min(taus) == 0
