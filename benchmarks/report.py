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


def bandwidth_table(d: dict) -> None:
    """Per uplink codec: ratio, upload seconds at 1 Mbit/s, codec seconds, sim time per link."""
    rows = d["rows"]
    g = {(r["codec"], r["up_mbps"]): r for r in rows}
    ups = sorted({r["up_mbps"] for r in rows})
    base = g.get(("none", ups[0]))
    speeds = d["setting"].get("codec_speed_mb_s") or {}
    print(f"\n(timing {d['setting']['args']['timing']}, {d['setting']['rounds']} rounds; "
          "throughputs MB/s enc/dec: "
          + ", ".join(f"{c} {v['encode_mb_s']:.0f}/{v['decode_mb_s']:.0f}" for c, v in speeds.items())
          + ")\n")
    print(f"| uplink codec | ratio | upload s @{ups[0]:g} Mbit/s | codec s (summed) | "
          + " | ".join(f"sim s @{u:g}" for u in ups) + " | final acc |")
    print("|---|---|---|---|" + "---|" * len(ups) + "---|")
    for c in dict.fromkeys(r["codec"] for r in rows):
        r1 = g[(c, ups[0])]
        less = f" ({100 * (1 - r1['upload_s_sum'] / base['upload_s_sum']):.1f}% less)" if base else ""
        codec_s = r1["client_encode_s_sum"] + r1.get("decode_s_sum", r1.get("server_decode_s_sum", 0.0))
        print(f"| `{c}` | {r1['compression_ratio_up'] or 1:.2f} | {r1['upload_s_sum']:.1f}{less} | "
              f"{codec_s:.2f} | " + " | ".join(f"{g[(c, u)]['sim_time']:.2f}" for u in ups)
              + f" | {r1['final_accuracy']:.3f} |")


def fedfa_table(d: dict) -> None:
    """Per setting and rule: time to target, speedups vs FedAvg and FedBuff, idle fraction."""
    target = d["setting"]["args"]["target"]
    runs = {(r["setting"], r["strategy"]): r for r in d["runs"]}
    print(f"\n| setting | rule | time to {target:g} (sim s) | vs FedAvg | vs FedBuff | best acc "
          "| idle fraction | clients taking part |")
    print("|---|---|---|---|---|---|---|---|")

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    for setting, rows in d["summary"].items():
        for rule, row in rows.items():
            t, r = row["median_time_to_target"], runs[(setting, rule)]
            print(f"| {setting} | {rule} | {'missed' if t is None else f'{t:.1f}'} | "
                  f"{x(row['speedup_vs_fedavg'])} | {x(row.get('speedup_vs_fedbuff'))} | "
                  f"{row['median_best_accuracy']:.3f} | {r['idle_fraction']:.2f} | "
                  f"{r['participating_clients']} |")


def main() -> None:
    grad = _load("grad.json")
    if grad:
        print("## codecs (benchmarks/results/grad.json)")
        print(f"command: `{grad['machine']['command']}`, commit {grad['machine']['git_commit']}")
        codec_tables(grad)
        ablation_tables(grad)
        accuracy_table(grad)
    for name, table in (("fl_bandwidth.json", bandwidth_table), ("fl_fedfa_sweep.json", fedfa_table)):
        data = _load(name)
        if data:
            print(f"\n## {name}: command `{data['command']}`, commit {data['git']['commit']}")
            table(data)
    for name in ("fast_codec.json", "fl_strategies.json", "fl_scale.json"):
        data = _load(name)
        if data:
            print(f"\n## {name}: command `{data.get('command') or data['machine'].get('command')}`")
            print(json.dumps(data.get("summary") or data.get("rows") or data.get("results"),
                             indent=None)[:3000])


if __name__ == "__main__":
    main()
