"""Experiment configuration: strict typed sections, YAML files and ``key=value`` overrides.

Every section rejects unknown keys, naming the full key path and the keys it knows, so a typo
never silently runs the default. Override values are parsed as YAML scalars (``0.01``,
``null``, ``[1, 2]``, ``true``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedpress.backends.config import SimulationConfig


class ConfigError(ValueError):
    """A config file, override or value is wrong; the message says which key and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    dataset: str = "digits"

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from fedpress.data.datasets import canonical_name

        canonical_name(v)  # ValueError listing the known names
        return v

    root: str | None = None
    partition: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller: more skew)")
    shards_per_client: int = Field(2, ge=1)
    clients: int = Field(10, ge=1)
    samples_per_client: int | None = Field(None, ge=1, description="train subset = clients x this")
    test_limit: int | None = Field(None, ge=1, description="evaluate on the first N test samples")


class ModelConfig(Strict):
    name: str = "cnn"

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from fedpress.models import available_models

        if v not in available_models():
            raise ValueError(f"unknown model {v!r}; known: {', '.join(available_models())}")
        return v


class TrainConfig(Strict):
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    wd: float = Field(0.0, ge=0)
    batch: int = Field(32, ge=1)
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1, description="minibatches per dispatch; wins over epochs")


#: staleness functions of ``fedpress.fl.staleness`` (a test keeps the two lists equal; the
#: config does not import the engine)
STALENESS_FNS = ("constant", "polynomial", "hinge", "exponential")
SERVER_OPTS = ("sgd", "momentum", "adam", "yogi", "adagrad")
STRATEGIES = ("fedavg", "fedasync", "fedbuff", "fedfa")


class StalenessConfig(Strict):
    fn: Literal["constant", "polynomial", "hinge", "exponential"] = "constant"
    a: float = Field(0.5, ge=0)
    b: float = Field(4.0, ge=0)


class ServerOptConfig(Strict):
    """The server optimizer; a parameter left unset takes that rule's own default
    (``fedpress.fl.server_opt.DEFAULTS``: Reddi et al. 2021 for adam/yogi/adagrad)."""

    name: Literal["sgd", "momentum", "adam", "yogi", "adagrad"] = "sgd"
    beta1: float | None = Field(None, ge=0, lt=1)
    beta2: float | None = Field(None, ge=0, lt=1)
    eps: float | None = Field(None, gt=0, description="adaptivity tau of adam/yogi/adagrad")


class _OptimizedStrategy(Strict):
    eta_g: float | None = Field(None, gt=0, description="server learning rate (default: per optimizer)")
    server_opt: ServerOptConfig = Field(default_factory=ServerOptConfig)


class FedAvgConfig(_OptimizedStrategy):
    """Synchronous rounds over a cohort."""

    name: Literal["fedavg"] = "fedavg"
    clients_per_round: int | None = Field(None, ge=1, description="cohort (default all)")
    min_responses: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, ge=0, description="round timeout, clock seconds")


class FedAsyncConfig(Strict):
    """Mix every arrival into the model."""

    name: Literal["fedasync"] = "fedasync"
    alpha: float = Field(0.6, gt=0, le=1, description="mixing weight")
    staleness: StalenessConfig = Field(default_factory=StalenessConfig)
    max_in_flight: int | None = Field(None, ge=1, description="concurrent clients (default all)")


class FedBuffConfig(_OptimizedStrategy):
    """Update after every K arrivals."""

    name: Literal["fedbuff"] = "fedbuff"
    K: int = Field(10, ge=1, description="buffer size")
    staleness: StalenessConfig = Field(default_factory=StalenessConfig)
    max_in_flight: int | None = Field(None, ge=1, description="concurrent clients (default all)")


class FedFaConfig(_OptimizedStrategy):
    """Fully asynchronous sliding window of the K most recent results."""

    name: Literal["fedfa"] = "fedfa"
    K: int = Field(10, ge=1, description="window size")
    variant: Literal["model", "delta"] = "model"
    staleness: StalenessConfig = Field(default_factory=StalenessConfig)
    staleness_weighting: bool = False
    max_in_flight: int | None = Field(
        None, ge=1, description="concurrent clients (default all: every client always trains)"
    )
    redispatch: Literal["same", "random"] = Field(
        "same", description="re-dispatch the arriving client, or any idle client at random"
    )


#: one section per strategy, chosen by ``name``; keys of another strategy are refused
StrategyConfig = Annotated[
    Union[FedAvgConfig, FedAsyncConfig, FedBuffConfig, FedFaConfig],  # noqa: UP007
    Field(discriminator="name"),
]
STRATEGY_SECTIONS: dict[str, type[BaseModel]] = {
    "fedavg": FedAvgConfig, "fedasync": FedAsyncConfig, "fedbuff": FedBuffConfig, "fedfa": FedFaConfig,
}

_LINK_ALIASES = ("none", "raw", "lossless")


class LinkCodecConfig(Strict):
    """A link's codec: ``none``/``raw``, ``lossless`` or a registered codec with its bound."""

    name: str = "none"
    mode: Literal["abs", "rel"] = "rel"
    eb: float = Field(1e-2, gt=0)

    @model_validator(mode="after")
    def _known_codec(self) -> LinkCodecConfig:
        if self.name in _LINK_ALIASES:
            return self
        from fedpress.codec.base import available_codecs
        from fedpress.codec.errors import CodecError
        from fedpress.codec.routing import Policy

        known = sorted(available_codecs())
        if self.name not in known:
            raise ValueError(
                f"unknown codec {self.name!r}; known: "
                f"{', '.join(dict.fromkeys([*_LINK_ALIASES, *known]))}"
            )
        try:
            Policy.default(codec=self.name, mode=self.mode, eb=self.eb)
        except (CodecError, TypeError) as exc:
            raise ValueError(f"codec {self.name!r}: {exc}") from None
        return self


class CodecConfig(LinkCodecConfig):
    """Uplink codec (``name``/``mode``/``eb``) and an optional downlink one (default raw)."""

    downlink: LinkCodecConfig | None = None


class ComputeConfig(Strict):
    dist: Literal["constant", "lognormal", "trace"] = "lognormal"
    s_per_sample: float = Field(1e-3, gt=0, description="median seconds per training sample")
    sigma: float = Field(0.5, ge=0, description="log-normal sigma")
    trace: str | None = None

    @model_validator(mode="after")
    def _trace_needs_path(self) -> ComputeConfig:
        if self.dist == "trace" and not self.trace:
            raise ValueError("dist 'trace' needs trace: path/to/trace.csv")
        return self


class TierConfig(Strict):
    up_mbps: float = Field(10.0, gt=0)
    down_mbps: float = Field(50.0, gt=0)
    weight: float = Field(1.0, gt=0)


class NetworkConfig(Strict):
    tiers: list[TierConfig] = Field(default_factory=lambda: [TierConfig()], min_length=1)
    latency_s: float = Field(0.05, ge=0)


class ClientsConfig(Strict):
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    timing: Literal["modeled", "measured"] = "modeled"
    codec_mb_per_s: float | None = Field(
        None, gt=0,
        description="one fixed codec throughput (MB/s) for every non-raw codec; default: each "
        "codec's own throughput, calibrated on this machine",
    )


class RunConfig(Strict):
    seed: int = 0
    name: str | None = None
    max_updates: int | None = Field(None, ge=1, description="accepted client updates")
    max_sim_time: float | None = Field(None, gt=0, description="simulated seconds")
    rounds: int | None = Field(None, ge=1, description="global model versions")
    eval_every: int | None = Field(1, ge=1, description="evaluate every N global versions")
    eval_every_time: float | None = Field(None, gt=0, description="and every N simulated seconds")
    target_accuracy: float | None = Field(None, gt=0, le=1)
    stop_at_target: bool = False
    out_dir: str = "runs"
    eval_batch: int = Field(1000, ge=1)
    plots: bool = True
    tensorboard: bool = Field(False, description="also write TensorBoard event files in the run dir")
    torch_threads: int | None = Field(
        1, ge=1, description="torch intra-op threads during the run (small models: 1 is fastest)"
    )

    @model_validator(mode="after")
    def _has_stop(self) -> RunConfig:
        if self.stop_at_target and self.target_accuracy is None:
            raise ValueError("run.stop_at_target needs run.target_accuracy")
        if self.max_updates is None and self.max_sim_time is None and self.rounds is None:
            if not (self.stop_at_target and self.target_accuracy is not None):
                raise ValueError("set at least one of max_updates, max_sim_time, rounds")
        return self


class ExperimentConfig(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: StrategyConfig = Field(default_factory=FedAvgConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    run: RunConfig = Field(default_factory=lambda: RunConfig(rounds=10))
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_strategy_name(cls, data: Any) -> Any:
        """A strategy section without ``name`` is FedAvg's (the default strategy)."""
        if isinstance(data, dict) and isinstance(data.get("strategy"), dict):
            if "name" not in data["strategy"]:
                data = {**data, "strategy": {"name": "fedavg", **data["strategy"]}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        s, n = self.strategy, self.data.clients
        for key in ("max_in_flight", "clients_per_round", "min_responses"):
            v = getattr(s, key, None)
            if v is not None and v > n:
                raise ValueError(f"strategy.{key}={v} exceeds data.clients={n}")
        return self

    def run_name(self) -> str:
        r = self.run
        return r.name or f"{self.strategy.name}-{self.data.dataset}-s{r.seed}"


# -- loading -------------------------------------------------------------------------------

def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the section that ``loc`` (minus its last item) points into."""
    cur: Any = model
    prev: Any = None
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if prev == "strategy" and part in STRATEGY_SECTIONS:  # the discriminated union's tag
            cur, prev = STRATEGY_SECTIONS[part], part
            continue
        prev = part
        fields = getattr(cur, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        cur = _model_in(ann)
        if cur is None:
            return None
    fields = getattr(cur, "model_fields", None)
    return sorted(fields) if fields else None


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, root: type[BaseModel] = ExperimentConfig) -> str:
    """One line per problem: ``key.path: what is wrong``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        shown = [p for i, p in enumerate(loc)
                 if not (i > 0 and loc[i - 1] == "strategy" and p in STRATEGY_SECTIONS)]
        path = ".".join(str(p) for p in shown) or "(top level)"
        if err.get("type") == "extra_forbidden":
            allowed = _allowed_keys(root, loc)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            tag = next((p for i, p in enumerate(loc) if i and loc[i - 1] == "strategy"
                        and p in STRATEGY_SECTIONS), None)
            what = f"not a key of strategy {tag!r}" if tag else "unknown key"
            lines.append(f"{path}: {what}{hint}")
            continue
        if err.get("type") == "union_tag_invalid" and shown[-1:] == ["strategy"]:
            got = (err.get("ctx") or {}).get("tag")
            lines.append(f"strategy.name: unknown strategy {got!r}; known: {', '.join(STRATEGIES)}")
            continue
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        if err.get("type") != "missing" and not isinstance(got, (dict, list)) and repr(got) not in msg:
            msg = f"{msg} (got {got!r})"
        lines.append(f"{path}: {msg}")
    return "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sections as needed); returns ``data``."""
    for item in overrides:
        parts, value = parse_override(item)
        cur = data
        for i, p in enumerate(parts[:-1]):
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {item!r}: {where} is a value, not a section")
            cur = nxt
        cur[parts[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def build_config(data: Mapping[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(
    source: str | Path | Mapping[str, Any] | ExperimentConfig | None = None,
    overrides: Iterable[str] = (),
) -> ExperimentConfig:
    """A validated config from a YAML path, a dict or a config, with ``key=value`` overrides."""
    if isinstance(source, ExperimentConfig):
        data = source.model_dump()
    elif source is None:
        data = {}
    elif isinstance(source, Mapping):
        data = _deep_copy(source)
    else:
        data = load_yaml(source)
    return build_config(apply_overrides(data, overrides))


def _deep_copy(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in m.items()}


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
