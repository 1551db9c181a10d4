"""The ``fast`` codec against SZ3 (pysz) and ``linear``: ratio, encode and decode MB/s.

Side by side in one process, on the same tensors and bounds: every tensor is encoded and decoded
by every codec in turn, each timing is the best of ``--repeat`` runs (the machine is shared), and
throughput is the raw size over the summed best times. Data:

* recorded FL pseudo-gradients (``--trace``, default runs/traces/mnist-cnn-fedavg, recorded by bench_grad.py), the
  tensors the default routing policy sends to a lossy codec (float weights above 1024 values);
  without a trace, gradient-like synthetic tensors (laplace values with rank-one channel scales);
* a 4M-value float32 laplace tensor shaped (1024, 4096).

The numba JIT cost is reported apart: the first call in this process (loading the on-disk cache,
or compiling when there is none) and, unless ``--no-cold-jit``, a compile from an empty cache in a
subprocess.

    python benchmarks/bench_fast_codec.py                 # REL 1e-3, 1e-2, 1e-1
    python benchmarks/bench_fast_codec.py --eb 1e-2 --no-cold-jit
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fedpress.codec.baselines  # noqa: F401  (registers sz3, sz3-nopred)
import fedpress.codec.fast  # noqa: F401  (registers fast)
import fedpress.codec.linear  # noqa: F401
from fedpress.bench.machine import machine_info
from fedpress.codec.base import get_codec
from fedpress.codec.bound import ErrorBound
from fedpress.codec.routing import tensor_role

RESULTS = Path(__file__).parent / "results"
CODECS = ["fast", "sz3", "sz3-nopred", "linear"]
_ROUND = re.compile(r"round_(\d+)\.safetensors$")


def trace_tensors(trace: Path, small: int = 1024) -> list[tuple[str, np.ndarray]]:
    """Lossy-routed tensors of every client and round (same rule as ``Policy.default``)."""
    from safetensors.numpy import load_file

    out = []
    for f in sorted(trace.glob("client_*/round_*.safetensors")):
        for name, x in load_file(str(f)).items():
            if (
                x.dtype.kind == "f"
                and x.size > small
                and tensor_role(name, x) in ("weight", "other")
            ):
                out.append((f"{f.parent.name}/{f.stem}/{name}", x))
    return out


def synthetic_tensors(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for shape in [
        (32, 1, 3, 3),
        (64, 32, 5, 5),
        (64, 64, 3, 3),
        (32, 64, 1, 1),
        (128, 1568),
        (10, 128),
    ]:
        x = rng.laplace(size=shape) * 1e-3
        r = np.exp(rng.normal(size=shape[0]) * 1.5).reshape((-1,) + (1,) * (len(shape) - 1))
        c = np.exp(rng.normal(size=shape[1]) * 1.5).reshape((1, -1) + (1,) * (len(shape) - 2))
        out.append((f"synthetic{shape}", (x * r * c).astype(np.float32)))
    return out


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_set(
    tensors: list[tuple[str, np.ndarray]], codecs: list[str], eb: float, repeat: int
) -> dict:
    tot = {c: {"raw": 0, "enc_bytes": 0, "enc_s": 0.0, "dec_s": 0.0, "worst": 0.0} for c in codecs}
    per_tensor = []
    for name, x in tensors:
        row = {"tensor": name, "shape": list(x.shape), "size": int(x.size)}
        bound = ErrorBound("rel", eb).absolute(x)
        for c in codecs:
            codec = get_codec(c, mode="rel", eb=eb)
            te, frame = best_time(lambda: codec.encode(x), repeat)  # noqa: B023
            td, y = best_time(lambda: codec.decode(frame, x.shape, x.dtype), repeat)  # noqa: B023
            err = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
            t = tot[c]
            t["raw"] += x.nbytes
            t["enc_bytes"] += len(frame)
            t["enc_s"] += te
            t["dec_s"] += td
            t["worst"] = max(t["worst"], err / bound if bound > 0 else 0.0)
            row[c] = {
                "ratio": x.nbytes / len(frame),
                "enc_MBps": x.nbytes / te / 1e6,
                "dec_MBps": x.nbytes / td / 1e6,
            }
        per_tensor.append(row)
    summary = {
        c: {
            "ratio": t["raw"] / t["enc_bytes"],
            "encode_MBps": t["raw"] / t["enc_s"] / 1e6,
            "decode_MBps": t["raw"] / t["dec_s"] / 1e6,
            "max_err_over_bound": t["worst"],
            "raw_bytes": t["raw"],
            "encoded_bytes": t["enc_bytes"],
        }
        for c, t in tot.items()
    }
    return {"tensors": len(tensors), "summary": summary, "per_tensor": per_tensor}


def first_call_seconds() -> dict:
    """JIT warm-up in this process: the first encode/decode per dtype (cache load or compile)."""
    codec = get_codec("fast")
    out = {}
    for dt in ("float32", "float64", "float16"):
        x = np.random.default_rng(0).laplace(size=(64, 64)).astype(dt)
        t0 = time.perf_counter()
        frame = codec.encode(x)
        t1 = time.perf_counter()
        codec.decode(frame, x.shape, x.dtype)
        out[dt] = {"encode_s": t1 - t0, "decode_s": time.perf_counter() - t1}
    return out


def cold_jit_seconds() -> float | None:
    """Wall time of the first calls when numba compiles from an empty cache (a subprocess)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = (
            "import time; t=time.perf_counter(); import sys; sys.argv=['x']; "
            "import bench_fast_codec as b; b.first_call_seconds(); "
            "print(time.perf_counter()-t)"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=Path(__file__).parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return None
        return float(proc.stdout.strip().splitlines()[-1])


def print_table(report: dict) -> None:
    print(
        f"\n{'data':28s} {'REL':>6} {'codec':11s} {'ratio':>7} {'enc MB/s':>9} {'dec MB/s':>9} "
        f"{'err/bnd':>8}"
    )
    for res in report["results"]:
        for c, s in res["summary"].items():
            print(
                f"{res['data'][:28]:28s} {res['eb']:6g} {c:11s} {s['ratio']:7.2f} "
                f"{s['encode_MBps']:9.1f} {s['decode_MBps']:9.1f} {s['max_err_over_bound']:8.4f}"
            )
    w = report["jit"]
    print(
        "\nJIT warm-up, first calls in this process (s): "
        + ", ".join(
            f"{k} enc {v['encode_s']:.3f} dec {v['decode_s']:.3f}"
            for k, v in w["first_call_this_process"].items()
        )
    )
    if w.get("cold_compile_s") is not None:
        print(f"JIT from an empty cache (first calls, all dtypes): {w['cold_compile_s']:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default="runs/traces/mnist-cnn-fedavg",
                    help="client_*/round_*.safetensors folder (bench_grad.py records it)")
    ap.add_argument("--eb", default="1e-3,1e-2,1e-1", help="REL bounds, comma separated")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cold-jit", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "fast_codec.json"))
    args = ap.parse_args()
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    ebs = [float(e) for e in args.eb.split(",")]

    jit = {"first_call_this_process": first_call_seconds()}
    warm = np.random.default_rng(1).laplace(size=(70, 80)).astype(np.float32)
    for c in codecs:  # warm every codec once before timing
        get_codec(c).decode(get_codec(c).encode(warm), warm.shape, warm.dtype)
    trace = Path(args.trace)
    real = trace_tensors(trace) if trace.is_dir() else []
    datasets = [
        (f"FL trace {trace}" if real else "synthetic gradients", real or synthetic_tensors())
    ]
    lap = np.random.default_rng(0).laplace(size=(1024, 4096)).astype(np.float32)
    datasets.append(("laplace f32 (1024, 4096)", [("laplace", lap)]))

    results = []
    for eb in ebs:
        for label, tensors in datasets:
            res = run_set(tensors, codecs, eb, args.repeat)
            res.update(data=label, eb=eb)
            results.append(res)
            s = res["summary"]
            print(
                f"REL {eb:g} {label}: "
                + "  ".join(
                    f"{c} {s[c]['ratio']:.2f}x {s[c]['encode_MBps']:.0f}/{s[c]['decode_MBps']:.0f} MB/s"
                    for c in codecs
                ),
                flush=True,
            )
    jit["cold_compile_s"] = None if args.no_cold_jit else cold_jit_seconds()
    report = {
        "machine": machine_info(),
        "codecs": codecs,
        "repeat": args.repeat,
        "jit": jit,
        "method": "per tensor best-of-repeat times, summed; MB/s = raw bytes / time",
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
