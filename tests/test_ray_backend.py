"""The Ray backend: same run as in-process (log, bytes, model), faults survived, its arithmetic.

Ray runs here share one local instance (2 CPUs, small object store) for the module; each run
starts a two-actor pool, so the file costs a few actor start-ups (seconds each on an idle
machine). The multi-process cluster test is in ``test_ray_cluster.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import pytest
import torch
from test_fl_support import digits_inputs, quick_config
from torch import nn

from fedpress.backends.config import SimulationConfig
from fedpress.backends.ray_transport import lower_bound, pool_size, samples_per_dispatch
from fedpress.config import ConfigError, load_config
from fedpress.experiment.build import build_server
from fedpress.experiment.run import torch_threads
from fedpress.fl.client import LocalTrainer, TrainSpec
from fedpress.fl.params import get_params
from fedpress.metrics.events import EventLog, strip_wall
from fedpress.transport.sim import ClientProfile, round_trip

# -- arithmetic (no Ray needed) ------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 16, 33])
@pytest.mark.parametrize("steps,epochs", [(None, 1), (None, 2), (1, 1), (3, 1), (5, 1)])
def test_samples_per_dispatch_matches_the_trainer(n, steps, epochs):
    spec = TrainSpec(lr=0.1, batch_size=8, local_epochs=epochs, local_steps=steps)
    x = torch.randn(40, 4)
    y = torch.randint(0, 3, (40,))
    trainer = LocalTrainer(nn.Linear(4, 3), x, y, spec)
    params = get_params(trainer.model)
    _, samples, _ = trainer.train(params, np.arange(n), seed=1)  # the real trainer counts
    assert samples_per_dispatch(n, spec) == samples


def test_lower_bound_never_exceeds_the_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = ClientProfile(0, *rng.uniform([1e-5, 0.1, 0.1, 0.0], [1e-2, 100, 100, 0.5]))
        down, up, samples = (int(v) for v in rng.integers(0, 10**6, 3))
        rt = round_trip(
            p, bytes_down=down, bytes_up=up, samples=samples, decode_s=0.0, encode_s=0.0
        )
        assert lower_bound(p, down, samples) <= rt["total_s"] * (1 + 1e-12)
        # and it is tight: nothing but the upload's bytes is left out
        assert rt["total_s"] - lower_bound(p, down, samples) == pytest.approx(
            up * 8 / (p.up_mbps * 1e6)
        )


def test_pool_size_fits_the_cluster_and_refuses_what_cannot_be_placed():
    sim = SimulationConfig(backend="ray", num_cpus=0.5)
    assert pool_size(sim, 100, {"CPU": 2.0}) == 4
    assert pool_size(sim, 3, {"CPU": 2.0}) == 3
    with pytest.raises(ValueError, match="num_actors=5 does not fit"):
        pool_size(SimulationConfig(backend="ray", num_actors=5), 10, {"CPU": 2.0})
    with pytest.raises(ValueError, match="cannot hold one client"):
        pool_size(SimulationConfig(backend="ray", num_gpus=1), 10, {"CPU": 2.0})


def test_simulation_section_is_validated_with_its_key_path():
    cfg = load_config(
        {"run": {"rounds": 1}}, ["simulation.backend=ray", "simulation.num_cpus=0.25"]
    )
    assert cfg.simulation.backend == "ray" and cfg.simulation.num_cpus == 0.25
    with pytest.raises(ConfigError, match=r"simulation\.on_failure"):
        load_config({"run": {"rounds": 1}}, ["simulation.on_failure=ignore"])
    with pytest.raises(
        ConfigError, match=r"simulation\.numcpus: unknown key \(allowed: .*num_cpus"
    ):
        load_config({"run": {"rounds": 1}}, ["simulation.numcpus=1"])
    with pytest.raises(ConfigError, match="ray_address is set but backend"):
        load_config({"run": {"rounds": 1}}, ["simulation.ray_address=localhost:6379"])


def test_missing_ray_is_a_one_line_config_error(monkeypatch):
    import sys

    from fedpress.backends.ray_transport import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ValueError, match=r"needs Ray: pip install 'fedpress\[ray\]'"):
        import_ray()


# -- runs on a local Ray instance ----------------------------------------------------------

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 1024**2,
        include_dashboard=False,
        logging_level="WARNING",
    )
    yield
    ray.shutdown()


@functools.lru_cache(maxsize=1)
def wide_inputs():
    """Digits with a hidden layer of 32: a 64x32 weight (2048 values) is big enough to go
    through the lossy, stateful ``grad`` codec (tensors of <= 1024 values go lossless)."""

    def model_fn() -> nn.Module:  # nested: Ray ships it to the actors by value
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    return dataclasses.replace(digits_inputs(), model_fn=model_fn)


def run(cfg, prepare=None, inputs=None):
    """Run ``cfg``; returns (events without wall fields, final params, sha256 of every
    uplink payload in arrival order, the transport's counters). ``prepare(server)`` runs
    before the loop starts (fault injection)."""
    log = EventLog(None, cfg.run.target_accuracy)
    events = []
    write = log.write

    def record(event, **fields):
        rec = write(event, **fields)
        events.append(strip_wall(rec))
        return rec

    log.write = record
    with torch_threads(1):
        server = build_server(cfg, inputs or digits_inputs(), log)
        hashes = []
        next_event = server.transport.next_event

        def spy(deadline=None):
            ev = next_event(deadline)
            if ev is not None:
                hashes.append(hashlib.sha256(ev.result.payload).hexdigest())
            return ev

        server.transport.next_event = spy
        if prepare is not None:
            prepare(server)
        server.run()
    return events, server.params, hashes, getattr(server.transport, "stats", dict)()


def assert_same_run(a, b):
    ev_a, params_a, bytes_a, _ = a
    ev_b, params_b, bytes_b, _ = b
    assert len(ev_a) == len(ev_b)
    for i, (x, y) in enumerate(zip(ev_a, ev_b, strict=True)):
        assert x == y, f"event {i} differs"
    assert bytes_a == bytes_b
    assert params_a.keys() == params_b.keys()
    for k in params_a:
        np.testing.assert_array_equal(params_a[k], params_b[k])


def dispatches(events):
    """(client, round) of every dispatch in order, the round counting that client's dispatches."""
    seen: dict[int, int] = {}
    out = []
    for e in events:
        if e["event"] == "dispatch":
            c = e["client"]
            out.append((c, seen.get(c, 0)))
            seen[c] = seen.get(c, 0) + 1
    return out


@pytest.mark.parametrize(
    "strategy,codec", [("fedavg", "grad"), ("fedasync", "sz3")], ids=["fedavg-grad", "fedasync-sz3"]
)
def test_ray_gives_the_inprocess_run(local_ray, strategy, codec):
    """Same event log (wall fields aside), same uplink bytes, same final model as in-process;
    a stateful lossy codec (grad) checks the clients' streams stay on their actor."""
    limit = "strategy__clients_per_round" if strategy == "fedavg" else "strategy__max_in_flight"
    kw = {"codec__name": codec, "run__max_updates": 24, limit: 4}
    inproc = run(quick_config(strategy, **kw), inputs=wide_inputs())
    on_ray = run(quick_config(strategy, **kw, simulation__backend="ray"), inputs=wide_inputs())
    assert_same_run(inproc, on_ray)
    assert on_ray[3]["dispatches"] > 0 and on_ray[3]["actors"] == 2
    arrivals = [e for e in on_ray[0] if e["event"] == "arrival"]
    assert arrivals and all(e["status"] == "accepted" for e in arrivals)
    # the lossy codec really ran on the 64x32 weight (not only the lossless small-tensor path)
    assert all(e["bytes_up"] < 0.6 * e["raw_bytes_up"] for e in arrivals)
    if strategy == "fedavg":
        # one object-store put per global version, not per client
        assert on_ray[3]["puts"] < on_ray[3]["dispatches"]


def test_killed_actors_are_restarted_and_the_work_retried(local_ray):
    """Workers die (os._exit) on two dispatches; Ray restarts them, the lost work is re-run
    and the run is still exactly the in-process one (a stateless codec re-sends the same bytes)."""
    kw = {"codec__name": "sz3", "run__max_updates": 16, "strategy__max_in_flight": 4}
    inproc = run(quick_config("fedasync", **kw))
    order = dispatches(inproc[0])
    again = next(d for d in order if d[1] == 1)  # some client's second dispatch
    crash = {order[0], again}

    def inject(server):
        server.transport.crash_on = set(crash)

    cfg = quick_config("fedasync", **kw, simulation__backend="ray", simulation__max_retries=2)
    on_ray = run(cfg, inject)
    # each crash loses its own dispatch and whatever else was queued on that actor
    assert on_ray[3]["retries"] >= len(crash) and on_ray[3]["failed"] == 0
    assert_same_run(inproc, on_ray)


def test_fail_policy_reports_the_client_and_the_run_goes_on(local_ray):
    """``on_failure: fail``: a dispatch lost with its actor comes back as a rejected update
    marked ``client_failed``; the restarted actor rebuilds its other clients' grad streams
    (keyframe at the expected position) and their updates are still accepted."""
    kw = {"codec__name": "grad", "run__max_updates": 16, "strategy__max_in_flight": 4}
    cfg = quick_config("fedasync", **kw, simulation__backend="ray", simulation__on_failure="fail")
    order = dispatches(run(quick_config("fedasync", **kw), inputs=wide_inputs())[0])
    again = next(d for d in order if d[1] == 1)

    def inject(server):
        server.transport.crash_on = {again}

    events, _, _, stats = run(cfg, inject, wide_inputs())
    arrivals = [e for e in events if e["event"] == "arrival"]
    failed = [e for e in arrivals if e.get("client_failed") == 1.0]
    assert stats["failed"] >= 1 and len(failed) == stats["failed"] and stats["retries"] == 0
    assert any(e["client"] == again[0] for e in failed)
    assert all(e["status"] == "rejected" for e in failed)
    assert all(e["status"] == "accepted" for e in arrivals if e.get("client_failed") is None)
    assert events[-1]["event"] == "end" and events[-1]["reason"] == "max_updates"


@pytest.mark.slow
def test_a_lost_downlink_stream_fails_the_client_not_the_run(local_ray):
    """A stateful downlink codec: a client rebuilt after a crash cannot decode the server's
    delta-coded model; it is reported failed (``client_failed_lost_stream_state``) and the run
    still ends by its stop rule."""
    kw = {"codec__name": "grad", "codec__downlink__name": "grad", "run__max_updates": 16,
          "strategy__max_in_flight": 4}
    order = dispatches(run(quick_config("fedasync", **kw), inputs=wide_inputs())[0])
    again = next(d for d in order if d[1] == 1)

    def inject(server):
        server.transport.crash_on = {again}

    cfg = quick_config("fedasync", **kw, simulation__backend="ray")
    events, _, _, stats = run(cfg, inject, wide_inputs())
    lost = [e for e in events if e.get("client_failed_lost_stream_state") == 1.0]
    assert stats["retries"] >= 1 and lost and len(lost) <= stats["failed"]
    assert all(e["status"] == "rejected" for e in lost)
    assert events[-1]["event"] == "end" and events[-1]["reason"] == "max_updates"
