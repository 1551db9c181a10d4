"""End-to-end simulated communication time of uplink codecs at 1, 10 and 100 Mbps.

Setting: FedAvg on embedded MNIST, 20 clients x 100 samples (``--quick``: 10 x 60), cohorts of
10 (quick: 5), a fixed number of rounds (``--rounds``), small CNN; every client has the same
uplink (1, 10 or 100 Mbps), a 50 Mbps downlink carrying the raw model, 20 ms latency and
constant compute (1 ms/sample). Uplink codecs: ``grad``, ``fast`` and ``sz3`` (REL error bound
``--eb``), lossless (``zstd``) and ``none``. Timing is ``modeled`` by default: each codec's
encode/decode seconds are raw bytes over *its own* throughput, calibrated once on this machine
(``fedpress.fl.timing``; the table is stored in the JSON), client and server side, and ``none``
costs nothing; ``--timing measured`` charges the client's wall seconds instead (noisy).
Reported per (codec, uplink): total simulated time, summed upload seconds, encode and decode
seconds, bytes and compression ratio, final accuracy (what the lossy bound costs).

Writes ``benchmarks/results/fl_bandwidth[_quick].json`` and ``.png``.

    .venv/bin/python benchmarks/bench_fl_bandwidth.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fl_common import (  # noqa: E402
    RESULTS,
    ROOT,
    SCRATCH,
    provenance,
    pyplot,
    run_parallel,
    save_figure,
    write_json,
)

CODECS = ("grad", "fast", "sz3", "lossless", "none")
UPLINKS = (1.0, 10.0, 100.0)


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    from fedpress.experiment.run import run_experiment
    from fedpress.metrics.events import read_events

    t0 = time.perf_counter()
    s = run_experiment(job["config"], job["overrides"], run_dir=job["run_dir"])
    up = dl = enc = dec = 0.0
    for e in read_events(job["run_dir"]):
        if e["event"] == "arrival":
            up += e.get("upload_s", 0.0)
            dl += e.get("download_s", 0.0)
            enc += e.get("encode_s", 0.0)
            dec += e.get("server_decode_s", 0.0) + e.get("decode_s", 0.0)
    return {
        "codec": job["codec"],
        "up_mbps": job["up_mbps"],
        "sim_time": s["sim_time"],
        "upload_s_sum": up,
        "download_s_sum": dl,
        "client_encode_s_sum": enc,
        "decode_s_sum": dec,
        "bytes_up": s["bytes_up"],
        "bytes_up_raw": s["bytes_up_raw"],
        "compression_ratio_up": s["compression_ratio_up"],
        "final_accuracy": s["final_accuracy"],
        "updates": s["updates"],
        "wall_s": time.perf_counter() - t0,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    ups = sorted({r["up_mbps"] for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(codecs)
    for i, c in enumerate(codecs):
        xs = [j + i * width for j in range(len(ups))]
        sim = [next(r["sim_time"] for r in rows if r["codec"] == c and r["up_mbps"] == u) for u in ups]
        upl = [next(r["upload_s_sum"] for r in rows if r["codec"] == c and r["up_mbps"] == u) for u in ups]
        a1.bar(xs, sim, width, label=c)
        a2.bar(xs, upl, width, label=c)
    for a, title in ((a1, "total simulated time (s)"), (a2, "summed client upload time (s)")):
        a.set_xticks([j + 0.4 - width / 2 for j in range(len(ups))])
        a.set_xticklabels([f"{u:g} Mbps up" for u in ups])
        a.set_yscale("log")
        a.set_title(title)
        a.grid(alpha=0.3, axis="y")
        a.legend()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--codecs", default=",".join(CODECS))
    p.add_argument("--uplinks", default=",".join(f"{u:g}" for u in UPLINKS))
    p.add_argument("--eb", type=float, default=1e-2)
    p.add_argument("--rounds", type=int, default=None, help="default 20 (quick: 3)")
    p.add_argument("--timing", choices=["measured", "modeled"], default="modeled")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rounds = a.rounds or (3 if a.quick else 20)
    clients, spc, cohort = (10, 60, 5) if a.quick else (20, 100, 10)
    stem = RESULTS / ("fl_bandwidth_quick" if a.quick else "fl_bandwidth")
    jobs = []
    for codec in a.codecs.split(","):
        for up in (float(u) for u in a.uplinks.split(",")):
            jobs.append({
                "codec": codec,
                "up_mbps": up,
                "config": str(ROOT / "configs" / "fedavg_mnist.yaml"),
                "run_dir": str(SCRATCH / stem.name / f"{codec}-{up:g}"),
                "overrides": [
                    f"data.clients={clients}", f"data.samples_per_client={spc}",
                    "data.test_limit=1000", f"strategy.clients_per_round={cohort}",
                    f"codec.name={codec}", f"codec.eb={a.eb}", "codec.mode=rel",
                    "clients.compute={dist: constant, s_per_sample: 0.001}",
                    f"clients.network.tiers=[{{up_mbps: {up}, down_mbps: 50}}]",
                    "clients.network.latency_s=0.02", f"clients.timing={a.timing}",
                    f"run.seed={a.seed}", "run.max_sim_time=null", f"run.rounds={rounds}",
                    f"run.eval_every={rounds}", "run.eval_every_time=null", "run.plots=false",
                ],
            })
    # calibrate every codec once here, so parallel runs read one cached table
    from fedpress.fl.codec_adapter import CodecSpec
    from fedpress.fl.timing import codec_speed

    speeds = {}
    for codec in a.codecs.split(","):
        spec = CodecSpec(codec, "rel", a.eb)
        if not spec.is_raw:
            sp = codec_speed(spec)
            speeds[codec] = {"encode_mb_s": sp.encode_mb_s, "decode_mb_s": sp.decode_mb_s}
    print("calibrated codec throughputs (MB/s):", speeds, flush=True)
    t0 = time.perf_counter()
    rows = run_parallel(_run_one, jobs, a.workers)
    write_json(stem.with_suffix(".json"), {
        "benchmark": "fl_bandwidth",
        **provenance(),
        "setting": {"doc": __doc__.split("Writes")[0].strip(), "args": vars(a), "rounds": rounds,
                    "clients": clients, "samples_per_client": spc, "cohort": cohort,
                    "codec_speed_mb_s": speeds},
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
    })
    plot(rows, stem.with_suffix(".png"))
    for r in rows:
        print(f"{r['codec']:9s} {r['up_mbps']:6g} Mbps  sim {r['sim_time']:8.2f}s  "
              f"upload {r['upload_s_sum']:8.2f}s  encode {r['client_encode_s_sum']:6.2f}s  "
              f"ratio {r['compression_ratio_up'] or 0:6.2f}  acc {r['final_accuracy']:.3f}")
    print(f"wrote {stem.with_suffix('.json')} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
