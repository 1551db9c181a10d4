"""``fedpress demo``: the main job on the embedded default data.

Federated training (FedAvg) of a small CNN on real MNIST (shipped inside a registry package) over
bandwidth-constrained uplinks, three times with the same seed: uncompressed, SZ3 and the
gradient-aware codec ``grad`` at REL 1e-2 in the uplink. Prints accuracy, bytes, simulated
communication time and simulated codec time (each codec at its own throughput, calibrated on
this machine; raw costs nothing) side by side and draws accuracy against simulated time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CODECS = (("uncompressed", "none"), ("sz3", "sz3"), ("grad", "grad"))


def demo_config(codec: str, quick: bool) -> dict[str, Any]:
    clients = 6 if quick else 20
    return {
        "data": {"dataset": "mnist", "partition": "iid", "clients": clients,
                 "samples_per_client": 100 if quick else 300, "test_limit": 500 if quick else 2000},
        "model": {"name": "cnn"},
        "train": {"lr": 0.05, "momentum": 0.0, "wd": 0.0, "batch": 32, "local_epochs": 1},
        "strategy": {"name": "fedavg", "clients_per_round": 3 if quick else 10, "eta_g": 1.0},
        "codec": {"name": codec, "mode": "rel", "eb": 1e-2},
        "clients": {
            "compute": {"dist": "lognormal", "s_per_sample": 0.002, "sigma": 0.5},
            "network": {"latency_s": 0.05, "tiers": [
                {"up_mbps": 1, "down_mbps": 10, "weight": 0.5},
                {"up_mbps": 10, "down_mbps": 50, "weight": 0.5}]},
            "timing": "modeled",
        },
        "run": {"seed": 0, "max_updates": 9 if quick else 200, "eval_every": 1,
                "target_accuracy": 0.9, "out_dir": "runs"},
    }


def run_demo(out: Path, quick: bool = False) -> dict[str, dict]:
    from .experiment.run import run_experiment

    results = {}
    for label, codec in CODECS:
        print(f"[fedpress demo] FedAvg on MNIST, uplink codec: {label}", flush=True)
        summary = run_experiment(demo_config(codec, quick), run_dir=out / label)
        results[label] = summary
    return results


CODEC_PARTS = ("server_encode_s", "decode_s", "encode_s", "server_decode_s")


def _arrival_sum(run_dir: Path, keys: tuple[str, ...]) -> float:
    total = 0.0
    with open(run_dir / "events.jsonl", encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            if ev.get("event") == "arrival":
                total += sum(float(ev.get(k) or 0.0) for k in keys)
    return total


def comm_seconds(run_dir: Path) -> float:
    """Simulated seconds spent moving bytes (uplink + downlink), summed over round trips."""
    return _arrival_sum(run_dir, ("upload_s", "download_s"))


def codec_seconds(run_dir: Path) -> float:
    """Simulated seconds spent encoding and decoding (client and server side), summed over
    round trips: each codec at its own calibrated throughput, raw free."""
    return _arrival_sum(run_dir, CODEC_PARTS)


def plot_demo(out: Path, results: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label in results:
        ts, accs = [], []
        with open(out / label / "events.jsonl", encoding="utf-8") as f:
            for line in f:
                ev = json.loads(line)
                if ev.get("event") == "eval":
                    ts.append(ev["t"])
                    accs.append(ev["accuracy"])
        ax.plot(ts, accs, marker=".", label=label)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("FedAvg on MNIST, 1-10 Mbit/s uplinks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    results = run_demo(out, quick=args.quick)
    base = results["uncompressed"]
    print(f"\n{'uplink codec':14s} {'final acc':>9} {'best acc':>9} {'MB up':>8} {'ratio':>6} "
          f"{'sim time (s)':>12} {'link time (s)':>13} {'codec time (s)':>14} {'vs raw':>7}")
    rows = {}
    base_comm = comm_seconds(out / "uncompressed")
    for label, s in results.items():
        comm = comm_seconds(out / label)
        codec = codec_seconds(out / label)
        rows[label] = {**{k: s.get(k) for k in ("final_accuracy", "best_accuracy", "bytes_up",
                                                  "compression_ratio_up", "sim_time",
                                                  "time_to_target")}, "comm_s": comm,
                       "codec_s": codec}
        print(f"{label:14s} {s['final_accuracy']:9.4f} {s['best_accuracy']:9.4f} "
              f"{s['bytes_up'] / 1e6:8.2f} {s['compression_ratio_up']:6.1f} {s['sim_time']:12.1f} "
              f"{comm:13.1f} {codec:14.2f} {100 * (1 - comm / base_comm) if base_comm else 0:6.1f}%")
    (out / "demo.json").write_text(json.dumps(rows, indent=1))
    print(f"\nplot: {plot_demo(out, results)}   per-run logs and plots: {out}/<codec>/")
    del base
    return 0
