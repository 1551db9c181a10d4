"""Assemble a federated LoRA run on the engine: the engine's ``ClientRunner``, profiles,
``InProcessTransport``, strategies and ``Server`` (no second loop), with an LM trainer,
the text partition and an evaluator that reports loss, perplexity and task accuracy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpress.experiment.build import codec_spec
from fedpress.fl.client import ClientRunner
from fedpress.fl.profiles import TimingModel, make_profiles
from fedpress.fl.server import Server, StopRule
from fedpress.fl.strategies import build_strategy
from fedpress.fl.types import Tensors
from fedpress.metrics.events import EventLog
from fedpress.transport.inprocess import InProcessTransport

from .codecs import adapter_codecs, adapter_encoder
from .config import LLMConfig
from .corpus import Corpus, build_corpus
from .lora import LoraSpec, adapter_parameters, attach_lora, get_adapter, set_adapter
from .partition import bucketize, partition_text
from .strategy import AdapterStrategy
from .tasks import evaluate_task
from .train import ClientLM, LMTrainer, LMTrainSpec


@dataclass
class LLMInputs:
    """Everything a run needs besides the config: model, tokenizer, corpus and the partition."""

    model: Any
    tok: Any
    corpus: Corpus
    categories: np.ndarray
    parts: list[np.ndarray]
    heldout: list[np.ndarray]


def load_model(cfg: LLMConfig) -> tuple[Any, Any]:
    """The base model and tokenizer of the config (tiny in-code model, embedded or local)."""
    m = cfg.model
    if m.tiny:
        from .models import tiny_causal_lm

        return tiny_causal_lm(seed=cfg.run.seed)
    from .models import load_causal_lm

    return load_causal_lm(m.path, gguf_file=m.gguf_file)


def lora_spec(cfg: LLMConfig) -> LoraSpec:
    m = cfg.model
    return LoraSpec(m.rank, m.alpha, tuple(m.targets), m.dropout, freeze_a=m.aggregation == "frozen_a")


def categories(cfg: LLMConfig, corpus: Corpus, trainer: LMTrainer | None = None) -> np.ndarray:
    """Per-sample category for the skew: length bucket, corruption tier or perplexity bin."""
    d = cfg.data
    if d.skew == "length":
        return bucketize(corpus.lengths, d.length_buckets)
    if d.skew == "quality":
        if d.quality == "tier":
            return corpus.tier.copy()
        if trainer is None:
            raise ValueError("quality=perplexity needs the base model to score samples")
        return bucketize(trainer.sample_nll(range(len(corpus))), len(d.rates))
    return np.zeros(len(corpus), np.int64)


def split_heldout(parts: list[np.ndarray], fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's samples into ``(train, held-out)``; at least one training sample stays."""
    rng = np.random.default_rng([seed, 13])
    train, held = [], []
    for p in parts:
        perm = p[rng.permutation(len(p))]
        k = min(int(round(len(p) * fraction)), max(len(p) - 1, 0))
        held.append(np.sort(perm[:k]))
        train.append(np.sort(perm[k:]))
    return train, held


def prepare_llm(cfg: LLMConfig, model_tok: tuple[Any, Any] | None = None,
                corpus: Corpus | None = None) -> LLMInputs:
    """Load (or reuse) model and corpus, attach LoRA, partition by the configured skew."""
    base, tok = model_tok if model_tok is not None else load_model(cfg)
    model = base if hasattr(base, "peft_config") else attach_lora(base, lora_spec(cfg), cfg.run.seed)
    pc = model.peft_config["default"]
    if pc.r != cfg.model.rank or set(pc.target_modules) != set(cfg.model.targets):
        raise ValueError(f"the reused model's LoRA (r={pc.r}, {sorted(pc.target_modules)}) differs from the config's")
    d = cfg.data
    if corpus is None:
        corpus = build_corpus(tok, d.sources, d.seq_len, d.task, d.task_items, d.eval_items,
                              d.max_text_samples, d.test_samples, d.rates, d.one_shot, cfg.run.seed)
    trainer = None
    if d.skew == "quality" and d.quality == "perplexity":
        trainer = LMTrainer(model, tok, corpus.ids, corpus.loss_start, LMTrainSpec())
        with _base_weights(model):
            cats = categories(cfg, corpus, trainer)
    else:
        cats = categories(cfg, corpus)
    parts = partition_text(cats, corpus.lengths, d.clients, d.skew, d.alpha, d.total_tokens, cfg.run.seed)
    train, held = split_heldout(parts, d.local_eval_fraction, cfg.run.seed)
    return LLMInputs(model, tok, corpus, cats, train, held)


class _base_weights:
    """Context: B factors zeroed (the adapter adds nothing), restored afterwards."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = get_adapter(self.model, trainable_only=False)
        zero = {k: (np.zeros_like(v) if k.endswith("lora_B") else v) for k, v in self.saved.items()}
        set_adapter(self.model, zero)

    def __exit__(self, *exc: Any) -> None:
        set_adapter(self.model, self.saved)


def make_evaluator(cfg: LLMConfig, inp: LLMInputs, trainer: LMTrainer,
                   strategy: AdapterStrategy) -> Callable[[Tensors], dict[str, float]]:
    """Global metrics of an aggregated adapter on the server's test text and task items."""
    c = inp.corpus
    e = cfg.eval

    def evaluate(params: Tensors) -> dict[str, float]:
        set_adapter(inp.model, params)
        out = dict(trainer.lm_metrics(c.test_ids))
        if c.eval_items:
            acc = evaluate_task(inp.model, inp.tok, c.eval_items, c.one_shot, e.max_new_tokens, e.gen_batch)
            out.update(accuracy=acc["acc_format"], acc_format=acc["acc_format"], acc_content=acc["acc_content"])
        out.update(strategy.last)
        return out

    return evaluate


def build_llm_server(cfg: LLMConfig, inp: LLMInputs, log: EventLog | None = None,
                     on_progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[Server, AdapterStrategy]:
    """A ready :class:`Server` and its adapter strategy (which holds the aggregation errors)."""
    seed = cfg.run.seed
    t = cfg.train
    for name, p in adapter_parameters(inp.model).items():  # the model may be reused across runs
        p.requires_grad_(not (name.endswith("lora_A") and cfg.model.aggregation == "frozen_a"))
    trainer = LMTrainer(inp.model, inp.tok, inp.corpus.ids, inp.corpus.loss_start,
                        LMTrainSpec(t.lr, t.batch, t.local_steps, t.wd, t.grad_clip), cfg.eval.eval_batch)
    # every run starts from the same seeded adapter (B = 0), whatever ran on this model before
    params = get_adapter(attach_init(inp.model, cfg))
    fixed = {}
    if cfg.model.aggregation == "frozen_a":
        fixed = {k: v for k, v in get_adapter(inp.model, trainable_only=False).items() if k not in params}
    e = cfg.eval
    task_eval = ({"one_shot": inp.corpus.one_shot, "max_new_tokens": e.max_new_tokens,
                  "batch_size": e.gen_batch} if e.local_task else None)
    uplink = codec_spec(cfg.codec)
    n = len(inp.parts)

    def client(cid: int) -> ClientRunner:
        held = inp.heldout[cid] if e.local else np.zeros(0, np.int64)
        ranks = cfg.model.client_ranks
        rank = ranks[cid % len(ranks)] if ranks else None
        lm = ClientLM(trainer, held, inp.corpus.items, task_eval, rank)
        runner = ClientRunner(cid, lm, inp.parts[cid], uplink, seed)
        runner.encoder = adapter_encoder(uplink, f"c{cid}/up")  # routing rules that fit A and B
        return runner

    timing = TimingModel.for_links(
        cfg.clients.timing, uplink, codec_spec(cfg.codec.downlink), cfg.clients.codec_mb_per_s
    )
    transport = InProcessTransport(client, make_profiles(n, cfg.clients, seed), timing)
    strategy = AdapterStrategy(build_strategy(cfg.strategy, n), cfg.model.aggregation,
                               cfg.model.alpha / cfg.model.rank, cfg.model.rank, fixed)
    r = cfg.run
    stop = StopRule(r.max_updates, r.rounds, r.max_sim_time, r.target_accuracy, r.stop_at_target)
    server = Server(strategy, transport, params, [len(p) for p in inp.parts], stop, log=log,
                    evaluator=make_evaluator(cfg, inp, trainer, strategy), eval_every=r.eval_every,
                    eval_every_time=r.eval_every_time, downlink=codec_spec(cfg.codec.downlink),
                    timing=timing, seed=seed, on_progress=on_progress, accept=adapter_codecs(uplink))
    return server, strategy


def attach_init(model: Any, cfg: LLMConfig) -> Any:
    """Reset the adapter to its seeded initial values (A from the seed, B = 0); returns model."""
    import torch

    gen = torch.random.get_rng_state()
    torch.manual_seed(cfg.run.seed)
    try:
        for _name, module in model.named_modules():
            if hasattr(module, "reset_lora_parameters") and hasattr(module, "lora_A"):
                for adapter in list(module.lora_A.keys()):
                    module.reset_lora_parameters(adapter, True)
    finally:
        torch.random.set_rng_state(gen)
    params = adapter_parameters(model)
    if not params:
        raise ValueError("model has no LoRA adapter attached")
    return model
