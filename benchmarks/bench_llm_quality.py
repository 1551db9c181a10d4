"""Cross-check of the two quality definitions: does perplexity under the base model rise with
the corruption tier? Mean token NLL per tier on the same text passages, corrupted at each tier.

Each of ``--n`` clean passages (Wikipedia + news, ``--seq`` tokens) is scored at every tier's
corruption rate, so tiers differ only by the corruption. Reports the mean NLL per tier with its
standard error, the fraction of passages whose NLL rises monotonically with the tier, and how
often the perplexity quantile bin of a (passage, tier) sample equals its tier.

    python benchmarks/bench_llm_quality.py [--tiny] [--n 40] [--seq 64]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_quality.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fedpress.bench.machine import machine_info
    from fedpress.llm.models import load_causal_lm, tiny_causal_lm
    from fedpress.llm.partition import bucketize
    from fedpress.llm.text import CORRUPTION_RATES, corrupt, news_paragraphs, wiki_paragraphs
    from fedpress.llm.train import LMTrainer, LMTrainSpec

    model, tok = tiny_causal_lm() if args.tiny else load_causal_lm()
    rng = np.random.default_rng(0)
    texts = wiki_paragraphs() + news_paragraphs()
    pick = [texts[i] for i in rng.permutation(len(texts))[: args.n]]
    vocab = sorted({w for t in texts[:400] for w in t.split()})
    # cut each passage to about seq tokens of clean text first, so every tier covers the same content
    clean = [tok.decode(tok(t, add_special_tokens=False)["input_ids"][: args.seq]) for t in pick]
    nll = np.zeros((len(clean), len(CORRUPTION_RATES)))
    trainer = LMTrainer(model, tok, [], [], LMTrainSpec(), eval_batch=1)
    for k, rate in enumerate(CORRUPTION_RATES):
        for i, t in enumerate(clean):
            ids = np.asarray(tok(corrupt(t, rate, np.random.default_rng([i, k]), vocab),
                                 add_special_tokens=False)["input_ids"], np.int64)
            nll[i, k] = trainer.lm_metrics([ids])["loss"]
        print(f"tier {k} (rate {rate}): mean NLL {nll[:, k].mean():.3f}", flush=True)
    flat = nll.reshape(-1)
    bins = bucketize(flat, len(CORRUPTION_RATES)).reshape(nll.shape)
    tiers = np.broadcast_to(np.arange(len(CORRUPTION_RATES)), nll.shape)
    res = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(), "model": "tiny" if args.tiny else "SmolLM2-135M-Instruct",
        "rates": list(CORRUPTION_RATES), "passages": len(clean), "seq": args.seq,
        "mean_nll_per_tier": nll.mean(0).tolist(),
        "sem_nll_per_tier": (nll.std(0, ddof=1) / np.sqrt(len(clean))).tolist(),
        "perplexity_per_tier": np.exp(nll.mean(0)).tolist(),
        "monotone_fraction": float(np.mean(np.all(np.diff(nll, axis=1) > 0, axis=1))),
        "bin_equals_tier": float(np.mean(bins == tiers)),
        "spearman_tier_vs_nll": float(np.corrcoef(np.argsort(np.argsort(flat)), tiers.reshape(-1))[0, 1]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("machine", "command")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
