"""Evidence for the gradient-aware codec (issue: grad vs SZ3 on real FL pseudo-gradients).

Runs, side by side in one process on the same recorded tensors:
1. every codec at REL 1e-3 .. 1e-1 (ratio per round and per layer, MB/s, max error / bound),
2. an ablation of grad's parts (channel-scale context, temporal context, kernel sign context,
   rank-one sign basis, and the paper's EMA predictor with kernel / oscillation / auto signs),
3. the accuracy impact: the same FedAvg training with the codec in the uplink.

Traces are recorded first when missing (real MNIST shipped in a package, three architectures:
McMahan et al.'s FedAvg CNN without normalisation, a small CNN with BatchNorm after every
convolution, and a ResNet-8).

    python benchmarks/bench_grad.py            # full run (about 30 min on 2 cores)
    python benchmarks/bench_grad.py --quick    # a smoke run in a few minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fedpress.bench.codecs import bench_codec, compare_codecs, load_trace, plot_bench
from fedpress.bench.machine import machine_info
from fedpress.codec.routing import Policy
from fedpress.codec.stream import StreamDecoder, StreamEncoder
from fedpress.traces import TraceConfig, record_traces

RESULTS = Path(__file__).parent / "results"
CODECS = ["grad", "fast", ("fast-plain", "fast", {"contexts": False}), "linear", "sz3",
          "sz3-nopred", "zfp", "qsgd"]
BOUNDS = [1e-3, 1e-2, 3e-2, 5e-2, 1e-1]
ABLATION = {
    "grad (all contexts)": {},
    "no context (=linear coder)": {"scale_context": False, "temporal_context": False,
                                   "kernel_sign_context": False},
    "channel-scale context only": {"temporal_context": False, "kernel_sign_context": False},
    "temporal context only": {"scale_context": False, "kernel_sign_context": False},
    "kernel sign context only": {"scale_context": False, "temporal_context": False},
    "+ rank-one sign basis": {"sign_basis_context": True},
    "paper predictor, kernel sign": {"predictor": "kernel", "scale_context": False,
                                     "temporal_context": False, "kernel_sign_context": False},
    "paper predictor, oscillation sign": {"predictor": "oscillation", "scale_context": False,
                                          "temporal_context": False, "kernel_sign_context": False},
    "paper predictor, auto sign": {"predictor": "auto", "scale_context": False,
                                   "temporal_context": False, "kernel_sign_context": False},
    "paper predictor + all contexts": {"predictor": "auto"},
}


def traces(quick: bool) -> dict[str, Path]:
    out = {}
    for model in ("cnn-fedavg", "cnn", "resnet8"):
        cfg = TraceConfig(dataset="mnist", model=model, clients=2 if quick else 4,
                          rounds=3 if quick else 10, samples_per_client=500 if quick else 2000,
                          batch_size=64, lr=0.05)
        path = Path("runs/traces") / f"mnist-{model}{'-quick' if quick else ''}"
        if not (path / "trace.json").exists():
            print(f"recording {path} ...", flush=True)
            record_traces(cfg, path)
        out[f"mnist-{model}"] = path
    return out


def codec_uplink(codec: str, eb: float):
    """An uplink hook that really encodes and decodes each client's update (one stream each)."""
    encoders: dict[int, StreamEncoder] = {}
    decoders: dict[int, StreamDecoder] = {}
    policy = Policy.default(codec, mode="rel", eb=eb)

    def hook(client: int, round_: int, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        enc = encoders.setdefault(client, StreamEncoder(policy, f"c{client}/up"))
        dec = decoders.setdefault(client, StreamDecoder(f"c{client}/up"))
        return dec.decode(enc.encode(delta))

    return hook


def accuracy_impact(quick: bool) -> list[dict]:
    rows = []
    cfg = TraceConfig(dataset="mnist", model="cnn", clients=4, rounds=3 if quick else 10,
                      samples_per_client=500 if quick else 2000, batch_size=64, lr=0.05)
    runs = [("uncompressed", None, None)] + [
        (c, c, eb) for eb in ((1e-1,) if quick else (1e-2, 1e-1)) for c in ("grad", "sz3")
    ]
    for label, codec, eb in runs:
        out = Path("runs/accuracy") / f"{label}-{eb}"
        hook = codec_uplink(codec, eb) if codec else None
        res = record_traces(cfg, out, uplink=hook, progress=False)
        acc = [r["test_accuracy"] for r in res["rounds"]]
        rows.append({"codec": label, "eb": eb, "final_accuracy": acc[-1],
                     "best_accuracy": max(acc), "mean_last3": float(np.mean(acc[-3:])),
                     "accuracy": acc})
        print(f"  accuracy {label:12s} eb={eb}: final {acc[-1]:.4f} best {max(acc):.4f} "
              f"mean of last 3 {np.mean(acc[-3:]):.4f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine_info(), "traces": {}, "ablation": {}, "accuracy": []}
    bounds = [1e-2, 1e-1] if args.quick else BOUNDS
    for name, path in traces(args.quick).items():
        trace = load_trace(path)
        print(f"== {name}: {len(trace)} clients x {len(next(iter(trace.values())))} rounds", flush=True)
        rows = compare_codecs(trace, CODECS, bounds)
        report["traces"][name] = {"path": str(path), "results": rows}
        plot_bench({"results": rows}, RESULTS / f"grad_ratio_{name}.png")
        abl = []
        for eb in (1e-2, 1e-1):
            for label, params in ABLATION.items():
                r = bench_codec(trace, "grad", eb, params, label)
                abl.append(r)
                print(f"  ablation REL {eb:g} {label:34s} {r['median_round_ratio_rounds2plus']:8.2f}",
                      flush=True)
        report["ablation"][name] = abl
    report["accuracy"] = accuracy_impact(args.quick)
    out = RESULTS / ("grad_quick.json" if args.quick else "grad.json")
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
