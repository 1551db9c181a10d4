"""``fedpress llm {run,study,partition}``: argument parsing for the LLM subcommands."""

from __future__ import annotations

import argparse
import sys


def _progress(cfg):  # the same tqdm bar as ``fedpress run``
    from fedpress.experiment.run import _progress_bar

    return _progress_bar(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_llm_config
    from .run import run_llm

    cfg = load_llm_config(args.config, args.overrides)
    bar, hook = (None, None) if args.quiet else _progress(cfg)
    try:
        s = run_llm(cfg, run_dir=args.run_dir, on_progress=hook)
    finally:
        if bar is not None:
            bar.close()
    g, loc = s["global_metrics"], s["local_metrics"]
    last_err = s["agg_errors"][-1]["agg_rel_error"] if s["agg_errors"] else float("nan")

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    print(
        f"{s['strategy']}/{s['aggregation']} {s['skew']} a={s['alpha']:g}: global loss {f(g.get('loss'))} "
        f"ppl {f(g.get('perplexity'))} acc {f(g.get('acc_format'))}/{f(g.get('acc_content'))}; "
        f"local loss {f(loc.get('local_loss'))} acc {f(loc.get('local_acc_format'))}; "
        f"agg rel err {last_err:.3g}; up {s['bytes_up'] / 1e6:.3f} MB -> {s['run_dir']}"
    )
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .study import merge_studies, run_study

    if args.merge:
        if not args.out:
            raise ValueError("--merge needs --out")
        print(merge_studies(args.config, args.overrides, args.merge, args.out))
        return 0
    path = run_study(args.config, args.overrides, out_dir=args.out, progress=not args.quiet)
    print(path)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from .run import write_partition

    path = write_partition(args.config, args.overrides, out_dir=args.out)
    print(path)
    print(path.with_suffix(".png"))
    return 0


COMMANDS = {
    "run": (cmd_run, "one federated LoRA run"),
    "study": (cmd_study, "sweep alpha per skew; table and plots of local vs global metrics"),
    "partition": (cmd_partition, "per-client length and quality histograms (JSON + plot)"),
}


def _parser(name: str) -> argparse.ArgumentParser:
    sp = argparse.ArgumentParser(prog=f"fedpress llm {name}", description=COMMANDS[name][1])
    sp.add_argument("config", help="YAML config (see configs/llm_*.yaml)")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.skew=length")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    if name == "run":
        sp.add_argument("--run-dir", default=None, help="default: run.out_dir/<run name>")
    else:
        sp.add_argument("--out", default=None, help="output folder")
    if name == "study":
        sp.add_argument("--merge", nargs="+", metavar="STUDY_JSON",
                        help="merge finished studies of CONFIG (e.g. one seed each) into --out instead of running")
    return sp


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedpress llm``: ``run``, ``study`` or ``partition`` CONFIG [key=value ...]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {k:<10} {h}" for k, (_, h) in COMMANDS.items())
        print(f"usage: fedpress llm {{{','.join(COMMANDS)}}} CONFIG [key=value ...]\n{lines}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    args = _parser(name).parse_intermixed_args(argv[1:])
    from fedpress.codec.errors import CodecError
    from fedpress.config import ConfigError

    from .lora import AdapterError
    from .models import ModelLoadError

    try:
        return COMMANDS[name][0](args)
    except (ConfigError, CodecError, AdapterError, ModelLoadError, ValueError, FileNotFoundError) as exc:
        print(f"fedpress llm {name}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
