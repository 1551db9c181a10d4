"""Issue 14's offloading bar, measured side by side in one run on the default MoE.

The bar, at a decoded-expert budget of 25% of all experts: a compressed plan that costs at most
1 point of accuracy against the resident model, moves at most 1/4 of the bytes of uncompressed
(memory-mapped ``raw``) offloading, and is not slower than it.

1. Quality: the resident model and each plan's decoded model (every expert replaced by its
   decoded copy: what the offloaded runtime computes, bit for bit) answer the same items of one
   or more tasks; accuracy with standard error, the paired difference, token agreement
   (``fedpress.moe.quality``).
2. Speed: ``raw`` from a memory-mapped file and the chosen plans from host memory, interleaved
   over ``--repeats`` rounds (``fedpress.moe.bench.interleaved_speed``); medians and per-round
   ratios. Wall-clock figures are upper bounds on a shared machine.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_moe_bar.py --out benchmarks/results/moe_bar
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

import torch

from fedpress.bench.machine import machine_info
from fedpress.llm import tasks as T
from fedpress.moe.bench import decoded_accuracy, interleaved_speed, speed_summary
from fedpress.moe.cli import load_model, model_dir
from fedpress.moe.config import load_moe_config
from fedpress.moe.layout import find_moe_layers, iter_experts
from fedpress.moe.quality import answer, compare, concat
from fedpress.moe.runtime import measure_generation, parse_budget
from fedpress.moe.store import CodecPlan, ExpertStore

#: two-digit addition (not a preset of ``llm.tasks``; same generator, two digits per term)
EXTRA_TASKS = {"add2": ("basic_arithmetic", dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2,
                                                 operators=("+",), allow_parentheses=False,
                                                 allow_negation=False))}


def log(msg: str) -> None:
    print(f"[bar {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/moe_bar")
    p.add_argument("--tasks", nargs="+", default=["add1", "addsub1"], help="task:items, e.g. add1:50")
    p.add_argument("--plans", nargs="+", default=["fast:eb=0.001", "fast:eb=0.002", "fixedrate:eb=0.005"],
                   help="codec or plan 'default;middle=codec' (see CodecPlan.parse)")
    p.add_argument("--speed-plans", nargs="*", default=None,
                   help="plans to time against raw (default: those meeting the bytes and accuracy bars, "
                        "else the most accurate one within the bytes bar)")
    p.add_argument("--max-speed-plans", type=int, default=2)
    p.add_argument("--policies", nargs="+", default=["lru+prefetch", "lfu"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=8, help="speed runs")
    p.add_argument("--eval-tokens", type=int, default=16, help="quality runs")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--budget", default="25%")
    p.add_argument("--threads", type=int, default=1, help="torch threads (quality runs may use more)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--speed-only", action="store_true", help="time --speed-plans against raw; no scoring")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    T.TASKS.update(EXTRA_TASKS)

    cfg = load_moe_config("configs/moe_default.yaml")
    path = model_dir(cfg)
    model, tok = load_model(path, a.threads)
    layers = find_moe_layers(model)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "args": vars(a),
                           "model_dir": str(path), "tasks": {}, "plans": [], "speed": [],
                           "loadavg_start": os.getloadavg()}

    def save() -> None:
        res["loadavg_now"] = os.getloadavg()
        (out / "bar.json").write_text(json.dumps(res, indent=1, default=str))

    sets = []
    for t in a.tasks:
        name, _, n = t.partition(":")
        items = T.make_items(name, int(n or 50) + 1, seed=cfg.eval.seed)
        sets.append((name, items[1:], items[0]))

    def generations(m: Any) -> list[Any]:
        return [answer(m, tok, items, one, a.eval_tokens, a.batch) for _, items, one in sets]

    if a.speed_only:
        if not a.speed_plans:
            p.error("--speed-only needs --speed-plans")
        sets, a.plans = [], []
    t0 = time.perf_counter()
    ref = generations(model)
    for (name, items, _), g in zip(sets, ref, strict=True):
        c = compare(g, g)
        res["tasks"][name] = {"items": len(items), "acc_format": c["acc_format"], "acc_format_se": c["acc_format_se"],
                              "acc_content": c["acc_content"], "acc_content_se": c["acc_content_se"]}
        log(f"resident {name} ({len(items)} items): format {c['acc_format']:.3f} +- {c['acc_format_se']:.3f}, "
            f"content {c['acc_content']:.3f} +- {c['acc_content_se']:.3f}")
    if ref:
        res["resident_pooled"] = {k: v for k, v in compare(concat(ref), concat(ref)).items()
                                  if k.startswith("acc") or k == "n"}
    res["resident_eval_s"] = time.perf_counter() - t0
    save()

    stores: dict[str, ExpertStore] = {}
    idx = [x.index for x in layers]
    for text in a.plans:
        plan = CodecPlan.parse(text)
        store = ExpertStore.build(iter_experts(layers), plan, idx)
        t1 = time.perf_counter()
        got = decoded_accuracy(model, store, generations)
        row: dict[str, Any] = {"plan": text, "ratio": store.raw_bytes / store.stored_bytes,
                               "stored_MB": store.stored_bytes / 1e6, "encode_s": store.encode_s,
                               "eval_s": time.perf_counter() - t1,
                               "per_task": {n: compare(r, g) for (n, _, _), r, g in zip(sets, ref, got, strict=True)},
                               "pooled": compare(concat(ref), concat(got))}
        pool = row["pooled"]
        row["meets_accuracy"] = pool["format_vs_ref"]["diff"] >= -0.01 and pool["content_vs_ref"]["diff"] >= -0.01
        res["plans"].append(row)
        stores[text] = store
        save()
        log(f"{text}: ratio {row['ratio']:.2f}; pooled format {pool['acc_format']:.3f} "
            f"(diff {pool['format_vs_ref']['diff']:+.3f} +- {pool['format_vs_ref']['diff_se']:.3f}, "
            f"lost {pool['format_vs_ref']['lost']:.0f} gained {pool['format_vs_ref']['gained']:.0f}), content diff "
            f"{pool['content_vs_ref']['diff']:+.3f}; identical replies {pool['tokens_vs_ref']['identical']:.2f}, "
            f"prefix {pool['tokens_vs_ref']['prefix']:.3f}")

    if a.skip_speed:
        return 0
    chosen = a.speed_plans
    if chosen is None:
        fit = [r for r in res["plans"] if r["ratio"] >= 4.0]
        ok = [r["plan"] for r in fit if r["meets_accuracy"]]
        best = sorted(fit, key=lambda r: (-r["pooled"]["format_vs_ref"]["diff"] - r["pooled"]["content_vs_ref"]["diff"],
                                          -r["pooled"]["tokens_vs_ref"]["prefix"]))
        chosen = (ok or [r["plan"] for r in best])[: a.max_speed_plans]
    res["speed_plans"] = chosen
    log(f"timing raw (memory-mapped) against {chosen}, {a.repeats} interleaved rounds")
    speed_items = T.make_items(a.tasks[0].partition(":")[0], a.prompts + 1, seed=cfg.eval.seed + 1)
    prompts = [tok(T.build_prompt(tok, it, speed_items[0]), return_tensors="pt", add_special_tokens=False)["input_ids"]
               for it in speed_items[1:]]
    resident = measure_generation(model, prompts, a.max_new_tokens)
    reference = resident.pop("outputs")
    res["resident_speed"] = resident
    slots = parse_budget(a.budget, layers[0].expert_numel() * 4, sum(x.num_experts for x in layers))
    with tempfile.TemporaryDirectory(prefix="fedpress-moe-bar-") as tmp:
        timed = {"raw (mmap)": ExpertStore.build(iter_experts(layers), CodecPlan.parse("raw"), idx, Path(tmp) / "raw")}
        timed.update({c: stores[c] if c in stores else ExpertStore.build(iter_experts(layers), CodecPlan.parse(c), idx)
                      for c in chosen})
        res["speed"] = interleaved_speed(model, prompts, timed, slots, a.policies, a.repeats, a.max_new_tokens,
                                         reference, progress=log)
        timed["raw (mmap)"].close()
    res["speed_summary"] = speed_summary(res["speed"], "raw (mmap)")
    save()
    for s in res["speed_summary"]:
        log(f"{s['policy']:<13} {s['plan']:<40} median {s['tokens_per_s_median']:.3f} tok/s, x{s['speed_ratio_median']:.2f} "
            f"of raw (rounds {', '.join(f'{v:.2f}' for v in s['speed_ratios'])}), bytes {s['bytes_share_median']:.3f} of raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
