"""Tables (markdown) and plots from the MoE study and benchmark JSON files.

    python benchmarks/bench_moe_report.py benchmarks/results/moe_study/study.json \
        benchmarks/results/moe_study_b/study.json --bench benchmarks/results/moe_bench/bench.json \
        --out benchmarks/results/moe_study [--repeats benchmarks/results/moe_study_seed*/study.json]

Several study JSON files (parallel runs of disjoint conditions on the same model, items and
baseline) are merged; the merged JSON and the plots go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedpress.moe.plots import plot_p_sweep, plot_study

PAPER = {  # Moonlight-16B-A3B on GSM8K, all experts of a layer at p = 80% (ICA / PIA)
    "shallow": "layer 1: 0.33 / 0.71 (base 0.86 / 0.96)",
    "middle": "layer 13: 0.38 / 0.65; layer 20: 0.61 / 0.80",
    "deep": "layer 26: 0.85 / 0.90; its top expert alone: ICA 0.96 (improves)",
}


def merge(paths: list[Path]) -> dict:
    parts = [json.loads(p.read_text()) for p in paths]
    out = dict(parts[0])
    out["conditions"] = [c for p in parts for c in p["conditions"]]
    out["baselines"] = [p["baseline"] for p in parts]
    out["sources"] = [str(p) for p in paths]
    return out


def where(c: dict, groups: dict) -> str:
    if c["layer"] is not None:
        return f"L{c['layer']} ({groups.get(str(c['layer']), groups.get(c['layer'], '?'))})"
    return c["group"]


def study_table(res: dict) -> str:
    b = res["baseline"]
    rows = ["| experts perturbed | mode | p | rel. L2 error | format (ICA) | content (PIA) |",
            "|---|---|---|---|---|---|",
            f"| none (baseline) | - | - | 0 | {b['acc_format']:.2f} | {b['acc_content']:.2f} |"]
    key = {"layer": 0, "top1": 1, "topk": 2, "one": 3, "group_top1": 4}
    for c in sorted(res["conditions"], key=lambda c: (key.get(c["selector"], 9), c["layer"] if c["layer"] is not None else 99,
                                                      c["group"] or "", c["mode"], c["p"])):
        sel = {"layer": "all of", "top1": "top-1 of", "topk": "top-k of", "one": "one rare of",
               "group_top1": "top-1 of every layer,"}[c["selector"]]
        rows.append(f"| {sel} {where(c, res['groups'])} | {c['mode']} | {c['p']} | {c['rel_l2']:.2f} | "
                    f"{c['acc_format']:.2f} | {c['acc_content']:.2f} |")
    return "\n".join(rows)


def stats_table(res: dict) -> str:
    rows = ["| layer | group | utilisation | entropy / max (bits) | Gini | top expert share |", "|---|---|---|---|---|---|"]
    for s in res["layer_stats"]:
        if s["layer"] % 3 and s["layer"] != 29:
            continue
        share = max(s["counts"]) / max(sum(s["counts"]), 1)
        rows.append(f"| {s['layer']} | {res['groups'].get(str(s['layer']), '')} | {s['utilisation']:.2f} | "
                    f"{s['entropy_bits']:.2f} / {s['max_entropy_bits']:.0f} | {s['gini']:.2f} | {share:.2f} |")
    return "\n".join(rows)


def bench_tables(b: dict) -> str:
    rows = [f"Fully resident: {b['resident']['tokens_per_s']:.2f} tokens/s. Experts: {b['experts']} x "
            f"{b['expert_bytes'] / 1e6:.2f} MB decoded.", "",
            "| codec | stored MB | ratio | accuracy (format / content) |", "|---|---|---|---|"]
    for c in b["codecs"]:
        acc = c.get("accuracy")
        a = f"{acc['acc_format']:.2f} / {acc['acc_content']:.2f}" if acc else "= resident (bit-exact)"
        rows.append(f"| {c['codec']} | {c['stored_bytes'] / 1e6:.1f} | {c['ratio']:.2f} | {a} |")
    rows += ["", "| codec | budget | policy | tokens/s | MB moved / token | hit rate | decode ms / token | stall ms / token | same tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in b["runs"]:
        rows.append(f"| {r['codec']} | {r['budget']} | {r['policy']} | {r['tokens_per_s']:.3f} | "
                    f"{r['bytes_per_token'] / 1e6:.1f} | {r['hit_rate']:.2f} | {r['decode_ms_per_token']:.0f} | "
                    f"{r['stall_ms_per_token']:.0f} | {r['same_tokens_as_resident']} |")
    if b.get("decode_throughput"):
        rows += ["", "| weight codec | decode MB/s (decoded float32, CPU) | ratio |", "|---|---|---|"]
        for t in b["decode_throughput"]:
            rows.append(f"| {t['codec']} | {t['decoded_MBps']:.0f} | {t['ratio']:.2f} |")
    if b.get("bar_25pct"):
        rows += ["", "| bar at 25% | policy | bytes vs raw | tokens/s vs raw |", "|---|---|---|---|"]
        for r in b["bar_25pct"]:
            rows.append(f"| {r['codec']} | {r['policy']} | {r['bytes_share']:.2f} | {r['speed_ratio']:.2f} |")
    return "\n".join(rows)


def bar_tables(b: dict) -> str:
    """Tables of ``benchmarks/bench_moe_bar.py``'s JSON: quality per plan, then speed."""
    rows = ["| task | items | resident format | resident content |", "|---|---|---|---|"]
    for name, t in b["tasks"].items():
        rows.append(f"| {name} | {t['items']} | {t['acc_format']:.3f} +- {t['acc_format_se']:.3f} | "
                    f"{t['acc_content']:.3f} +- {t['acc_content_se']:.3f} |")
    r = b.get("resident_pooled")
    rows.append(f"| pooled | {r['n']} | {r['acc_format']:.3f} +- {r['acc_format_se']:.3f} | "
                f"{r['acc_content']:.3f} +- {r['acc_content_se']:.3f} |") if r else None
    rows = [x for x in rows if x is not None]
    rows += ["", "| plan | ratio | format | format vs resident (lost/gained) | content vs resident | "
             "identical replies | reply prefix kept |", "|---|---|---|---|---|---|---|"]
    for p in b["plans"]:
        q = p["pooled"]
        f, c, t = q["format_vs_ref"], q["content_vs_ref"], q["tokens_vs_ref"]
        rows.append(f"| `{p['plan']}` | {p['ratio']:.2f} | {q['acc_format']:.3f} | {100 * f['diff']:+.1f} +- "
                    f"{100 * f['diff_se']:.1f} pts ({f['lost']:.0f}/{f['gained']:.0f}) | {100 * c['diff']:+.1f} +- "
                    f"{100 * c['diff_se']:.1f} pts ({c['lost']:.0f}/{c['gained']:.0f}) | {t['identical']:.2f} | {t['prefix']:.3f} |")
    if b.get("speed_summary"):
        rs = b.get("resident_speed", {})
        rows += ["", f"Fully resident: {rs.get('tokens_per_s', float('nan')):.3f} tokens/s.", "",
                 "| policy | plan | tokens/s (median) | x raw (median of rounds) | rounds | MB moved / token | "
                 "bytes vs raw | hit rate |", "|---|---|---|---|---|---|---|---|"]
        for s in b["speed_summary"]:
            rows.append(f"| {s['policy']} | `{s['plan']}` | {s['tokens_per_s_median']:.3f} | {s['speed_ratio_median']:.2f} | "
                        f"{', '.join(f'{v:.2f}' for v in s['speed_ratios'])} | {s['bytes_per_token_median'] / 1e6:.1f} | "
                        f"{s['bytes_share_median']:.3f} | {s['hit_rate_median']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("study", nargs="*", type=Path)
    p.add_argument("--bench", type=Path)
    p.add_argument("--bar", type=Path, help="JSON of benchmarks/bench_moe_bar.py")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/moe_study"))
    p.add_argument("--repeats", nargs="*", type=Path, default=[],
                   help="study JSON of repeated draws (other noise seeds): in the p-sweep plot only")
    a = p.parse_args()
    if a.study:
        res = merge(a.study)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "study_merged.json").write_text(json.dumps(res, indent=1))
        plot_study(res, a.out)
        plot_p_sweep(res, a.out, [json.loads(r.read_text()) for r in a.repeats])
        print(study_table(res), "\n")
        print(stats_table(res), "\n")
        for g, text in PAPER.items():
            print(f"- paper, {g}: {text}")
        print()
    if a.bench:
        print(bench_tables(json.loads(a.bench.read_text())))
    if a.bar:
        print(bar_tables(json.loads(a.bar.read_text())))


if __name__ == "__main__":
    main()
