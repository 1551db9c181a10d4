"""Shared builders for the engine tests (no tests here): digits data, a tiny softmax model,
quick configs. Imported as a module by the other ``test_fl_*`` files."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from fedpress.config import load_config
from fedpress.experiment.build import SimulationInputs

# tiny per-client batches run many times slower with 2 threads on a loaded 2-core machine
torch.set_num_threads(1)


@functools.lru_cache(maxsize=4)
def digits_inputs(clients: int = 8, scheme: str = "iid", seed: int = 0) -> SimulationInputs:
    from fedpress.data import load_dataset, partition

    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    parts = partition(train.y, clients, scheme, alpha=0.5, seed=seed)

    def model_fn() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    return SimulationInputs(train.x, train.y, test.x, test.y, parts, model_fn)


def _strategy_section(strategy: str, clients: int) -> dict[str, Any]:
    """Each strategy takes only its own keys (the config refuses the others)."""
    sec: dict[str, Any] = {"name": strategy}
    if strategy in ("fedbuff", "fedfa"):
        sec["K"] = 4
    if strategy in ("fedasync", "fedbuff", "fedfa"):
        sec["max_in_flight"] = clients
    return sec


def quick_config(strategy: str = "fedavg", clients: int = 8, **sections: Any):
    """A small digits config; ``sections`` are dotted overrides written as keyword pairs."""
    base = {
        "data": {"dataset": "digits", "clients": clients},
        "model": {"name": "mlp"},
        "train": {"lr": 0.1, "batch": 16},
        "strategy": _strategy_section(strategy, clients),
        "clients": {"compute": {"dist": "lognormal", "s_per_sample": 0.001, "sigma": 1.0}},
        "run": {"max_updates": 40, "eval_every": 4, "plots": False, "seed": 0},
    }
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in sections.items()]
    return load_config(base, overrides)



def mlp_digits_inputs(clients: int = 4) -> SimulationInputs:
    """Digits with the registry MLP, whose weights are large enough for the lossy codecs."""
    import dataclasses

    from fedpress.models import build_model

    return dataclasses.replace(digits_inputs(clients=clients),
                               model_fn=lambda: build_model("mlp", 1, 10, 8))
