"""The client side of one dispatch: decode the model, train locally, encode the delta.

``LocalTrainer`` is plain local SGD on a shard; ``ClientRunner`` adds the client's codec streams
(downlink decoder, uplink encoder) and returns a transport-level ``ClientResult``. The runner is
clock-agnostic: it reports measured wall seconds and byte counts, transports turn them into time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpress.codec.errors import CodecError
from fedpress.transport.base import ClientResult

from .codec_adapter import (
    CodecSpec,
    decode_update,
    decoder_state,
    encode_update,
    load_decoder_state,
    make_decoder,
    make_encoder,
)
from .params import get_params, num_bytes, set_params
from .types import Tensors


@dataclass(frozen=True)
class TrainSpec:
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    local_epochs: int = 1
    local_steps: int | None = None  # when set, replaces epochs: this many minibatches


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, client, round), independent of call order."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class LocalTrainer:
    """Local SGD on shards of one dataset; one module is reused by every client of a process."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.spec = spec
        self.loss_fn = nn.CrossEntropyLoss()
        # one optimizer for every client; its state (momentum) is cleared per dispatch
        self.opt = torch.optim.SGD(
            model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )

    def _batches(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        bs = self.spec.batch_size
        if self.spec.local_steps is None:
            out: list[np.ndarray] = []
            for _ in range(self.spec.local_epochs):
                perm = indices[rng.permutation(len(indices))]
                out.extend(perm[i : i + bs] for i in range(0, len(perm), bs))
            return out
        out = []
        while len(out) < self.spec.local_steps:
            perm = indices[rng.permutation(len(indices))]
            out.extend(perm[i : i + bs] for i in range(0, len(perm), bs))
        return out[: self.spec.local_steps]

    def train(self, params: Tensors, indices: np.ndarray, seed: int) -> tuple[Tensors, int, dict]:
        """Train from ``params`` on ``indices``; returns ``(delta, samples processed, metrics)``
        with ``delta = w_after - w_before``."""
        if len(indices) == 0:
            return {k: np.zeros_like(v) for k, v in params.items()}, 0, {}
        set_params(self.model, params)
        self.model.train()
        # CPU generator only: torch.manual_seed also queues accelerator seeding (slow, per call)
        torch.random.default_generator.manual_seed(seed)
        rng = np.random.default_rng(seed)
        opt = self.opt
        opt.state.clear()
        loss_sum, correct, seen = 0.0, 0, 0
        for b in self._batches(np.asarray(indices), rng):
            if len(b) == 1 and self.spec.batch_size > 1 and len(indices) > 1:
                continue  # a one-sample remainder batch: BatchNorm cannot normalise it
            idx = torch.from_numpy(b)
            xb, yb = self.x[idx], self.y[idx]
            opt.zero_grad(set_to_none=True)
            out = self.model(xb)
            loss = self.loss_fn(out, yb)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(b)
            correct += int((out.detach().argmax(1) == yb).sum())
            seen += len(b)
        after = get_params(self.model)
        delta = {k: (after[k] - params[k]).astype(params[k].dtype, copy=False) for k in params}
        n = max(seen, 1)
        return delta, seen, {"train_loss": loss_sum / n, "train_accuracy": correct / n}


def planned_samples(num_indices: int, spec: TrainSpec) -> int:
    """Training samples one :meth:`LocalTrainer.train` call processes on a shard of
    ``num_indices``, known before it runs (what compute time is charged for; a scheduler needs
    it up front). Whole epochs, or the first ``local_steps`` minibatches of repeated epochs, whose
    sizes do not depend on the shuffle; a one-sample remainder batch is skipped, as in training."""
    n, bs = num_indices, spec.batch_size
    if n == 0:
        return 0
    rest = n % bs
    sizes = [bs] * (n // bs) + ([rest] if rest else [])
    counted = [0 if (s == 1 and bs > 1 and n > 1) else s for s in sizes]
    if spec.local_steps is None:
        return spec.local_epochs * sum(counted)
    full, part = divmod(spec.local_steps, len(sizes))
    return full * sum(counted) + sum(counted[:part])


#: ``hook(client_id, base_version, delta) -> delta to send``: sees every client delta
#: (``w_after - w_before``) before encoding, e.g. to record traces or to perturb the uplink.
UplinkHook = Callable[[int, int, Tensors], Tensors]


class ClientRunner:
    """One client: its shard, its downlink decoder and uplink encoder (streams ``c{id}/...``),
    and an optional :data:`UplinkHook` between training and encoding."""

    def __init__(
        self,
        client_id: int,
        trainer: LocalTrainer,
        indices: np.ndarray,
        uplink: CodecSpec | None,
        seed: int,
        hook: UplinkHook | None = None,
    ) -> None:
        self.client_id = client_id
        self.trainer = trainer
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed = seed
        self.hook = hook
        self.rounds = 0
        self.decoder = make_decoder()
        self.encoder = make_encoder(uplink, stream_id=f"c{client_id}/up")

    def state_dict(self) -> dict[str, Any]:
        """Round counter and both stream states (checkpointing; arrays and plain types)."""
        return {"rounds": self.rounds, "encoder": self.encoder.state_dict(),
                "decoder": decoder_state(self.decoder)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.rounds = int(sd["rounds"])
        self.encoder.load_state_dict(sd["encoder"])
        load_decoder_state(self.decoder, sd["decoder"])

    def run(self, payload: bytes, version: int, keyframe: bool = False) -> ClientResult:
        """Decode the model, train, encode the delta; ``keyframe`` resets the uplink stream
        first (the server lost track of it), so this result decodes from scratch."""
        if keyframe:
            self.encoder.reset()
        params, dec_s = decode_update(self.decoder, payload)
        t0 = time.perf_counter()
        seed = derive_seed(self.seed, self.client_id, self.rounds)
        delta, samples, metrics = self.trainer.train(params, self.indices, seed)
        train_s = time.perf_counter() - t0
        if self.hook is not None:
            delta = self.hook(self.client_id, version, delta)
        try:
            up, stats = encode_update(self.encoder, delta)
        except CodecError:
            # e.g. a diverged client (NaN) on a lossy link: send it raw so the server can see
            # and reject it; the stream's state is untouched (encoding is atomic)
            up, stats = encode_update(make_encoder(None, ""), delta)
            metrics = {**metrics, "encode_failed": 1.0}
        self.rounds += 1
        return ClientResult(
            client_id=self.client_id,
            base_version=version,
            payload=up,
            num_samples=len(self.indices),
            samples=samples,
            raw_bytes_down=num_bytes(params),
            raw_bytes_up=stats.raw_bytes,
            metrics=metrics,
            timings={"wall_decode_s": dec_s, "wall_train_s": train_s, "wall_encode_s": stats.seconds},
        )
