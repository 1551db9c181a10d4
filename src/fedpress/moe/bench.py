"""The offloading benchmark: tokens/s, bytes moved and hit rate against budget, codec, policy.

Why these baselines: "fully resident" is the speed ceiling; "uncompressed offloading" (``raw``
experts read from a memory-mapped file) is what compression must beat on bytes moved and match
on tokens/s. Accuracy per codec is scored with every expert replaced by its decoded copy, which
is exactly what the offloaded runtime computes (same tensors, same arithmetic).

Also measured here: each weight codec's decode throughput next to the copy it saves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .layout import find_moe_layers, iter_experts
from .runtime import OffloadRuntime, measure_generation, parse_budget
from .store import CodecPlan, ExpertStore
from .weight_codec import CodecSpec, decode_expert, encode_expert

T = TypeVar("T")


def codec_throughput(layers: list[Any], specs: list[str], samples: int = 8, device: str = "cpu") -> list[dict[str, Any]]:
    """Decode MB/s (of decoded float32) per codec on real experts, next to a plain copy."""
    experts = [layers[(i * 7) % len(layers)].expert_tensors(i % layers[0].num_experts) for i in range(samples)]
    raw = sum(a.nbytes for x in experts for a in x.values())
    out = []
    t0 = time.perf_counter()
    for x in experts:
        for a in x.values():
            t = torch.from_numpy(a).to(device, copy=True)
    if device != "cpu":
        torch.cuda.synchronize()
    copy_s = time.perf_counter() - t0
    out.append({"codec": "copy (raw float32)", "decoded_MBps": raw / copy_s / 1e6, "ratio": 1.0})
    for text in specs:
        spec = CodecSpec.parse(text)
        payloads = [encode_expert(x, spec) for x in experts]
        decode_expert(payloads[0], device)  # warm-up (numba, allocators)
        t0 = time.perf_counter()
        for p in payloads:
            decode_expert(p, device)
        dt = time.perf_counter() - t0
        out.append({"codec": text, "decoded_MBps": raw / dt / 1e6,
                    "ratio": raw / sum(len(p) for p in payloads), "device": device})
    del t
    return out


@torch.no_grad()
def decoded_accuracy(model: Any, store: ExpertStore, evaluate: Callable[[Any], T]) -> T:
    """Score the model with every expert replaced by its decoded copy from ``store`` (restored after)."""
    layers = find_moe_layers(model)
    saved = {}
    try:
        for x in layers:
            for e in range(x.num_experts):
                saved[(x.index, e)] = x.expert_tensors(e)
                dec, _, _ = store.load(x.index, e)
                x.set_expert(e, {k: v.numpy() for k, v in dec.items()})
        return evaluate(model)
    finally:
        for x in layers:
            for e in range(x.num_experts):
                if (x.index, e) in saved:
                    x.set_expert(e, saved[(x.index, e)])


def run_bench(model: Any, prompts: list[torch.Tensor], cfg: Any, store_root: Path,
              evaluate: Callable[[Any], dict[str, float]] | None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Resident baseline, then per codec: store size, accuracy, and per budget x policy a run."""
    layers = find_moe_layers(model)
    total = sum(x.num_experts for x in layers)
    expert_bytes = layers[0].expert_numel() * 4
    res: dict[str, Any] = {"experts": total, "expert_bytes": expert_bytes, "runs": [], "codecs": []}
    resident = measure_generation(model, prompts, cfg.max_new_tokens)
    res["resident"] = {k: v for k, v in resident.items() if k != "outputs"}
    progress(f"resident: {resident['tokens_per_s']:.2f} tokens/s")
    reference_outputs = resident["outputs"]
    for text in cfg.codecs:
        spec = CodecSpec.parse(text)
        where = store_root / spec.name.replace("/", "_") / str(abs(hash(str(spec))))
        t0 = time.perf_counter()
        store = ExpertStore.build(iter_experts(layers), CodecPlan(spec), [x.index for x in layers], where)
        row: dict[str, Any] = {"codec": str(spec), "stored_bytes": store.stored_bytes,
                               "raw_bytes": store.raw_bytes, "ratio": store.raw_bytes / store.stored_bytes,
                               "encode_s": time.perf_counter() - t0, "bounded": spec.bounded}
        if evaluate is not None and not spec.lossless:
            row["accuracy"] = decoded_accuracy(model, store, evaluate)
        elif evaluate is not None and getattr(cfg, "lossless_accuracy", True):
            row["accuracy"] = evaluate(model)  # bit-exact offloading: the resident model's score
        res["codecs"].append(row)
        progress(f"codec {spec}: ratio {row['ratio']:.2f}" + (
            f", format {row['accuracy']['acc_format']:.2f}" if "accuracy" in row else ""))
        for budget in cfg.budgets:
            slots = parse_budget(budget, expert_bytes, total)
            for pol in cfg.policies:
                policy, _, pre = pol.partition("+")
                rt = OffloadRuntime(model, store, slots, policy, prefetch=pre == "prefetch", keep=True)
                try:
                    m = measure_generation(model, prompts, cfg.max_new_tokens, rt)
                finally:
                    rt.close()
                m["same_tokens_as_resident"] = m.pop("outputs") == reference_outputs
                res["runs"].append({"codec": str(spec), "budget": budget, "policy": pol, **m})
                progress(f"  {budget:>6} {pol:<13} {m['tokens_per_s']:.2f} tok/s, "
                         f"{m['bytes_per_token'] / 1e6:.2f} MB/token, hit {m['hit_rate']:.2f}")
        store.close()
    return res


def bar_check(res: dict[str, Any], budget: str = "25%", baseline: str = "raw") -> list[dict[str, Any]]:
    """The issue's bar at ``budget``: bytes <= 1/4 of raw offloading and tokens/s >= it."""
    runs = [r for r in res["runs"] if r["budget"] == budget]
    base = {r["policy"]: r for r in runs if r["codec"] == baseline}
    acc = {c["codec"]: c.get("accuracy") for c in res["codecs"]}
    base_acc = acc.get(baseline)
    out = []
    for r in runs:
        b = base.get(r["policy"])
        if r["codec"] == baseline or b is None:
            continue
        a = acc.get(r["codec"])
        drop = (base_acc["acc_format"] - a["acc_format"]) if a and base_acc else float("nan")
        out.append({
            "codec": r["codec"], "policy": r["policy"],
            "bytes_share": r["bytes_per_token"] / max(b["bytes_per_token"], 1e-9),
            "speed_ratio": r["tokens_per_s"] / max(b["tokens_per_s"], 1e-9),
            "accuracy_drop_points": 100 * drop if np.isfinite(drop) else None,
        })
    return out


def interleaved_speed(model: Any, prompts: list[torch.Tensor], stores: dict[str, ExpertStore], slots: int,
                      policies: list[str], repeats: int, max_new_tokens: int,
                      reference: list[list[int]] | None = None,
                      progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every store under every policy, ``repeats`` times, alternating the order each round.

    Why interleaved: on a shared machine the load drifts by 2-4x over minutes; running the
    codecs one after another inside each round exposes them to the same load, and the per-round
    ratio (``speed_summary``) cancels most of the drift.
    """
    rows: list[dict[str, Any]] = []
    names = list(stores)
    for rep in range(repeats):
        for pol in policies:
            policy, _, pre = pol.partition("+")
            for name in names if rep % 2 == 0 else names[::-1]:
                rt = OffloadRuntime(model, stores[name], slots, policy, prefetch=pre == "prefetch", keep=True)
                try:
                    m = measure_generation(model, prompts, max_new_tokens, rt)
                finally:
                    rt.close()
                out = m.pop("outputs")
                if reference is not None:
                    m["same_tokens_as_resident"] = out == reference
                rows.append({"plan": name, "policy": pol, "round": rep, **m})
                progress(f"  round {rep} {pol:<13} {name:<40} {m['tokens_per_s']:.3f} tok/s, "
                         f"{m['bytes_per_token'] / 1e6:.1f} MB/token, hit {m['hit_rate']:.2f}")
    return rows


def speed_summary(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Per plan and policy: median tokens/s and bytes/token, and the median per-round ratio to
    ``baseline`` (tokens/s and bytes), with each round's ratio listed."""
    out = []
    for pol in dict.fromkeys(r["policy"] for r in rows):
        base = {r["round"]: r for r in rows if r["policy"] == pol and r["plan"] == baseline}
        for name in dict.fromkeys(r["plan"] for r in rows):
            mine = [r for r in rows if r["policy"] == pol and r["plan"] == name]
            speed = [r["tokens_per_s"] / base[r["round"]]["tokens_per_s"] for r in mine if r["round"] in base]
            share = [r["bytes_per_token"] / max(base[r["round"]]["bytes_per_token"], 1e-9) for r in mine
                     if r["round"] in base]
            out.append({
                "plan": name, "policy": pol, "rounds": len(mine),
                "tokens_per_s_median": float(np.median([r["tokens_per_s"] for r in mine])),
                "bytes_per_token_median": float(np.median([r["bytes_per_token"] for r in mine])),
                "hit_rate_median": float(np.median([r["hit_rate"] for r in mine])),
                "speed_ratio_median": float(np.median(speed)) if speed else None,
                "speed_ratios": speed, "bytes_share_median": float(np.median(share)) if share else None,
                "same_tokens_as_resident": all(r.get("same_tokens_as_resident", True) for r in mine),
            })
    return out
