"""Assemble a simulated federation from a config and in-memory data: clients, profiles,
in-process transport, strategy, evaluator and the server loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpress.fl.client import ClientRunner, LocalTrainer, TrainSpec, UplinkHook
from fedpress.fl.codec_adapter import CodecSpec
from fedpress.fl.evaluate import Evaluator
from fedpress.fl.params import get_params
from fedpress.fl.profiles import make_profiles
from fedpress.fl.server import Server, StopRule
from fedpress.fl.strategies import build_strategy
from fedpress.fl.timing import TimingModel
from fedpress.metrics.events import EventLog
from fedpress.transport.base import Transport
from fedpress.transport.inprocess import InProcessTransport


@dataclass
class SimulationInputs:
    """Data and model factory of one experiment; ``parts[i]`` are client i's train indices."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    parts: Sequence[np.ndarray]
    model_fn: Callable[[], nn.Module]


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def codec_spec(c: Any) -> CodecSpec | None:
    return None if c is None else CodecSpec(c.name, c.mode, c.eb)


def build_server(
    cfg: Any,
    inputs: SimulationInputs,
    log: EventLog | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    uplink_hook: UplinkHook | None = None,
) -> Server:
    """A ready-to-run :class:`Server` for an ``ExperimentConfig``; weights seeded by run.seed.
    ``uplink_hook`` sees (and may replace) every client delta before it is encoded."""
    seed = cfg.run.seed
    n = len(inputs.parts)
    torch.manual_seed(seed)
    params = get_params(inputs.model_fn())
    t = cfg.train
    spec = TrainSpec(t.lr, t.momentum, t.wd, t.batch, t.local_epochs, t.local_steps)
    uplink = codec_spec(cfg.codec)
    parts = inputs.parts
    timing = TimingModel.for_links(
        cfg.clients.timing, uplink, codec_spec(cfg.codec.downlink), cfg.clients.codec_mb_per_s
    )
    profiles = make_profiles(n, cfg.clients, seed)
    transport: Transport
    if cfg.simulation.backend == "ray":  # ray is an optional extra: imported only when chosen
        from fedpress.backends.ray_transport import RayTransport

        if uplink_hook is not None:
            raise ValueError("an uplink hook (trace recording) runs in-process only")

        transport = RayTransport.from_inputs(
            cfg.simulation, inputs, spec, uplink, seed, profiles, timing, cfg.run.torch_threads
        )
    else:
        trainer = LocalTrainer(
            inputs.model_fn(), _tensor(inputs.train_x), _tensor(inputs.train_y), spec
        )

        def client(cid: int) -> ClientRunner:
            return ClientRunner(cid, trainer, parts[cid], uplink, seed, uplink_hook)

        transport = InProcessTransport(client, profiles, timing)
    evaluator = Evaluator(
        inputs.model_fn(), _tensor(inputs.test_x), _tensor(inputs.test_y), cfg.run.eval_batch
    )
    r = cfg.run
    stop = StopRule(r.max_updates, r.rounds, r.max_sim_time, r.target_accuracy, r.stop_at_target)
    return Server(
        build_strategy(cfg.strategy, n),
        transport,
        params,
        [len(p) for p in parts],
        stop,
        log=log,
        evaluator=evaluator,
        eval_every=r.eval_every,
        eval_every_time=r.eval_every_time,
        downlink=codec_spec(cfg.codec.downlink),
        timing=timing,
        seed=seed,
        on_progress=on_progress,
        uplink=uplink,
    )
