"""Flower's side of ``bench_grpc_flower.py``: a Flower server or client process over gRPC.

Runs in Flower's own venv (Flower pins its own grpcio/protobuf) with ``PYTHONPATH=src:benchmarks``
so that the data loader, the partitioner, the model builder and the evaluator are fedpress's own.
The job (one JSON file written by the benchmark from the fedpress config) fixes dataset, shards,
model, seed and SGD settings, so both frameworks train the same model on the same data.

Local training repeats fedpress's ``LocalTrainer.train`` step for step (same per-(client, round)
seed, same batch order), so Flower's round ``r`` and fedpress's uncompressed round ``r`` start
from the same weights and see the same minibatches; ``tests/test_bench_grpc_flower.py`` checks
this against ``LocalTrainer`` itself (which cannot be imported here: its package pulls in the
codecs and their native libraries, absent from Flower's venv).

The server is the legacy ``flwr.server.start_server`` with a FedAvg subclass that records, per
round, server-side timestamps and the bytes of Flower's own serialisation (``Parameters.tensors``:
one ``.npy`` blob per tensor) in each direction; it writes them as JSON at the end.

    python flower_grpc_app.py server --job JOB.json --address 0.0.0.0:PORT --out RESULT.json
    python flower_grpc_app.py client --job JOB.json --server HOST:PORT --id I

Nothing from ``flwr`` is imported at module level: the pure parts (seeds, training,
analysis) are importable from fedpress's venv, where the tests run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def derive_seed(*parts: int) -> int:
    """fedpress's per-(run seed, client, round) training seed (``fedpress.fl.client.derive_seed``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray,
                job: dict[str, Any], seed: int) -> int:
    """One client's local SGD in place on ``model``, as ``LocalTrainer.train`` does it (epochs
    of shuffled minibatches, a one-sample remainder batch skipped); returns samples processed."""
    model.train()
    torch.random.default_generator.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(model.parameters(), lr=job["lr"], momentum=job["momentum"],
                          weight_decay=job["wd"])
    loss_fn = nn.CrossEntropyLoss()
    bs = job["batch"]
    idx = np.asarray(indices, dtype=np.int64)
    batches: list[np.ndarray] = []
    for _ in range(job["local_epochs"]):
        perm = idx[rng.permutation(len(idx))]
        batches.extend(perm[i : i + bs] for i in range(0, len(perm), bs))
    seen = 0
    for b in batches:
        if len(b) == 1 and bs > 1 and len(idx) > 1:
            continue
        t = torch.from_numpy(b)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[t]), y[t]).backward()
        opt.step()
        seen += len(b)
    return seen


def tensor_bytes(parameters: Any) -> int:
    """Bytes of Flower's serialised parameters (the ``.npy`` blobs it puts on the wire)."""
    return sum(len(t) for t in parameters.tensors)


def flower_round_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """Per-round times and bytes from the Flower server's record, shaped like
    ``bench_grpc_shaped.round_metrics``: ``round_time_s`` is the time between consecutive
    global-model updates; ``comm_s`` is configure_fit -> end of aggregate_fit minus the
    slowest client's training (both transfers, Flower's (de)serialisation on both sides and
    the averaging, which takes milliseconds). Means skip the first round (connection set-up)."""
    rows = []
    prev_done: float | None = None
    for r in record["rounds"]:
        train = max(r["train_s"]) if r["train_s"] else 0.0
        rows.append({
            "round": r["round"],
            "round_time_s": r["t_done"] - prev_done if prev_done is not None else None,
            "comm_s": r["t_done"] - r["t_configure"] - train,
            "trip_s": r["t_done"] - r["t_configure"],
            "train_s": train,
            "bytes_up": r["bytes_up"],
            "bytes_down": r["bytes_down_per_client"] * r["clients"],
        })
        prev_done = r["t_done"]
    steady = rows[1:] or rows

    def mean(key: str) -> float:
        vals = [row[key] for row in steady if row[key] is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    return {"rounds": rows, "comm_s": mean("comm_s"), "trip_s": mean("trip_s"),
            "round_time_s": mean("round_time_s"), "bytes_up_per_round": mean("bytes_up"),
            "bytes_down_per_round": mean("bytes_down")}


# ---- inside Flower's venv -------------------------------------------------------------------

def _data(job: dict[str, Any], split: str) -> Any:
    from fedpress.data import load_dataset

    limit = job["clients"] * job["samples_per_client"] if split == "train" else job["test_limit"]
    return load_dataset(job["dataset"], split, root=job["root"], limit=limit)


def _model(job: dict[str, Any], ds: Any) -> nn.Module:
    from fedpress.models import build_model

    return build_model(job["model"], ds.in_channels, ds.num_classes, ds.image_size)


def _to_list(model: nn.Module) -> list[np.ndarray]:
    from fedpress.fl.params import get_params

    return list(get_params(model).values())


def _load(model: nn.Module, arrays: list[np.ndarray]) -> None:
    from fedpress.fl.params import get_params, set_params

    names = list(get_params(model))
    set_params(model, dict(zip(names, arrays, strict=True)))


def initial_weights(job: dict[str, Any]) -> list[np.ndarray]:
    """The global model before round 1: fedpress's ``build_server`` seeds torch with the run
    seed, then builds the model."""
    torch.manual_seed(job["seed"])
    return _to_list(_model(job, _data(job, "test")))


def shard(job: dict[str, Any], cid: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Client ``cid``'s training data: the train split and its indices into it, partitioned by
    fedpress's own partitioner with the run seed (as ``prepare_inputs`` does)."""
    from fedpress.data import partition

    train = _data(job, "train")
    parts = partition(train.y, job["clients"], job["partition"], alpha=job["alpha"],
                      shards_per_client=job["shards_per_client"], seed=job["seed"])
    x, y = torch.from_numpy(np.array(train.x)), torch.from_numpy(np.array(train.y))
    return x, y, np.asarray(parts[cid], dtype=np.int64)


def run_server(job: dict[str, Any], address: str, out: Path) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg

    from fedpress.fl.evaluate import Evaluator
    from fedpress.fl.params import get_params

    test = _data(job, "test")
    init = initial_weights(job)
    model = _model(job, test)
    evaluator = Evaluator(model, torch.from_numpy(np.array(test.x)), torch.from_numpy(np.array(test.y)),
                          job["eval_batch"])
    record: dict[str, Any] = {"rounds": [], "final_accuracy": None}
    rounds: dict[int, dict[str, Any]] = {}
    names = list(get_params(model))

    def evaluate(server_round: int, arrays: list[np.ndarray], config: dict) -> Any:
        if server_round != job["rounds"]:
            return None  # fedpress evaluates only the final model in this benchmark too
        m = evaluator(dict(zip(names, arrays, strict=True)))
        record.update(final_accuracy=m["accuracy"], final_loss=m["loss"])
        return m["loss"], {"accuracy": m["accuracy"]}

    class TimedFedAvg(FedAvg):
        """FedAvg that records server-side timestamps and Flower's serialised bytes per round."""

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            out = super().configure_fit(server_round, parameters, client_manager)
            rounds[server_round] = {"round": server_round, "t_configure": time.time(),
                                    "bytes_down_per_client": tensor_bytes(parameters),
                                    "clients": len(out)}
            return out

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            r = rounds[server_round]
            r.update(t_aggregate=time.time(), failures=len(failures),
                     bytes_up=sum(tensor_bytes(res.parameters) for _, res in results),
                     train_s=[float(res.metrics.get("train_s", 0.0)) for _, res in results])
            agg = super().aggregate_fit(server_round, results, failures)
            r["t_done"] = time.time()
            record["rounds"].append(r)
            return agg

    n = job["clients"]
    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_evaluate_clients=0,
        min_available_clients=n, initial_parameters=ndarrays_to_parameters(init),
        evaluate_fn=evaluate, on_fit_config_fn=lambda r: {"round": r},
    )
    t0 = time.time()
    start_server(server_address=address, config=ServerConfig(num_rounds=job["rounds"]), strategy=strategy)
    import flwr

    record.update(wall_s=time.time() - t0, flwr_version=flwr.__version__)
    out.write_text(json.dumps(record, indent=2) + "\n")


def run_client(job: dict[str, Any], server: str, cid: int) -> None:
    from flwr.client import NumPyClient, start_client

    x, y, indices = shard(job, cid)
    model = _model(job, _data(job, "train"))

    class Client(NumPyClient):
        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            _load(model, parameters)
            t0 = time.perf_counter()
            # fedpress counts a client's own rounds from 0; every client joins every round here
            local_train(model, x, y, indices, job, derive_seed(job["seed"], cid, int(config["round"]) - 1))
            train_s = time.perf_counter() - t0
            return _to_list(model), len(indices), {"train_s": train_s}

    start_client(server_address=server, client=Client().to_client(), insecure=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--job", required=True, help="JSON job written by bench_grpc_flower.py")
    p.add_argument("--address", default="0.0.0.0:8080", help="server: listen address")
    p.add_argument("--out", help="server: where to write the per-round record")
    p.add_argument("--server", help="client: HOST:PORT of the Flower server")
    p.add_argument("--id", type=int, help="client: its id (shard)")
    a = p.parse_args(argv)
    job = json.loads(Path(a.job).read_text())
    torch.set_num_threads(1)
    if a.role == "server":
        run_server(job, a.address, Path(a.out))
    else:
        run_client(job, a.server, a.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
