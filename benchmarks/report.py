"""Markdown tables of the committed benchmark results (what the README quotes).

    python benchmarks/report.py > /tmp/tables.md
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def codec_tables(report: dict) -> None:
    for trace, block in report["traces"].items():
        rows = block["results"]
        ebs = sorted({r["eb"] for r in rows})
        codecs = list(dict.fromkeys(r["codec"] for r in rows))
        by = {(r["codec"], r["eb"]): r for r in rows}
        print(f"\n**{trace}** — median compression ratio over rounds 2+ (whole payload), "
              "and in parentheses the ratio to `sz3` measured side by side:\n")
        print("| codec | " + " | ".join(f"REL {e:g}" for e in ebs) + " | enc MB/s | dec MB/s |")
        print("|---|" + "---|" * (len(ebs) + 2))
        for c in codecs:
            cells = []
            for e in ebs:
                r, s = by[(c, e)], by[("sz3", e)]
                m, ms = r["median_round_ratio_rounds2plus"], s["median_round_ratio_rounds2plus"]
                cells.append(f"{m:.2f} ({m / ms:.2f}x)")
            mid = by[(c, 1e-2)] if (c, 1e-2) in by else by[(c, ebs[0])]
            print(f"| `{c}` | " + " | ".join(cells)
                  + f" | {mid['encode_MBps']:.0f} | {mid['decode_MBps']:.0f} |")
        worst = max(r["max_err_over_bound"] for r in rows if r["codec"] not in ("qsgd",))
        print(f"\nmax error / bound over every element of every pointwise-bounded codec: {worst:.4f}"
              " (speeds at REL 1e-2, whole-payload, 2 shared cores)")


def ablation_tables(report: dict) -> None:
    for trace, rows in report["ablation"].items():
        ebs = sorted({r["eb"] for r in rows})
        labels = list(dict.fromkeys(r["codec"] for r in rows))
        by = {(r["codec"], r["eb"]): r["median_round_ratio_rounds2plus"] for r in rows}
        print(f"\n**{trace}** ablation (median ratio, rounds 2+):\n")
        print("| variant | " + " | ".join(f"REL {e:g}" for e in ebs) + " |")
        print("|---|" + "---|" * len(ebs))
        for lab in labels:
            print(f"| {lab} | " + " | ".join(f"{by[(lab, e)]:.2f}" for e in ebs) + " |")


def accuracy_table(report: dict) -> None:
    print("\n| uplink codec | REL bound | final acc | best acc | mean of last 3 rounds |")
    print("|---|---|---|---|---|")
    for r in report["accuracy"]:
        eb = "-" if r["eb"] is None else f"{r['eb']:g}"
        print(f"| {r['codec']} | {eb} | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} "
              f"| {r['mean_last3']:.4f} |")


def main() -> None:
    grad = _load("grad.json")
    if grad:
        print("## codecs (benchmarks/results/grad.json)")
        print(f"command: `{grad['machine']['command']}`, commit {grad['machine']['git_commit']}")
        codec_tables(grad)
        ablation_tables(grad)
        accuracy_table(grad)
    for name in ("fast_codec.json", "fl_strategies.json", "fl_bandwidth.json", "fl_scale.json"):
        data = _load(name)
        if data:
            print(f"\n## {name}: command `{data.get('command') or data['machine'].get('command')}`")
            print(json.dumps(data.get("summary") or data.get("rows") or data.get("results"),
                             indent=None)[:3000])


if __name__ == "__main__":
    main()
