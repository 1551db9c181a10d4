"""How often a compressed expert set changes the router's choices (teacher-forced, same inputs).

Why: on the default MoE even fp16 rounding of the experts changes a fifth of the greedy replies.
This checks the suspected cause: the router picks its top-k between near-equal scores, so a tiny
change in a layer's output swaps experts in later layers. Every model sees the same token ids
(one-shot prompts, no generation), so any difference comes from the weights alone.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_moe_routing.py --out benchmarks/results/moe_routing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpress.bench.machine import machine_info
from fedpress.llm import tasks as T
from fedpress.moe.bench import decoded_accuracy
from fedpress.moe.cli import load_model, model_dir
from fedpress.moe.config import load_moe_config
from fedpress.moe.layout import find_moe_layers, iter_experts, layer_group
from fedpress.moe.store import CodecPlan, ExpertStore


def routes(model: Any, layers: list[Any], batch: dict[str, torch.Tensor]) -> dict[int, dict[str, np.ndarray]]:
    """Per MoE layer: the chosen experts (sorted, per token) and the router logits."""
    got: dict[int, dict[str, np.ndarray]] = {}
    hooks = []
    for x in layers:
        def fn(module: Any, args: Any, out: Any, i: int = x.index, e: int = x.num_experts) -> None:
            outs = out if isinstance(out, tuple) else (out,)
            idx = next(t for t in outs if not torch.is_floating_point(t))
            logits = next(t for t in outs if torch.is_floating_point(t) and t.shape[-1] == e)
            got[i] = {"idx": np.sort(idx.reshape(-1, idx.shape[-1]).cpu().numpy(), axis=1),
                      "logits": logits.reshape(-1, logits.shape[-1]).float().cpu().numpy()}
        hooks.append(x.router.register_forward_hook(fn))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/moe_routing")
    p.add_argument("--items", type=int, default=12)
    p.add_argument("--plans", nargs="+", default=["fp16", "fixedrate:eb=0.0003,block=256,fit=1", "fixedrate:eb=0.01"])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_moe_config("configs/moe_default.yaml")
    model, tok = load_model(model_dir(cfg), 1)
    layers = find_moe_layers(model)
    items = T.make_items("add1", a.items + 1, seed=cfg.eval.seed)
    prompts = [T.build_prompt(tok, it, items[0]) for it in items[1:]]
    tok.padding_side = "left"
    batch = dict(tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False))
    real = batch["attention_mask"].reshape(-1).bool().numpy()  # padding positions are left out
    ref = routes(model, layers, batch)
    k = ref[layers[0].index]["idx"].shape[1]
    margins = []
    for x in layers:
        s = np.sort(ref[x.index]["logits"][real], axis=1)[:, ::-1]
        margins.append((s[:, k - 1] - s[:, k]) / (s.std(axis=1) + 1e-12))
    m = np.concatenate(margins)
    res: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "loadavg": os.getloadavg(),
                           "tokens": int(real.sum()), "top_k": int(k),
                           "margin_kth_vs_next_over_logit_std": {"median": float(np.median(m)),
                                                                  "p10": float(np.percentile(m, 10))},
                           "plans": []}
    n = len(layers)
    for text in a.plans:
        store = ExpertStore.build(iter_experts(layers), CodecPlan.parse(text), [x.index for x in layers])
        got = decoded_accuracy(model, store, lambda mdl: routes(mdl, layers, batch))
        per_layer = []
        for pos, x in enumerate(layers):
            diff = (got[x.index]["idx"][real] != ref[x.index]["idx"][real]).any(axis=1)
            per_layer.append({"layer": x.index, "group": layer_group(pos, n), "changed": float(diff.mean())})
        groups = {g: float(np.mean([r["changed"] for r in per_layer if r["group"] == g]))
                  for g in ("shallow", "middle", "deep")}
        row = {"plan": text, "ratio": store.raw_bytes / store.stored_bytes,
               "changed_all": float(np.mean([r["changed"] for r in per_layer])), "changed_by_group": groups,
               "changed_first_layer": per_layer[0]["changed"], "per_layer": per_layer}
        res["plans"].append(row)
        print(f"{text}: top-{k} set changed on {row['changed_all']:.3f} of (token, layer) pairs; "
              f"first layer {row['changed_first_layer']:.3f}; by group "
              + ", ".join(f"{g} {v:.3f}" for g, v in groups.items()), flush=True)
    print(f"router margin (k-th minus next logit, in logit std): median {res['margin_kth_vs_next_over_logit_std']['median']:.3f}, "
          f"p10 {res['margin_kth_vs_next_over_logit_std']['p10']:.3f}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
