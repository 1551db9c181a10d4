"""Expert load throughput on the default MoE: raw (memory-mapped) next to each fixedrate plan.

Every expert of the model is loaded once per round through the run-time path
(``ExpertStore.payload`` -> ``decode_expert``: CRC32 of header and frames, then decode), one
thread, no model compute ("load" rows); "frames" rows time the decoders alone on envelopes
parsed beforehand (for ``raw``: the copy out of the store). Per store and decoder: seconds for all experts, ms per expert and GB/s
of decoded float32 (the same experts for every row, so the rows compare directly). ``fixedrate``
is timed with both decoders: the fused numba kernel (the CPU default) and the torch ops (what a
GPU runs), so the gain of the kernel is measured, not assumed. Rounds alternate the order.

``raw`` is read from a memory-mapped file that was just written, i.e. from the page cache: the
most favourable case for raw (no disk read). Wall-clock figures are upper bounds on a shared
machine; the fastest round is the least disturbed one, the per-round time ratios cancel drift.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_moe_decode.py --out benchmarks/results/moe_bar_fused
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpress.bench.machine import machine_info
from fedpress.codec.base import get_codec
from fedpress.codec.wire import unpack
from fedpress.moe.cli import load_model, model_dir
from fedpress.moe.config import load_moe_config
from fedpress.moe.fixedrate import decode_torch
from fedpress.moe.layout import find_moe_layers, iter_experts
from fedpress.moe.store import CodecPlan, ExpertStore
from fedpress.moe.weight_codec import decode_expert


def time_store(store: ExpertStore, fused: bool | None) -> tuple[float, int]:
    """Seconds to load every expert of ``store`` once, and the decoded bytes."""
    decoded = 0
    t0 = time.perf_counter()
    for (layer, e) in store.entries:
        tensors, _ = decode_expert(store.payload(layer, e), "cpu", {"layer": layer, "expert": e}, fused)
        decoded += sum(t.numel() * 4 for t in tensors.values())
    return time.perf_counter() - t0, decoded


def time_frames(envs: list[Any], fused: bool | None) -> tuple[float, int]:
    """Seconds to decode only the frames (envelopes already parsed and checked): the decoder
    itself, without header parsing and CRCs. ``raw`` frames: the copy out of the store."""
    decoded = 0
    t0 = time.perf_counter()
    for env in envs:
        for entry, frame in zip(env.tensors, env.frames, strict=True):
            if entry.codec == "fixedrate":
                t = decode_torch(frame, entry.shape, "cpu", fused)
            else:
                t = torch.from_numpy(get_codec(entry.codec).decode(frame, entry.shape, np.float32))
            decoded += t.numel() * 4
    return time.perf_counter() - t0, decoded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/moe_bar_fused")
    p.add_argument("--plans", nargs="+", default=["fixedrate:eb=0.0003,block=256,fit=1", "fixedrate:eb=0.001,fit=1"])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_moe_config("configs/moe_default.yaml")
    model, _ = load_model(model_dir(cfg), 1)
    layers = find_moe_layers(model)
    idx = [x.index for x in layers]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "args": vars(a),
                           "loadavg_start": os.getloadavg(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="fedpress-moe-decode-") as tmp:
        stores = {"raw (mmap)": ExpertStore.build(iter_experts(layers), CodecPlan.parse("raw"), idx, Path(tmp) / "raw")}
        stores.update({c: ExpertStore.build(iter_experts(layers), CodecPlan.parse(c), idx) for c in a.plans})
        envs = {name: [unpack(st.payload(*k)) for k in st.entries] for name, st in stores.items()}
        runs = [("raw (mmap)", None)] + [(c, f) for c in a.plans for f in (True, False)]
        runs = [(name, fused, part) for part in ("load", "frames") for name, fused in runs]
        for name, fused, part in runs:  # warm-up: numba compile or cache load, page cache, allocator
            time_store(stores[name], fused) if part == "load" else time_frames(envs[name], fused)
        for rep in range(a.repeats):
            for name, fused, part in runs if rep % 2 == 0 else runs[::-1]:
                s, decoded = time_store(stores[name], fused) if part == "load" else time_frames(envs[name], fused)
                store = stores[name]
                res["rows"].append({"store": name, "decoder": {None: "copy", True: "fused", False: "torch"}[fused],
                                    "part": part, "round": rep, "experts": len(store.entries), "seconds": s,
                                    "ms_per_expert": 1e3 * s / len(store.entries), "decoded_GBps": decoded / s / 1e9,
                                    "stored_GBps": store.stored_bytes / s / 1e9, "stored_bytes": store.stored_bytes,
                                    "decoded_bytes": decoded})
        del envs  # views into the memory map
        stores["raw (mmap)"].close()
    res["loadavg_now"] = os.getloadavg()
    summary = []
    base = {(r["round"], r["part"]): r["seconds"] for r in res["rows"] if r["store"] == "raw (mmap)"}
    raw_bytes = next(r["stored_bytes"] for r in res["rows"] if r["store"] == "raw (mmap)")
    for key in dict.fromkeys((r["store"], r["decoder"], r["part"]) for r in res["rows"]):
        mine = [r for r in res["rows"] if (r["store"], r["decoder"], r["part"]) == key]
        summary.append({"store": key[0], "decoder": key[1], "part": key[2],
                        "ms_per_expert_median": float(np.median([r["ms_per_expert"] for r in mine])),
                        "ms_per_expert_min": float(min(r["ms_per_expert"] for r in mine)),
                        "decoded_GBps_median": float(np.median([r["decoded_GBps"] for r in mine])),
                        "time_vs_raw": [r["seconds"] / base[(r["round"], r["part"])] for r in mine],
                        "bytes_vs_raw": mine[0]["stored_bytes"] / raw_bytes})
    res["summary"] = summary
    (out / "decode.json").write_text(json.dumps(res, indent=1, default=str))
    for s in summary:
        print(f"{s['part']:<6} {s['store']:<38} {s['decoder']:<6} {s['ms_per_expert_median']:.3f} ms/expert "
              f"(fastest round {s['ms_per_expert_min']:.3f}), "
              f"{s['decoded_GBps_median']:.2f} GB/s decoded, time x{np.median(s['time_vs_raw']):.2f} of raw "
              f"(rounds {', '.join(f'{v:.2f}' for v in s['time_vs_raw'])}), bytes {s['bytes_vs_raw']:.3f} of raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
