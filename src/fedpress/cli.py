"""The ``fedpress`` command. Subcommands import their modules lazily so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
fedpress: communication-efficient federated learning with error-bounded lossy compression.
Every value of every model update comes back within a bound you choose (REL or ABS).

Where to start:
  fedpress demo --quick                       a one-minute taste of the main job
  fedpress run configs/quick_digits.yaml      a tiny federated run (seconds)
  fedpress report runs/<run> [runs/<run> ...] one HTML page comparing runs
  fedpress codecs                             the codecs you can choose from
"""

EPILOG = "Run 'fedpress COMMAND --help' for a command's options and their defaults."

#: marker replaced, when help is printed, by the registered codec names (importing the codec
#: registry costs seconds, so only the help that shows it pays for it)
CODEC_NAMES = "{codec_names}"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every option's default, keep the hand-wrapped descriptions as written."""


def _wrap(text: str) -> str:
    """A command description wrapped for the terminal (the formatter keeps it as is)."""
    import textwrap

    return textwrap.fill(text, width=78)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that fills in the codec names only when its help is printed."""

    def format_help(self) -> str:
        for action in self._actions:
            if action.help and CODEC_NAMES in action.help:
                action.help = action.help.replace(CODEC_NAMES, ", ".join(_codec_names()))
        return super().format_help()


def _codec_names() -> list[str]:
    from .codec.base import available_codecs

    return list(available_codecs())


def _codec_params(args: argparse.Namespace) -> dict:
    from .codec.base import available_codecs, codec_parameters

    cls = available_codecs().get(args.codec)
    if cls is None:
        from .codec.errors import CodecError

        raise CodecError(f"unknown codec {args.codec!r}; available: "
                         f"{', '.join(available_codecs())} (see 'fedpress codecs')")
    params = {}
    accepted = codec_parameters(cls)
    if "mode" in accepted:
        params.update(mode=args.mode, eb=args.eb)
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        params[key] = _parse_value(value)
    return params


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def cmd_compress(args: argparse.Namespace) -> int:
    from .cli_codec import compress
    from .codec.routing import Policy

    policy = Policy.default(args.codec, small=args.small, **_codec_params(args))
    res = compress(Path(args.input), Path(args.output), policy, args.keyframe_interval,
                   nonfinite=args.nonfinite)
    print(f"{res['raw_bytes']} -> {res['encoded_bytes']} bytes, ratio {res['ratio']:.2f}")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from .cli_codec import decompress

    n = decompress(Path(args.input), Path(args.output))
    print(f"decoded {n} payload(s)")
    return 0


def cmd_codecs(args: argparse.Namespace) -> int:
    from .cli_codec import describe_codecs

    print(describe_codecs())
    return 0


def cmd_bench_codecs(args: argparse.Namespace) -> int:
    from .bench.codecs import main_bench

    return main_bench(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main_demo

    return main_demo(args)


def cmd_report(args: argparse.Namespace) -> int:
    from .metrics.report import write_report

    out = write_report([Path(d) for d in args.run_dirs], Path(args.out), title=args.title)
    print(f"wrote {out} ({len(args.run_dirs)} run(s)); open it in a browser")
    return 0


#: subcommands that parse their own arguments: name -> (module, function, help)
DELEGATED = {
    "record-traces": (".traces", "main_record", "record real FL pseudo-gradient traces"),
    "run": (".experiment.run", "main_run", "run a federated experiment from a config"),
    "plot": (".experiment.run", "main_plot", "redraw the plots of a run directory"),
    "server": (".deploy.server", "main_server", "serve a federated run over gRPC"),
    "client": (".deploy.client", "main_client", "join a gRPC federated run as one client"),
    "launch": (".deploy.launch", "main_launch", "a gRPC server and N clients on this machine"),
    "llm": (".llm.cli", "main", "federated LoRA fine-tuning of causal LMs"),
    "moe": (".moe.cli", "main", "MoE inference with compressed, offloaded experts"),
}


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module, func, _ = DELEGATED[name]
    return int(getattr(importlib.import_module(module, __package__), func)(argv) or 0)


def _add_compress(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compress", formatter_class=_Formatter,
        help="encode .safetensors files (one file, or a trace directory) to .fpz payloads",
        description=_wrap("Encode .safetensors files to .fpz payloads. A directory laid out as "
        "client_<id>/round_<r>.safetensors is coded as one stream per client, rounds in order "
        "(stateful codecs use earlier rounds, so later payloads depend on them)."))
    c.add_argument("input", help="a .safetensors file or a directory of them")
    c.add_argument("output", help="the .fpz file or directory to write (mirrors the input)")
    c.add_argument("--codec", default="grad", metavar="NAME",
                   help=f"codec for the large float tensors; one of: {CODEC_NAMES}")
    c.add_argument("--mode", choices=["rel", "abs"], default="rel",
                   help="error bound kind: rel = relative to each tensor's value range, "
                   "abs = absolute")
    c.add_argument("--eb", type=float, default=1e-2,
                   help="the error bound: every element comes back within it")
    c.add_argument("--small", type=int, default=1024,
                   help="tensors with at most this many elements go lossless")
    c.add_argument("--keyframe-interval", type=int, default=None, metavar="N",
                   help="write a self-contained keyframe every N payloads, so a single file "
                   "can be decoded without its earlier rounds (default %(default)s: only the "
                   "first payload of each stream)")
    c.add_argument("--param", action="append", metavar="KEY=VALUE", default=None,
                   help="extra codec parameter, repeatable (e.g. contexts=false for the "
                   "context-free 'fast'); see 'fedpress codecs'")
    c.add_argument("--nonfinite", choices=["refuse", "lossless"], default="refuse",
                   help="what to do with a tensor holding NaN/Inf headed for a lossy codec: "
                   "refuse the input, or send that tensor losslessly")
    c.set_defaults(func=cmd_compress)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench-codecs", formatter_class=_Formatter,
        help="compare codecs on the same tensors (ratio, speed, error)",
        description=_wrap("Run several codecs on the same recorded trace and report compression "
        "ratio, encode/decode MB/s and max error / bound, as a table, JSON and a PNG plot."))
    b.add_argument("input", help="a trace directory (client_<id>/round_<r>.safetensors), "
                   "e.g. from 'fedpress record-traces'")
    b.add_argument("--codecs", default="grad,fast,linear,sz3,sz3-nopred,zfp,qsgd",
                   help=f"comma-separated codec names; available: {CODEC_NAMES}")
    b.add_argument("--eb", default="1e-2", help="comma-separated REL bounds")
    b.add_argument("--out", default="codecs-bench/codecs", metavar="PREFIX",
                   help="output path prefix: writes PREFIX.json and PREFIX.png")
    b.add_argument("--clients", type=int, default=None, metavar="N",
                   help="use only the first N clients (default %(default)s: all)")
    b.set_defaults(func=cmd_bench_codecs)


def _add_report(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report", formatter_class=_Formatter,
        help="one self-contained HTML page comparing run directories",
        description=_wrap("Write one HTML file (no external assets) with each run's configuration, "
        "summary and plots, and all runs side by side: accuracy against simulated time and "
        "against bytes sent."))
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories (holding events.jsonl), e.g. runs/<name>")
    r.add_argument("--out", default="report.html", help="the HTML file to write")
    r.add_argument("--title", default="fedpress report", help="the page title")
    r.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (delegated subcommands appear with their one-line help)."""
    from . import __version__

    p = argparse.ArgumentParser(prog="fedpress", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"fedpress {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                           parser_class=_Parser)

    s = sub.add_parser("codecs", help="list the registered codecs and their parameters",
                       formatter_class=_Formatter)
    s.set_defaults(func=cmd_codecs)
    _add_compress(sub)

    d = sub.add_parser(
        "decompress", formatter_class=_Formatter,
        help="decode .fpz payloads back to .safetensors",
        description=_wrap("Decode .fpz payloads back to .safetensors; the codec and its parameters "
        "come from each payload's header. Decode a whole stream directory: a single round's "
        "file needs the earlier rounds of its stream unless it is a keyframe."))
    d.add_argument("input", help="a .fpz file or a directory written by 'fedpress compress'")
    d.add_argument("output", help="the .safetensors file or directory to write")
    d.set_defaults(func=cmd_decompress)

    _add_bench(sub)

    m = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="the main job: FedAvg on MNIST, uncompressed vs SZ3 vs grad uplinks",
        description=_wrap("FedAvg on the embedded MNIST three times with the same seed: "
        "uncompressed, SZ3 and grad (REL 1e-2) in the uplink; prints accuracy, bytes and "
        "simulated communication time side by side (about 3 minutes on 2 cores)."))
    m.add_argument("--out", default="runs/demo",
                   help="directory for the three runs' logs and plots and demo.json/png")
    m.add_argument("--quick", action="store_true",
                   help="a tiny variant (6 clients x 100 samples, 9 client updates) that "
                   "checks the set-up in about a minute; its numbers mean little")
    m.set_defaults(func=cmd_demo)

    _add_report(sub)

    for name, (_, _, helptext) in DELEGATED.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedpress`` script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    from .codec.errors import CodecError

    try:
        if argv and argv[0] in DELEGATED:
            return _delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fedpress: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user, never a traceback
        from .cli_codec import CliError

        if isinstance(exc, CliError | CodecError | FileNotFoundError | ValueError):
            print(f"fedpress: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
