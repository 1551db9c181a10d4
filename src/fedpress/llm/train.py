"""Local LoRA training and LM evaluation on one shared model (memory flat in the clients).

:class:`LMTrainer` satisfies the engine's trainer contract (``train(params, indices, seed) ->
(delta, samples, metrics)``), so the engine's own ``ClientRunner`` drives it: one ``peft`` model
per process, adapters swapped in and out per dispatch. :class:`ClientLM` binds a client's
held-out split so each client reports local metrics with its own freshly trained adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedpress.fl.types import Tensors

from .lora import get_adapter, set_adapter
from .tasks import TaskItem, evaluate_task


@dataclass(frozen=True)
class LMTrainSpec:
    """AdamW local training: ``local_steps`` minibatches of ``batch`` samples per dispatch."""

    lr: float = 1e-3
    batch: int = 4
    local_steps: int = 8
    wd: float = 0.0
    grad_clip: float | None = 1.0


def collate(seqs: Sequence[np.ndarray], starts: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on padding and on tokens before each ``start``."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        t = torch.from_numpy(np.asarray(s, dtype=np.int64))
        ids[i, : len(s)] = t
        mask[i, : len(s)] = 1
        labels[i, int(st) : len(s)] = t[int(st) :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over scored labels, and their count."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.float()
    # shift the labels, not the logits: a view of the logits, no copy of batch x seq x vocab
    target = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, int((target != -100).sum())


class LMTrainer:
    """Trains and evaluates adapters of one shared ``peft`` model on a tokenised corpus."""

    def __init__(self, model: Any, tok: Any, ids: Sequence[np.ndarray], loss_start: Sequence[int],
                 spec: LMTrainSpec, eval_batch: int = 8) -> None:
        self.model = model
        self.tok = tok
        self.ids = list(ids)
        self.loss_start = np.asarray(loss_start, dtype=np.int64)
        self.spec = spec
        self.eval_batch = eval_batch
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def batches(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """``local_steps`` minibatches, cycling through shuffled passes over ``indices``."""
        out: list[np.ndarray] = []
        bs = min(self.spec.batch, len(indices))
        while len(out) < self.spec.local_steps:
            perm = indices[rng.permutation(len(indices))]
            out += [perm[i : i + bs] for i in range(0, len(perm) - bs + 1, bs)]
        return out[: self.spec.local_steps]

    def train(self, params: Tensors, indices: np.ndarray, seed: int) -> tuple[Tensors, int, dict]:
        """Load the adapter ``params``, train locally; returns ``(delta, samples, metrics)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return {k: np.zeros_like(v) for k, v in params.items()}, 0, {}
        set_adapter(self.model, params)
        before = get_adapter(self.model)
        self.model.train()
        torch.random.default_generator.manual_seed(seed)
        rng = np.random.default_rng(seed)
        opt = torch.optim.AdamW(self.trainable, lr=self.spec.lr, weight_decay=self.spec.wd)
        loss_sum, scored, samples, tokens = 0.0, 0, 0, 0
        for b in self.batches(indices, rng):
            batch = collate([self.ids[i] for i in b], self.loss_start[b], self.pad_id)
            opt.zero_grad(set_to_none=True)
            loss, n = token_nll(self.model, batch)
            (loss / max(n, 1)).backward()
            if self.spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.grad_clip)
            opt.step()
            loss_sum += float(loss.detach())
            scored += n
            samples += len(b)
            tokens += int(batch["attention_mask"].sum())
        self.model.eval()
        after = get_adapter(self.model)
        delta = {k: after[k] - before[k] for k in before}
        return delta, samples, {"train_loss": loss_sum / max(scored, 1), "train_tokens": float(tokens)}

    @torch.no_grad()
    def lm_metrics(self, seqs: Sequence[np.ndarray], starts: Sequence[int] | None = None) -> dict[str, float]:
        """Token-weighted mean loss and perplexity of the current model on ``seqs``."""
        if not len(seqs):
            return {"loss": float("nan"), "perplexity": float("nan"), "eval_tokens": 0.0}
        starts = np.zeros(len(seqs), np.int64) if starts is None else np.asarray(starts)
        order = np.argsort([len(s) for s in seqs])
        self.model.eval()
        total, count = 0.0, 0
        for i in range(0, len(order), self.eval_batch):
            b = order[i : i + self.eval_batch]
            loss, n = token_nll(self.model, collate([seqs[j] for j in b], starts[b], self.pad_id))
            total += float(loss)
            count += n
        mean = total / max(count, 1)
        return {"loss": mean, "perplexity": float(np.exp(min(mean, 50.0))), "eval_tokens": float(count)}

    def sample_nll(self, indices: Sequence[int]) -> np.ndarray:
        """Mean token NLL of each sample under the current model (quality way 2: log-perplexity)."""
        out = np.empty(len(indices))
        for j, i in enumerate(indices):
            out[j] = self.lm_metrics([self.ids[i]], [0])["loss"]
        return out


def truncate_rank(params: Tensors, rank: int) -> Tensors:
    """Keep the first ``rank`` LoRA components (rows of A, columns of B), zero the rest.

    Zeroed components stay zero under local training (their gradients vanish: each is the other
    factor's zeros), so a client of rank ``rank`` trains a rank-``rank`` adapter inside the global
    shapes; with ``svd``/``stack`` aggregation the first components are the largest.
    """
    out = {}
    for k, v in params.items():
        w = np.array(v, copy=True)
        if k.endswith("lora_A"):
            w[rank:, :] = 0
        elif k.endswith("lora_B"):
            w[:, rank:] = 0
        out[k] = w
    return out


class ClientLM:
    """One client's view of the shared trainer: train (at its own rank), then score its own
    held-out split."""

    def __init__(self, trainer: LMTrainer, heldout: np.ndarray, items: Sequence[TaskItem | None],
                 task_eval: dict[str, Any] | None = None, rank: int | None = None) -> None:
        self.trainer = trainer
        self.heldout = np.asarray(heldout, dtype=np.int64)
        self.items = [items[i] for i in self.heldout if items[i] is not None]
        self.task_eval = task_eval
        self.rank = rank

    def train(self, params: Tensors, indices: np.ndarray, seed: int) -> tuple[Tensors, int, dict]:
        start = params if self.rank is None else truncate_rank(params, self.rank)
        delta, samples, metrics = self.trainer.train(start, indices, seed)
        if start is not params:  # the delta is taken against what the server sent
            delta = {k: (start[k] + delta[k] - params[k]).astype(np.float32) for k in delta}
        if len(self.heldout):
            t = self.trainer
            lm = t.lm_metrics([t.ids[i] for i in self.heldout], t.loss_start[self.heldout])
            metrics.update(local_loss=lm["loss"], local_perplexity=lm["perplexity"])
        if self.items and self.task_eval is not None:
            acc = evaluate_task(self.trainer.model, self.trainer.tok, self.items, **self.task_eval)
            metrics.update(local_acc_format=acc["acc_format"], local_acc_content=acc["acc_content"])
        return delta, samples, metrics
