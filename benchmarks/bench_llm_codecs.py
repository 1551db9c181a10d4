"""Bytes per round of LoRA adapter updates with and without compression, and what it costs.

Real adapter deltas: SmolLM2-135M with LoRA (config ``configs/llm_codecs.yaml``: r=4 on q,v,
AdamW), 3 IID clients, two FedAvg rounds computed once. Every codec/bound then encodes the same
round-1 and round-2 deltas through per-client streams (round 1 gives stateful codecs their
context), the decoded round-2 deltas are averaged into the global adapter, and that adapter is
evaluated (test loss, perplexity, task accuracy) next to the uncompressed one.

Per tensor, the same deltas are also coded one tensor per stream with ``grad``, ``fast``, ``sz3``
and ``sz3-nopred`` to check "no context codec may code any tensor worse than its context-free
mode" (``sz3-nopred`` is the context-free reference: plain quantization + entropy coding).

    python benchmarks/bench_llm_codecs.py [--tiny] [--out benchmarks/results/llm_codecs.json]
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
CODECS = [("none", None), ("lossless", None), ("fp16", None)] + [
    (c, eb) for eb in (1e-3, 1e-2, 1e-1) for c in ("sz3-nopred", "sz3", "fast", "grad")
]
PER_TENSOR = ("sz3-nopred", "sz3", "fast", "grad")


def weighted_mean(deltas, weights):
    w = np.asarray(weights, float) / np.sum(weights)
    return {k: sum(wi * d[k].astype(np.float64) for wi, d in zip(w, deltas, strict=True)).astype(np.float32)
            for k in deltas[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="tiny in-code model (smoke test)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "llm_codecs.yaml"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-task", action="store_true", help="skip task accuracy (generation)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_codecs.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fedpress.bench.machine import machine_info
    from fedpress.codec.stream import StreamDecoder, StreamEncoder
    from fedpress.fl.codec_adapter import CodecSpec
    from fedpress.llm.codecs import adapter_encoder, adapter_policy
    from fedpress.llm.config import load_llm_config
    from fedpress.llm.lora import get_adapter, set_adapter
    from fedpress.llm.models import tiny_causal_lm
    from fedpress.llm.simulation import load_model, prepare_llm
    from fedpress.llm.tasks import evaluate_task
    from fedpress.llm.train import LMTrainer, LMTrainSpec

    over = ["model.tiny=true", "data.seq_len=48"] if args.tiny else []
    cfg = load_llm_config(args.config, over + ["data.skew=iid"])
    inp = prepare_llm(cfg, tiny_causal_lm() if args.tiny else load_model(cfg))
    t = cfg.train
    trainer = LMTrainer(inp.model, inp.tok, inp.corpus.ids, inp.corpus.loss_start,
                        LMTrainSpec(t.lr, t.batch, t.local_steps, t.wd, t.grad_clip), cfg.eval.eval_batch)
    c = inp.corpus
    weights = [len(p) for p in inp.parts]
    g0 = get_adapter(inp.model)
    t0 = time.time()
    d1 = [trainer.train(g0, p, seed=100 + i)[0] for i, p in enumerate(inp.parts)]
    g1 = {k: g0[k] + v for k, v in weighted_mean(d1, weights).items()}
    d2 = [trainer.train(g1, p, seed=200 + i)[0] for i, p in enumerate(inp.parts)]
    train_s = time.time() - t0
    raw_round = sum(v.nbytes for d in d2 for v in d.values())

    def evaluate(params):
        set_adapter(inp.model, params)
        out = trainer.lm_metrics(c.test_ids)
        if not args.no_task and c.eval_items:
            out.update(evaluate_task(inp.model, inp.tok, c.eval_items, c.one_shot,
                                     cfg.eval.max_new_tokens, cfg.eval.gen_batch))
        return out

    rows = []
    for name, eb in CODECS:
        spec = CodecSpec(name, "rel", eb if eb is not None else 1e-2)
        encs = [adapter_encoder(spec, f"c{i}/up") for i in range(len(d2))]
        decs = [StreamDecoder() for _ in d2]
        b1 = []
        for e, dec, d in zip(encs, decs, d1, strict=True):  # round 1: gives stateful codecs context
            p1 = e.encode(d)
            b1.append(len(p1))
            dec.decode(p1)
        t1 = time.perf_counter()
        payloads = [e.encode(d) for e, d in zip(encs, d2, strict=True)]
        enc_s = time.perf_counter() - t1
        decoded = [dec.decode(p) for dec, p in zip(decs, payloads, strict=True)]
        err = max(float(np.abs(decoded[i][k] - d2[i][k]).max()) for i in range(len(d2)) for k in d2[i])
        g2 = {k: g1[k] + v for k, v in weighted_mean(decoded, weights).items()}
        m = evaluate(g2)
        row = {"codec": name, "eb": eb, "bytes_round2": sum(len(p) for p in payloads),
               "bytes_round1": sum(b1), "raw_bytes_round": raw_round,
               "ratio_round2": raw_round / sum(len(p) for p in payloads), "max_abs_err": err,
               "encode_s": enc_s, **m}
        rows.append(row)
        print(f"{name:>10} eb={eb}: {row['bytes_round2']} B (x{row['ratio_round2']:.2f}) "
              f"loss {m['loss']:.4f} acc {m.get('acc_format', float('nan')):.3f}", flush=True)

    per_tensor = []
    for eb in (1e-3, 1e-2, 1e-1):
        sizes = {c_: {} for c_ in PER_TENSOR}
        for c_ in PER_TENSOR:
            pol = adapter_policy(c_, "rel", eb, small=1)
            for k in d2[0]:
                enc = StreamEncoder(pol, stream_id=f"t/{k}")
                enc.encode({k: d1[0][k]})
                sizes[c_][k] = len(enc.encode({k: d2[0][k]}))
        ref = sizes["sz3-nopred"]
        summary = {"eb": eb}
        for c_ in PER_TENSOR:
            tot = sum(sizes[c_].values())
            worse = [k for k in ref if sizes[c_][k] > ref[k]]
            summary[c_] = {"total_bytes": tot, "gain_vs_sz3_nopred": 1 - tot / sum(ref.values()),
                           "tensors_worse_than_sz3_nopred": len(worse), "of": len(ref),
                           "worst_excess": max((sizes[c_][k] / ref[k] - 1 for k in worse), default=0.0)}
        per_tensor.append(summary)
        print(f"per tensor eb={eb}: " + ", ".join(
            f"{c_} {summary[c_]['gain_vs_sz3_nopred']:+.3f} ({summary[c_]['tensors_worse_than_sz3_nopred']} worse)"
            for c_ in PER_TENSOR), flush=True)

    res = {"command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
           "machine": machine_info(), "config": args.config, "config_resolved": cfg.model_dump(mode="json"), "tiny": args.tiny, "train_s": train_s,
           "clients": len(d2), "note": "GGUF weights were Q4_1 (4-bit) and come back as float32; "
           "every number carries that quantisation error already",
           "rows": rows, "per_tensor": per_tensor}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(out)
    return 0


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ref = next(r for r in rows if r["codec"] == "none")
    for name in ("sz3-nopred", "sz3", "fast", "grad"):
        rs = [r for r in rows if r["codec"] == name]
        axes[0].plot([r["eb"] for r in rs], [r["bytes_round2"] / 1e3 for r in rs], marker="o", label=name)
        axes[1].plot([r["eb"] for r in rs], [r["loss"] - ref["loss"] for r in rs], marker="o", label=name)
    for r in rows:
        if r["eb"] is None:
            axes[0].axhline(r["bytes_round2"] / 1e3, ls=":", color="gray")
            axes[0].text(1e-3, r["bytes_round2"] / 1e3, r["codec"], fontsize=7)
    axes[0].set(xscale="log", yscale="log", xlabel="REL error bound", ylabel="uplink kB per round",
                title="adapter bytes per round (3 clients)")
    axes[1].set(xscale="log", xlabel="REL error bound", ylabel="test loss - uncompressed",
                title="cost on the aggregated adapter")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
