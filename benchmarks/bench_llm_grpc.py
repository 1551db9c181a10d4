"""Federated LoRA on the embedded SmolLM2-135M over real gRPC processes (``fedpress launch``),
and the same config simulated in-process (``fedpress llm run``) for reference.

Writes ``OUT/llm_grpc.json``: the exact commands, git commit, machine info (load average
included: wall times on a shared machine are upper bounds), and per run the wall time, bytes on
the wire (transport-measured, framing included) next to the codec payload bytes, codec seconds
per side, global loss / perplexity / task accuracy and local metrics. The gRPC run directory's
``summary.json``, ``events.jsonl``, ``config.yaml`` and process logs are copied to
``OUT/launch/`` (not its ``secrets/``).

    nice -n 5 env OMP_NUM_THREADS=1 python benchmarks/bench_llm_grpc.py \\
        --out benchmarks/results/llm_grpc [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedpress.bench.machine import machine_info

# llm_quick.yaml sized to a few minutes per run on a loaded 2-core machine
DEFAULTS = ["run.rounds=2", "codec.name=fast", "codec.eb=0.01", "data.eval_items=20",
            "eval.local_task=false", "run.torch_threads=1", "run.plots=false"]
KEEP = ("summary.json", "events.jsonl", "config.yaml")  # not the 0.9 MB adapter


def headline(s: dict) -> dict:
    keys = ("strategy", "versions", "updates", "wall_s", "bytes_up", "bytes_up_raw", "bytes_down",
            "wire_bytes", "codec_wall_s", "global_metrics", "local_metrics", "agg_errors", "stop_reason")
    return {k: s.get(k) for k in keys if k in s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--config", default="configs/llm_quick.yaml")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/llm_grpc")
    p.add_argument("--no-sim", action="store_true", help="skip the in-process reference run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    over = [*DEFAULTS, *args.overrides]
    py = [sys.executable, "-m", "fedpress.cli"]
    res: dict = {"command": " ".join([sys.executable, *sys.argv]), "config": args.config,
                 "clients": args.clients, "overrides": over, "machine_before": machine_info(),
                 "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "launch"
        cmd = [*py, "launch", args.config, "--clients", str(args.clients), "--run-dir", str(run_dir),
               "--client-timeout", "600", "--join-timeout", "1800", *over]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stderr[-4000:], file=sys.stderr)
            return r.returncode
        s = json.loads((run_dir / "summary.json").read_text())
        res["grpc"] = {"launch_command": " ".join(["fedpress", *cmd[3:]]).replace(str(run_dir), "RUN_DIR"),
                       "process_wall_s": wall, **headline(s)}
        dest = out / "launch"
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "logs").mkdir(parents=True)
        for name in KEEP:
            if (run_dir / name).is_file():
                shutil.copy(run_dir / name, dest / name)
        for log in (run_dir / "logs").glob("*.log"):
            shutil.copy(log, dest / "logs" / log.name)
        if not args.no_sim:
            sim_dir = Path(tmp) / "sim"
            cmd = [*py, "llm", "run", args.config, "--quiet", "--run-dir", str(sim_dir),
                   f"data.clients={args.clients}", *over]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-4000:], file=sys.stderr)
                return r.returncode
            sim = json.loads((sim_dir / "summary.json").read_text())
            res["simulation"] = {"command": " ".join(["fedpress", *cmd[3:]]).replace(str(sim_dir), "RUN_DIR"),
                                 "process_wall_s": time.perf_counter() - t0, **headline(sim)}
    res["loadavg_after"] = os.getloadavg()
    path = out / "llm_grpc.json"
    path.write_text(json.dumps(res, indent=2, default=float) + "\n")
    g = res["grpc"]
    print(f"grpc: wall {g['process_wall_s']:.0f}s (server loop {g.get('wall_s') or 0:.0f}s), "
          f"wire up {g['wire_bytes']['up']} B down {g['wire_bytes']['down']} B, "
          f"payload up {g['bytes_up']} B (raw {g['bytes_up_raw']} B), "
          f"global loss {g['global_metrics']['loss']:.4f} -> {path}")
    if "simulation" in res:
        print(f"simulation: global loss {res['simulation']['global_metrics']['loss']:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
