"""The ``fedpress`` command. Subcommands import their modules lazily so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _codec_params(args: argparse.Namespace) -> dict:
    from .codec.base import available_codecs, codec_parameters

    cls = available_codecs().get(args.codec)
    if cls is None:
        from .codec.errors import CodecError

        raise CodecError(f"unknown codec {args.codec!r}; see `fedpress codecs`")
    params = {}
    accepted = codec_parameters(cls)
    if "mode" in accepted:
        params.update(mode=args.mode, eb=args.eb)
    for item in args.param or []:
        key, _, value = item.partition("=")
        params[key] = _parse_value(value)
    return params


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def cmd_compress(args: argparse.Namespace) -> int:
    from .cli_codec import compress
    from .codec.routing import Policy

    policy = Policy.default(args.codec, small=args.small, **_codec_params(args))
    res = compress(Path(args.input), Path(args.output), policy, args.keyframe_interval)
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


#: subcommands that parse their own arguments: name -> (module, function, help)
DELEGATED = {
    "record-traces": (".traces", "main_record", "record real FL pseudo-gradient traces"),
    "run": (".fl.run", "main_run", "run a federated experiment from a config"),
    "plot": (".fl.run", "main_plot", "redraw the plots of a run directory"),
    "moe": (".moe.cli", "main", "MoE inference with compressed, offloaded experts"),
}


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module, func, _ = DELEGATED[name]
    return int(getattr(importlib.import_module(module, __package__), func)(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedpress", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="encode .safetensors files (a file or a trace directory)")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--codec", default="grad")
    c.add_argument("--mode", choices=["rel", "abs"], default="rel")
    c.add_argument("--eb", type=float, default=1e-2)
    c.add_argument("--small", type=int, default=1024, help="tensors up to this size go lossless")
    c.add_argument("--keyframe-interval", type=int, default=None)
    c.add_argument("--param", action="append", metavar="KEY=VALUE", help="extra codec parameter")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="decode .fpz payloads back to .safetensors")
    d.add_argument("input")
    d.add_argument("output")
    d.set_defaults(func=cmd_decompress)

    s = sub.add_parser("codecs", help="list the registered codecs and their parameters")
    s.set_defaults(func=cmd_codecs)

    b = sub.add_parser("bench-codecs", help="compare codecs on the same tensors")
    b.add_argument("input", help="a trace directory (client_<id>/round_<r>.safetensors)")
    b.add_argument("--codecs", default="grad,fast,linear,sz3,sz3-nopred,zfp,qsgd")
    b.add_argument("--eb", default="1e-2", help="comma-separated REL bounds")
    b.add_argument("--out", default="benchmarks/results/codecs")
    b.add_argument("--clients", type=int, default=None, help="use only the first N clients")
    b.set_defaults(func=cmd_bench_codecs)

    m = sub.add_parser("demo", help="the main job on the embedded default data")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--quick", action="store_true")
    m.set_defaults(func=cmd_demo)

    for name, (_, _, helptext) in DELEGATED.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
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
