"""Decode time of a ResNet-18-sized payload, before and after the codec-instance cache.

Issue 11 measured 80 of 225 ms of a ResNet-18 decode in ``get_codec`` (``inspect.signature`` per
tensor). This builds the CIFAR ResNet-18 of ``fedpress.models`` (the real tensor names and
shapes, 11.2 M parameters, BN buffers included), takes a deterministic pseudo-gradient (a scaled
random update), encodes it once per codec and times ``StreamDecoder.decode`` (median of N).

Run it once per source tree and compare, e.g. ::

    PYTHONPATH=/work/main/src python benchmarks/bench_decode_cache.py --label before
    PYTHONPATH=$PWD/src python benchmarks/bench_decode_cache.py --label after

Each run adds its result to ``benchmarks/results/decode_cache.json`` (command, git commit of the
timed tree, machine info).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def resnet18_update(seed: int = 0) -> dict[str, np.ndarray]:
    import torch

    from fedpress.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model("resnet18", 3, 10, 32)
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in model.state_dict().items():
        a = t.detach().numpy()
        if a.dtype.kind == "f":
            a = (a * 1e-2 + rng.standard_normal(a.shape) * 1e-3).astype(a.dtype)
        out[name] = a
    return out


def time_decode(payload: bytes, repeats: int) -> list[float]:
    from fedpress.codec.stream import StreamDecoder

    StreamDecoder().decode(payload)  # warm: libraries loaded, kernels compiled
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        StreamDecoder().decode(payload)
        times.append(time.perf_counter() - t0)
    return times


def time_lookup(payload: bytes, repeats: int) -> float:
    """Median ms to build the codec of every tensor entry, as the decoder does per payload."""
    from fedpress.codec.base import get_codec
    from fedpress.codec.wire import unpack

    entries = unpack(payload).tensors
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for t in entries:
            get_codec(t.codec, **t.params)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True, help="name of this measurement (before/after)")
    p.add_argument("--codecs", default="grad,fast,zstd")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_cache.json"))
    p.add_argument("--git-commit", default=None,
                   help="commit of the timed tree when it is not a git checkout (git archive)")
    args = p.parse_args()

    import fedpress
    from fedpress.codec.routing import Policy
    from fedpress.codec.stream import StreamEncoder

    src = Path(fedpress.__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    update = resnet18_update()
    results = []
    for codec in args.codecs.split(","):
        policy = Policy.default(codec, mode="rel", eb=1e-2) if codec != "zstd" else Policy.lossless()
        payload = StreamEncoder(policy).encode(update)
        times = time_decode(payload, args.repeats)
        results.append({"codec": codec, "tensors": len(update), "payload_bytes": len(payload),
                        "decode_ms_median": 1e3 * statistics.median(times),
                        "decode_ms_all": [1e3 * t for t in times],
                        "codec_lookup_ms_median": time_lookup(payload, args.repeats)})
        print(f"{args.label:7s} {codec:5s} {len(update)} tensors, {len(payload)} B: "
              f"decode median {results[-1]['decode_ms_median']:.1f} ms, codec lookups "
              f"{results[-1]['codec_lookup_ms_median']:.2f} ms", flush=True)
    from fedpress.bench.machine import machine_info

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"runs": []}
    report["runs"] = [r for r in report["runs"] if r["label"] != args.label]
    report["runs"].append({"label": args.label, "command": " ".join([sys.executable, *sys.argv]),
                           "source_tree": str(src), "git_commit": args.git_commit or commit,
                           "machine": machine_info(), "results": results})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
