"""Local LoRA training throughput (tokens/s): fedpress's LMTrainer vs a plain transformers+peft loop.

Same model, adapter, batch, sequence length, optimizer (AdamW) and gradient clipping; the two
loops alternate (A B A B ...) so a busy shared machine slows both alike, and the median of the
repeats is reported. Ours includes everything one dispatch does (adapter in, collation, a fresh
optimizer, adapter delta out).

    python benchmarks/bench_llm_throughput.py [--tiny] [--steps 4] [--repeats 3] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(model, batches, lr: float, clip: float) -> int:
    """The reference: what a user writes with transformers + peft."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    tokens = 0
    for b in batches:
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        tokens += int(b["attention_mask"].sum())
    model.eval()
    return tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="tiny in-code model (smoke test)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fedpress.bench.machine import machine_info
    from fedpress.llm.lora import LoraSpec, attach_lora, get_adapter
    from fedpress.llm.models import load_causal_lm, tiny_causal_lm
    from fedpress.llm.text import news_paragraphs, wiki_paragraphs
    from fedpress.llm.train import LMTrainer, LMTrainSpec, collate

    base, tok = tiny_causal_lm() if args.tiny else load_causal_lm()
    model = attach_lora(base, LoraSpec(args.rank, 2.0 * args.rank, ("q_proj", "v_proj")), seed=0)
    # full-length samples only, so both loops see exactly batch x seq tokens per step
    texts = [t for t in wiki_paragraphs() + news_paragraphs()]
    ids = [np.asarray(x[: args.seq], np.int32) for x in tok(texts, add_special_tokens=False)["input_ids"]
           if len(x) >= args.seq]
    spec = LMTrainSpec(lr=1e-3, batch=args.batch, local_steps=args.steps, grad_clip=1.0)
    trainer = LMTrainer(model, tok, ids, np.zeros(len(ids), np.int64), spec)
    idx = np.arange(len(ids))
    pad = trainer.pad_id
    ours, plain = [], []
    params = get_adapter(model)
    for r in range(args.repeats):
        rng = np.random.default_rng(r)
        bidx = trainer.batches(idx, rng)
        batches = [collate([ids[i] for i in b], np.zeros(len(b), np.int64), pad) for b in bidx]
        t0 = time.perf_counter()
        tok_plain = plain_loop(model, batches, spec.lr, 1.0)
        plain.append(tok_plain / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        _, _, m = trainer.train(params, idx, seed=r)
        ours.append(m["train_tokens"] / (time.perf_counter() - t0))
        print(f"repeat {r}: ours {ours[-1]:.1f} tok/s, plain {plain[-1]:.1f} tok/s", flush=True)
    res = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "model": "tiny" if args.tiny else "SmolLM2-135M-Instruct (Q4_1 GGUF as float32)",
        "setup": {"batch": args.batch, "seq": args.seq, "steps": args.steps, "rank": args.rank,
                  "targets": ["q_proj", "v_proj"], "threads": args.threads, "repeats": args.repeats},
        "ours_tokens_per_s": ours,
        "plain_tokens_per_s": plain,
        "ours_median": float(np.median(ours)),
        "plain_median": float(np.median(plain)),
        "ratio_median": float(np.median(ours) / np.median(plain)),
        "ratio_per_repeat": [o / p for o, p in zip(ours, plain, strict=True)],
        "median_of_ratios": float(np.median([o / p for o, p in zip(ours, plain, strict=True)])),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"ours {res['ours_median']:.1f} tok/s, plain {res['plain_median']:.1f} tok/s, "
          f"ratio {res['ratio_median']:.3f}, median of paired ratios {res['median_of_ratios']:.3f} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
