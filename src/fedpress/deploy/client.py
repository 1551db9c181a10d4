"""``fedpress client``: one federated client process, serving the server's tasks over gRPC.

Its data shard and its trainer come from the same builders as a simulation of the same config
(the config's workload, ``fedpress.deploy.workload``: the partitioner runs with the run's seed and
the simulated federation's client factory builds the runner), selected by ``--id``. For a
federated LoRA config the base model is loaded once in this process and only adapter tensors
travel.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from .workload import resolve, workload_of

log = logging.getLogger("fedpress.deploy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedpress client", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="the same YAML config the server runs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the server's overrides, if any")
    p.add_argument("--server", required=True, help="HOST:PORT of the fedpress server")
    p.add_argument("--id", type=int, required=True, help="this client's id (0 .. data.clients-1)")
    p.add_argument("--token-file", help="file holding this client's token")
    p.add_argument("--ca-cert", help="CA certificate to trust: use TLS")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS")
    p.add_argument("--tls-key", help="client key for mutual TLS")
    p.add_argument("--server-name", help="name in the server certificate, if not HOST")
    p.add_argument("--reconnect-timeout", type=float, default=60.0,
                   help="give up after the server is unreachable this long (seconds)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_intermixed_args(argv)


def build_runner(cfg: Any, client_id: int) -> Any:
    """The client runner a simulation of ``cfg`` (a CNN or an LLM config) would use for
    ``client_id``."""
    return workload_of(cfg).build_runner(cfg, client_id)


def advance_uplink(runner: Any) -> None:
    """Number the uplink stream from the time of joining (microseconds): a restarted client
    continues past anything an earlier process with its id sent, so the server takes its first
    payload (a keyframe) as a restart, not as a replay. Called once the client has joined."""
    enc = getattr(runner, "encoder", None)
    if enc is not None and hasattr(enc, "seq"):
        enc.seq = max(enc.seq, time.time_ns() // 1000)


def main_client(argv: list[str] | None = None) -> int:
    """``fedpress client CONFIG --server HOST:PORT --id ID [--token-file F] [--ca-cert F]``"""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=f"[client {args.id}] %(message)s", stream=sys.stderr)
    from fedpress.codec.errors import CodecError
    from fedpress.config import ConfigError
    from fedpress.experiment.run import torch_threads
    from fedpress.transport.grpc import GrpcClient, RefusedError
    from fedpress.transport.grpc.auth import channel_credentials, read_token

    try:
        _, cfg = resolve(args.config, args.overrides)
        token = read_token(args.token_file) if args.token_file else None
        creds = None
        if args.ca_cert:
            creds = channel_credentials(args.ca_cert, args.tls_cert, args.tls_key)
        elif args.tls_cert or args.tls_key:
            raise ValueError("a client certificate needs --ca-cert (TLS) too")
        with torch_threads(cfg.run.torch_threads):
            runner = build_runner(cfg, args.id)
            client = GrpcClient(
                args.server, args.id, runner, token=token, credentials=creds,
                server_name=args.server_name, reconnect_timeout=args.reconnect_timeout,
                on_join=lambda: advance_uplink(runner),
            )
            stats = client.run()
    except RefusedError as exc:
        print(f"fedpress client {args.id}: refused by the server: {exc}", file=sys.stderr)
        return 3
    except ConnectionError as exc:
        print(f"fedpress client {args.id}: error: {exc}", file=sys.stderr)
        return 4
    except (ConfigError, CodecError, ValueError, OSError, KeyError) as exc:
        print(f"fedpress client {args.id}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"fedpress client {args.id}: done, {stats.tasks} tasks, {stats.uploads} uploads accepted, "
        f"{stats.refused_uploads} refused, wire down {stats.wire['down']} B up {stats.wire['up']} B",
        flush=True,
    )
    return 0
