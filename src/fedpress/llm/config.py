"""The ``fedpress llm`` config: the engine's sections (strategy, codec, clients, run) reused
as they are, plus model, data, train and eval sections for causal LMs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from fedpress.config import (
    ClientsConfig,
    CodecConfig,
    ConfigError,
    FedAvgConfig,
    RunConfig,
    StrategyConfig,
    Strict,
    apply_overrides,
    format_validation_error,
    load_yaml,
)

from .text import CORRUPTION_RATES


class LMModelConfig(Strict):
    path: str | None = Field(None, description="HF model dir or .gguf; default: embedded SmolLM2")
    gguf_file: str | None = None
    tiny: bool = Field(False, description="a tiny random Llama built in code (tests, CI)")
    rank: int = Field(4, ge=1)
    alpha: float = Field(8.0, gt=0)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    aggregation: Literal["fedavg", "frozen_a", "svd", "stack"] = "fedavg"
    client_ranks: list[int] | None = Field(
        None, description="heterogeneous ranks, cycled over clients (each <= rank; global shapes stay at rank)")


class LMDataConfig(Strict):
    sources: list[Literal["wiki", "news", "task"]] = Field(default_factory=lambda: ["wiki", "news", "task"])
    task: str = "add1"
    task_items: int = Field(400, ge=1, description="items generated (de-duplicated after)")
    eval_items: int = Field(40, ge=1, description="held-out task items of the server")
    max_text_samples: int | None = Field(600, ge=1)
    test_samples: int = Field(40, ge=1, description="clean held-out passages of the server")
    seq_len: int = Field(128, ge=8)
    skew: Literal["iid", "quantity", "length", "quality"] = "iid"
    quality: Literal["tier", "perplexity"] = Field("tier", description="what quality skew bins on")
    alpha: float = Field(1.0, gt=0)
    clients: int = Field(4, ge=1)
    total_tokens: int = Field(20000, ge=1)
    length_buckets: int = Field(4, ge=2)
    rates: list[float] = Field(default_factory=lambda: list(CORRUPTION_RATES), min_length=2)
    local_eval_fraction: float = Field(0.2, ge=0, lt=1)
    one_shot: bool = False


class LMTrainConfig(Strict):
    lr: float = Field(1e-3, gt=0)
    batch: int = Field(4, ge=1)
    local_steps: int = Field(8, ge=1)
    wd: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)


class LMEvalConfig(Strict):
    max_new_tokens: int = Field(16, ge=1)
    gen_batch: int = Field(8, ge=1)
    eval_batch: int = Field(8, ge=1)
    local: bool = Field(True, description="clients report held-out metrics after training")
    local_task: bool = Field(True, description="and task accuracy on their held-out items")


class StudyConfig(Strict):
    skews: list[Literal["iid", "quantity", "length", "quality"]] = Field(
        default_factory=lambda: ["iid", "length", "quality"])
    alphas: list[float] = Field(default_factory=lambda: [0.1, 1.0, 100.0])
    seeds: list[int] = Field(default_factory=lambda: [0])


class LLMConfig(Strict):
    model: LMModelConfig = Field(default_factory=LMModelConfig)
    data: LMDataConfig = Field(default_factory=LMDataConfig)
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)
    eval: LMEvalConfig = Field(default_factory=LMEvalConfig)
    strategy: StrategyConfig = Field(default_factory=FedAvgConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    run: RunConfig = Field(default_factory=lambda: RunConfig(rounds=3, out_dir="runs/llm"))
    study: StudyConfig = Field(default_factory=StudyConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> LLMConfig:
        s, n = self.strategy, self.data.clients
        for key in ("max_in_flight", "clients_per_round", "min_responses"):
            v = getattr(s, key, None)  # each strategy's section has only its own keys
            if v is not None and v > n:
                raise ValueError(f"strategy.{key}={v} exceeds data.clients={n}")
        m = self.model
        if m.client_ranks is not None and (not m.client_ranks or not all(1 <= r <= m.rank for r in m.client_ranks)):
            raise ValueError(f"model.client_ranks must be between 1 and model.rank={m.rank}, got {m.client_ranks}")
        if self.model.aggregation in ("svd", "stack") and s.name != "fedavg":
            raise ValueError(f"model.aggregation={self.model.aggregation} needs strategy.name=fedavg")
        return self

    def run_name(self) -> str:
        d = self.data
        return self.run.name or (
            f"llm-{self.strategy.name}-{self.model.aggregation}-{d.skew}-a{d.alpha:g}-s{self.run.seed}"
        )


def load_llm_config(source: str | Path | Mapping[str, Any] | LLMConfig | None = None,
                    overrides: Iterable[str] = ()) -> LLMConfig:
    """A validated config from a YAML path, a dict or a config, with ``key=value`` overrides."""
    if isinstance(source, LLMConfig):
        data = source.model_dump()
    elif source is None:
        data = {}
    elif isinstance(source, Mapping):
        data = yaml.safe_load(yaml.safe_dump(dict(source)))
    else:
        data = load_yaml(source)
    data = apply_overrides(data, overrides)
    try:
        return LLMConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, LLMConfig)) from None


def dump_llm_config(cfg: LLMConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
