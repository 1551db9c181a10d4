"""A checkpointed server, restored into a fresh one, continues exactly like an uninterrupted run
(every strategy, stateful codec streams both ways, server-optimizer moments)."""

from __future__ import annotations

import dataclasses
import json

import msgpack
import numpy as np
import pytest
from test_fl_support import digits_inputs, quick_config

from fedpress.experiment.build import build_server
from fedpress.fl.checkpoint import join_arrays, split_arrays
from fedpress.metrics.events import EventLog, strip_wall
from fedpress.models import build_model


class RecordingLog(EventLog):
    def __init__(self) -> None:
        super().__init__(None)
        self.events: list[dict] = []

    def write(self, event, **fields):
        rec = super().write(event, **fields)
        self.events.append(strip_wall(rec))
        return rec


def _inputs():
    return dataclasses.replace(digits_inputs(clients=4), model_fn=lambda: build_model("mlp", 1, 10, 8))


CASES = {
    "fedavg-adam": ("fedavg", ["strategy.server_opt.name=adam", "strategy.clients_per_round=3"]),
    "fedasync": ("fedasync", ["strategy.staleness.fn=polynomial"]),
    "fedbuff-momentum": ("fedbuff", ["strategy.server_opt.name=momentum"]),
    "fedfa-model": ("fedfa", []),
}


def _config(case: str):
    name, extra = CASES[case]
    cfg = quick_config(name, clients=4, run__max_updates=14, run__eval_every=3,
                       codec__name="grad", codec__eb=0.05, clients__codec_mb_per_s=100)
    from fedpress.config import load_config

    return load_config(cfg, [*extra, "codec.downlink.name=grad", "codec.downlink.eb=0.01"])


def _through_plain_bytes(sd: dict) -> dict:
    """What a checkpoint writer does: arrays apart (safetensors), the rest JSON/msgpack."""
    arrays, skel = split_arrays(sd)
    skel = json.loads(json.dumps(skel))
    arrays = msgpack.unpackb(msgpack.packb({k: (v.dtype.str, list(v.shape), v.tobytes())
                                            for k, v in arrays.items()}))
    arrays = {k: np.frombuffer(b, dtype=np.dtype(dt)).reshape(shape) for k, (dt, shape, b) in arrays.items()}
    return join_arrays(arrays, skel)


@pytest.mark.parametrize("case", sorted(CASES))
def test_restore_continues_like_an_uninterrupted_run(case):
    cfg, inputs = _config(case), _inputs()
    full_log = RecordingLog()
    full = build_server(cfg, inputs, full_log)
    full.run()

    log_a = RecordingLog()
    a = build_server(cfg, inputs, log_a)
    a.start()
    for _ in range(7):
        assert a.step() is None
    server_sd = _through_plain_bytes(a.state_dict())
    transport_sd = _through_plain_bytes(a.transport.state_dict())
    assert log_a.events == full_log.events[: len(log_a.events)]

    log_b = RecordingLog()
    b = build_server(cfg, inputs, log_b)
    b.load_state_dict(server_sd)
    b.transport.load_state_dict(transport_sd)
    b.run()
    assert log_b.events == full_log.events[len(log_a.events):]
    for k, v in full.params.items():
        np.testing.assert_array_equal(b.params[k], v)
    assert b.version == full.version and b.updates == full.updates


def test_checkpoint_refuses_another_strategy():
    inputs = _inputs()
    a = build_server(_config("fedbuff-momentum"), inputs)
    b = build_server(_config("fedfa-model"), inputs)
    with pytest.raises(ValueError, match="strategy"):
        b.load_state_dict(a.state_dict())
