"""The Ray actor that hosts simulated clients: model and data loaded once, many clients' runners.

An actor is a long-lived worker process. It builds one :class:`~fedpress.fl.client.LocalTrainer`
(model + the whole train split, shared zero-copy from the object store) and keeps one
:class:`~fedpress.fl.client.ClientRunner` per client routed to it, so a client's codec streams
live in one place and its dispatches run in order. This module imports no Ray: the transport
wraps the class with ``ray.remote`` (keeping the actor testable as a plain object).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedpress.codec.errors import CodecError
from fedpress.fl.client import ClientRunner, LocalTrainer, TrainSpec
from fedpress.fl.codec_adapter import CodecSpec
from fedpress.transport.base import ClientResult


@dataclass(frozen=True)
class ClientRecipe:
    """Everything but the data that an actor needs to build the same clients as in-process."""

    model_fn: Callable[[], nn.Module]
    spec: TrainSpec
    uplink: CodecSpec | None
    seed: int
    threads: int | None = 1


class ClientPool:
    """Runs dispatches for the clients routed to it (``client_id % pool size`` on the driver).

    The driver passes each dispatch's ``rounds`` (results the client has returned) and
    ``up_seq`` (its uplink stream position): after a restart the actor has lost its runners, and
    these let a rebuilt runner continue with the same training seed and a keyframe at the
    stream position the server expects.
    """

    def __init__(
        self,
        recipe: ClientRecipe,
        train_x: np.ndarray,
        train_y: np.ndarray,
        parts: Sequence[np.ndarray],
    ) -> None:
        import torch

        if recipe.threads is not None:
            torch.set_num_threads(recipe.threads)
        with warnings.catch_warnings():
            # object-store arrays are read-only; the trainer only indexes (copies) them
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(train_x)
            y = torch.from_numpy(train_y)
        self.recipe = recipe
        self.trainer = LocalTrainer(recipe.model_fn(), x, y, recipe.spec)
        self.parts = parts
        self.runners: dict[int, ClientRunner] = {}
        self.restored = 0  # runners rebuilt from the driver's account (after a restart)
        self._unsynced: set[int] = set()  # rebuilt clients that have not run successfully yet

    def _runner(self, client_id: int, rounds: int, up_seq: int) -> ClientRunner:
        r = self.runners.get(client_id)
        if r is None:
            r = ClientRunner(
                client_id, self.trainer, self.parts[client_id], self.recipe.uplink, self.recipe.seed
            )
            self.runners[client_id] = r
        if r.rounds != rounds:
            # a rebuilt client: same seed sequence; its uplink restarts from a keyframe at the
            # position the server's decoder expects (a stateless codec sends the same bytes)
            r.rounds = rounds
            enc = r.encoder
            if hasattr(enc, "reset"):
                enc.reset()
                enc.seq = up_seq  # type: ignore[attr-defined]
            self.restored += 1
            self._unsynced.add(client_id)
        return r

    def run(
        self,
        client_id: int,
        payload: bytes,
        version: int,
        rounds: int,
        up_seq: int,
        keyframe: bool = False,
        crash: bool = False,
    ) -> tuple[ClientResult | None, int]:
        """One dispatch; returns the result and the client's uplink stream position after it.

        The result is None when a rebuilt client cannot decode its model: a stateful downlink
        stream lost with the old process (the driver reports the client failed).

        ``keyframe`` is the server's request to restart the uplink stream (transport contract);
        ``crash`` ends this worker process at once (fault injection for tests and drills)."""
        if crash:
            os._exit(1)
        runner = self._runner(client_id, rounds, up_seq)
        try:
            result = runner.run(payload, version, keyframe=keyframe)
        except CodecError:
            if client_id not in self._unsynced:
                raise  # the client's own error, as in-process
            return None, up_seq
        self._unsynced.discard(client_id)
        return result, int(getattr(runner.encoder, "seq", 0))

    def info(self) -> dict[str, int | str]:
        """Node, process id, hosted clients and restored runners (tests and benchmarks)."""
        import ray  # only ever called inside a Ray worker

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "clients": len(self.runners),
            "restored": self.restored,
        }
