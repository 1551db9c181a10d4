"""Codecs side by side on the same recorded tensors and bounds: ratio, speed, error, entropy.

Every codec sees the same payloads through the same routing (small tensors, biases, norms and
integer buffers lossless; the rest through the codec under test), one stream per client with the
rounds in order, so stateful codecs are measured as they would run in training.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..codec.bound import ErrorBound
from ..codec.entropy import zeroth_order_entropy_bits
from ..codec.errors import CodecError
from ..codec.quantizer import quantize
from ..codec.routing import Policy
from ..codec.stream import StreamDecoder, StreamEncoder
from .machine import machine_info

_ROUND = re.compile(r"round_(\d+)\.safetensors$")


def load_trace(trace_dir: Path, clients: int | None = None) -> dict[str, list[dict]]:
    """{client dir: [round tensors, ...]} in round order, as numpy arrays."""
    from safetensors.numpy import load_file

    out: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for f in sorted(Path(trace_dir).glob("client_*/round_*.safetensors")):
        out[f.parent.name].append((int(_ROUND.search(f.name).group(1)), load_file(str(f))))
    if not out:
        raise FileNotFoundError(f"{trace_dir}: no client_<id>/round_<r>.safetensors files")
    names = sorted(out, key=lambda s: int(s.split("_")[1]))[: clients or None]
    return {c: [t for _, t in sorted(out[c], key=lambda p: p[0])] for c in names}


def bench_codec(
    trace: dict[str, list[dict]], codec: str, eb: float, params: dict | None = None,
    label: str | None = None,
) -> dict:
    """One codec (with optional extra parameters) at one REL bound over the whole trace."""
    policy = Policy.default(codec, mode="rel", eb=eb, **(params or {}))
    per_round: dict[int, list[float]] = defaultdict(list)
    per_layer: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    tot = {"raw": 0, "enc": 0, "raw2": 0, "enc2": 0, "enc_s": 0.0, "dec_s": 0.0}
    lossy_bits = lossy_n = 0
    worst = 0.0
    for client, rounds in trace.items():
        enc, dec = StreamEncoder(policy, stream_id=client), StreamDecoder(client)
        for r, tensors in enumerate(rounds, start=1):
            t0 = time.perf_counter()
            payload = enc.encode(tensors)
            t1 = time.perf_counter()
            out = dec.decode(payload)
            t2 = time.perf_counter()
            st = enc.last_stats
            tot["raw"] += st.raw_bytes
            tot["enc"] += len(payload)
            tot["enc_s"] += t1 - t0
            tot["dec_s"] += t2 - t1
            if r >= 2:
                tot["raw2"] += st.raw_bytes
                tot["enc2"] += len(payload)
                per_round[r].append(st.raw_bytes / len(payload))
            for name, info in st.per_tensor.items():
                if info["codec"] == "zstd":
                    continue
                x = tensors[name]
                per_layer[name][0] += info["raw"]
                per_layer[name][1] += info["encoded"]
                lossy_bits += 8 * info["encoded"]
                lossy_n += x.size
                bound = ErrorBound("rel", eb).absolute(x)
                err = float(np.max(np.abs(x.astype(np.float64) - out[name].astype(np.float64))))
                if bound > 0:
                    worst = max(worst, err / bound)
    medians = [float(np.median(v)) for _, v in sorted(per_round.items())]
    return {
        "codec": label or codec,
        "params": params or {},
        "eb": eb,
        "ratio": tot["raw"] / tot["enc"],
        "ratio_rounds2plus": tot["raw2"] / max(tot["enc2"], 1),
        "median_round_ratio_rounds2plus": float(np.median(medians)) if medians else None,
        "per_round_median_ratio": medians,
        "per_layer_ratio": {k: v[0] / max(v[1], 1) for k, v in per_layer.items()},
        "encode_MBps": tot["raw"] / 1e6 / tot["enc_s"],
        "decode_MBps": tot["raw"] / 1e6 / tot["dec_s"],
        "max_err_over_bound": worst,
        "bits_per_value_lossy": lossy_bits / max(lossy_n, 1),
    }


def code_entropy(trace: dict[str, list[dict]], eb: float) -> float:
    """Zeroth-order entropy (bits/value) of plain quantization codes of the lossy-routed tensors."""
    policy = Policy.default("linear", mode="rel", eb=eb)
    bits = n = 0.0
    for rounds in trace.values():
        for tensors in rounds:
            for name, x in tensors.items():
                if policy.route(name, x).name != "linear":
                    continue
                abs_eb = ErrorBound("rel", eb).absolute(x)
                if abs_eb > 0:
                    bits += zeroth_order_entropy_bits(quantize(x, abs_eb).codes) * x.size
                    n += x.size
    return bits / max(n, 1)


CodecSpec = str | tuple[str, str, dict]


def compare_codecs(trace: dict[str, list[dict]], specs: list[CodecSpec], ebs: list[float],
                   progress: bool = True) -> list[dict]:
    """Every codec spec (a name, or (label, codec, params)) at every bound, side by side."""
    results = []
    for eb in ebs:
        entropy = code_entropy(trace, eb)
        for spec in specs:
            label, codec, params = (spec, spec, {}) if isinstance(spec, str) else spec
            res = bench_codec(trace, codec, eb, params, label)
            res["code_entropy_bits_per_value"] = entropy
            results.append(res)
            if progress:
                print(f"  REL {eb:g} {label:14s} ratio {res['ratio']:7.2f}  "
                      f"median(r>=2) {res['median_round_ratio_rounds2plus']:7.2f}  "
                      f"enc {res['encode_MBps']:6.1f} MB/s  dec {res['decode_MBps']:6.1f} MB/s  "
                      f"err/bound {res['max_err_over_bound']:.3f}", flush=True)
    return results


def run_bench(trace_dir: Path, codecs: list[CodecSpec], ebs: list[float], clients: int | None,
              progress: bool = True) -> dict:
    trace = load_trace(trace_dir, clients)
    results = compare_codecs(trace, codecs, ebs, progress)
    info = machine_info()
    return {"trace_dir": str(trace_dir), "clients": list(trace), "rounds": len(next(iter(trace.values()))),
            "machine": info, "results": results}


def plot_bench(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_codec: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in report["results"]:
        by_codec[r["codec"]].append((r["eb"], r["median_round_ratio_rounds2plus"] or r["ratio"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for codec, pts in by_codec.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=codec)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("REL error bound")
    ax.set_ylabel("compression ratio (median over rounds 2+)")
    ax.set_title("codecs on the same FL pseudo-gradients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(report: dict) -> None:
    sz3 = {r["eb"]: r["median_round_ratio_rounds2plus"] for r in report["results"] if r["codec"] == "sz3"}
    print(f"{'REL':>7} {'codec':11s} {'ratio':>8} {'vs sz3':>7} {'enc MB/s':>9} {'dec MB/s':>9} "
          f"{'bits/val':>9} {'H0 codes':>9} {'err/bnd':>8}")
    for r in report["results"]:
        med = r["median_round_ratio_rounds2plus"]
        rel = f"{med / sz3[r['eb']]:.3f}" if r["eb"] in sz3 and med else "   -"
        print(f"{r['eb']:7g} {r['codec']:11s} {med:8.2f} {rel:>7} {r['encode_MBps']:9.1f} "
              f"{r['decode_MBps']:9.1f} {r['bits_per_value_lossy']:9.3f} "
              f"{r['code_entropy_bits_per_value']:9.3f} {r['max_err_over_bound']:8.3f}")


def validate_specs(codecs: list[CodecSpec], ebs: list[float]) -> None:
    """Build every policy the benchmark will use, so an unknown codec, a bad parameter or a bad
    bound is refused (``CodecError``, one line) before any work starts."""
    if not codecs:
        raise CodecError("no codec to benchmark (--codecs is empty)")
    if not ebs:
        raise CodecError("no error bound to benchmark (--eb is empty)")
    for eb in ebs:
        for spec in codecs:
            codec, params = (spec, {}) if isinstance(spec, str) else (spec[1], spec[2])
            Policy.default(codec, mode="rel", eb=eb, **params)


def parse_bounds(text: str) -> list[float]:
    try:
        return [float(e) for e in str(text).split(",") if e.strip()]
    except ValueError:
        raise CodecError(f"--eb takes comma-separated numbers, got {text!r}") from None


def main_bench(args: argparse.Namespace) -> int:
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    ebs = parse_bounds(args.eb)
    validate_specs(codecs, ebs)
    if not Path(args.input).is_dir():
        raise FileNotFoundError(f"{args.input}: no such trace directory")
    report = run_bench(Path(args.input), codecs, ebs, args.clients)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot_bench(report, out.with_suffix(".png"))
    print_table(report)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0
