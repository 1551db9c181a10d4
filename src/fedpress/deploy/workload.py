"""What ``fedpress server`` / ``client`` / ``launch`` run: a *workload* is the pair of builders
(the server side: the loop, its shard sizes and the summary fields it adds; one client's runner)
for one kind of experiment. The deploy commands, the gRPC transport and the server loop are the
same for every workload; only these builders differ.

Two workloads exist: ``cnn`` (an ``ExperimentConfig``: ``fedpress.experiment``) and ``llm``
(an ``LLMConfig``: federated LoRA, ``fedpress.llm``). Which one a config is, is decided from its
shape (after the ``key=value`` overrides), by :func:`detect`: a config is an LLM config when it
uses a key that only the LLM schema has, i.e. a top-level ``eval`` or ``study`` section, or a
``model`` key of ``LMModelConfig`` that ``ModelConfig`` lacks (``rank``, ``tiny``, ``path``,
``targets``, ``aggregation``, ...). Every ``configs/llm_*.yaml`` has ``model.rank``. The key sets
come from the two schemas, so a new LLM-only key is picked up without touching this module.

The LLM package does not know about deploy: this module imports it (lazily), never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpress.config import apply_overrides, load_yaml
from fedpress.metrics.events import EventLog

Progress = Callable[[dict[str, Any]], None] | None


@dataclass
class ServerSide:
    """The server loop of a run (its transport is replaced by the caller), the clients' shard
    sizes (the server trusts these, not what clients claim) and ``extras(run_dir)``: summary
    fields the workload adds once the loop has ended."""

    server: Any
    shard_sizes: list[int]
    extras: Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class Workload:
    """The builders of one kind of experiment (see the module docstring)."""

    kind: str
    load: Callable[[Any, Sequence[str]], Any]
    dump: Callable[[Any], str]
    build_server: Callable[[Any, EventLog | None, Progress], ServerSide]
    build_runner: Callable[[Any, int], Any]


# -- detection ---------------------------------------------------------------------------------
def llm_only_keys() -> tuple[frozenset[str], frozenset[str]]:
    """(top-level sections, ``model`` keys) that the LLM schema has and the CNN schema lacks."""
    from fedpress.config import ExperimentConfig, ModelConfig
    from fedpress.llm.config import LLMConfig, LMModelConfig

    top = frozenset(LLMConfig.model_fields) - frozenset(ExperimentConfig.model_fields)
    model = frozenset(LMModelConfig.model_fields) - frozenset(ModelConfig.model_fields)
    return top, model


def detect(data: Mapping[str, Any]) -> str:
    """``"llm"`` or ``"cnn"`` for a raw config mapping (overrides already applied)."""
    top, model = llm_only_keys()
    if top & set(data):
        return "llm"
    m = data.get("model")
    if isinstance(m, Mapping) and model & set(m):
        return "llm"
    return "cnn"


def resolve(config: str | Path, overrides: Sequence[str] = ()) -> tuple[Workload, Any]:
    """The workload a config file is for, and the config validated by that workload."""
    raw = apply_overrides(load_yaml(config), overrides)
    wl = LLM if detect(raw) == "llm" else CNN
    return wl, wl.load(config, overrides)


def workload_of(cfg: Any) -> Workload:
    """The workload of an already validated config object."""
    from fedpress.config import ExperimentConfig

    return CNN if isinstance(cfg, ExperimentConfig) else LLM


# -- cnn: fedpress.experiment -------------------------------------------------------------------
def _cnn_load(config: Any, overrides: Sequence[str]) -> Any:
    from fedpress.config import load_config

    return load_config(config, overrides)


def _cnn_dump(cfg: Any) -> str:
    from fedpress.config import dump_config

    return dump_config(cfg)


def _cnn_server(cfg: Any, log: EventLog | None, progress: Progress) -> ServerSide:
    from fedpress.experiment.build import build_server
    from fedpress.experiment.run import prepare_inputs

    inputs = prepare_inputs(cfg)
    server = build_server(cfg, inputs, log, progress)
    return ServerSide(server, [len(p) for p in inputs.parts],
                      lambda _out: {"dataset": cfg.data.dataset, "partition": cfg.data.partition})


def _cnn_runner(cfg: Any, client_id: int) -> Any:
    """The client runner a simulation of ``cfg`` would use for ``client_id``."""
    from fedpress.experiment.build import build_server
    from fedpress.experiment.run import prepare_inputs

    _check_id(client_id, cfg.data.clients)
    inputs = prepare_inputs(cfg)
    sim = build_server(cfg, inputs)  # the simulated federation; only its client factory is used
    return sim.transport.client(client_id)


# -- llm: fedpress.llm --------------------------------------------------------------------------
def _llm_load(config: Any, overrides: Sequence[str]) -> Any:
    from fedpress.llm.config import load_llm_config

    return load_llm_config(config, overrides)


def _llm_dump(cfg: Any) -> str:
    from fedpress.llm.config import dump_llm_config

    return dump_llm_config(cfg)


ADAPTER_FILE = "adapter.safetensors"


def _llm_server(cfg: Any, log: EventLog | None, progress: Progress) -> ServerSide:
    """Base model + LoRA loaded once in the server process: it holds the adapter parameters and
    evaluates the aggregated adapter globally (loss, perplexity, task accuracy)."""
    from fedpress.llm.run import summary_extras
    from fedpress.llm.simulation import build_llm_server, prepare_llm

    inputs = prepare_llm(cfg)
    server, strategy = build_llm_server(cfg, inputs, log, progress)

    def extras(out: Path) -> dict[str, Any]:
        from safetensors.numpy import save_file

        save_file({k: v.copy() for k, v in server.params.items()}, str(out / ADAPTER_FILE))
        return {**summary_extras(cfg, inputs, strategy, out), "adapter_file": ADAPTER_FILE}

    return ServerSide(server, [len(p) for p in inputs.parts], extras)


def _llm_runner(cfg: Any, client_id: int) -> Any:
    """The runner a simulation of ``cfg`` would use for ``client_id``: the model is loaded once
    in this process, the text shard is the one the shared partitioner gives ``client_id``."""
    from fedpress.llm.simulation import build_llm_server, prepare_llm

    _check_id(client_id, cfg.data.clients)
    sim, _ = build_llm_server(cfg, prepare_llm(cfg))  # only its client factory is used
    return sim.transport.client(client_id)


def _check_id(client_id: int, n: int) -> None:
    if not 0 <= client_id < n:
        raise ValueError(f"--id {client_id} is outside 0..{n - 1} (data.clients)")


CNN = Workload("cnn", _cnn_load, _cnn_dump, _cnn_server, _cnn_runner)
LLM = Workload("llm", _llm_load, _llm_dump, _llm_server, _llm_runner)
