"""``fedpress server``: the one server loop (``fedpress.fl.server.Server``) over gRPC.

The server is built exactly as a simulation of the same config builds it (the config's workload,
``fedpress.deploy.workload``: ``fedpress run``'s builders for CNN configs, ``fedpress llm run``'s
for federated LoRA), then its transport is swapped for a :class:`GrpcTransport`: clients are
other processes. With ``--checkpoint-dir`` the loop's state is checkpointed atomically between
events and uploads are journaled before they are acknowledged; starting the same command again
resumes from the last checkpoint and replays the journaled uploads it had not used yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedpress.config import ExperimentConfig
from fedpress.metrics.events import EVENTS_FILE, EventLog, read_events
from fedpress.metrics.summary import summarize
from fedpress.transport.grpc import GrpcTransport, Journal, TransferSlots, start_server
from fedpress.transport.grpc.auth import TokenInterceptor, read_tokens, server_credentials

from . import checkpoint as ckpt
from .memory import MemoryTrimmer, cap_malloc_arenas
from .workload import resolve, workload_of

CHECKPOINT_FILE = "checkpoint.fpck"
SUMMARY_FILE = "summary.json"
log = logging.getLogger("fedpress.deploy")
#: enough that up to 8 clients never queue; past that, memory stays bounded (bench_grpc_memory.py)
DEFAULT_MAX_TRANSFERS = 8


class ResumableEventLog(EventLog):
    """An event log that continues a file: keeps its first ``keep_bytes`` (what the checkpoint
    covered), replays them into the summary, and appends after them."""

    def __init__(self, path: Path, target_accuracy: float | None, keep_bytes: int | None) -> None:
        super().__init__(None, target_accuracy)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_bytes is None or not path.is_file():
            self._fh = path.open("w", encoding="utf-8")
            return
        with path.open("r+b") as fh:
            fh.truncate(keep_bytes)
        for e in read_events(path):
            self.summary.add(e)
        self._fh = path.open("a", encoding="utf-8")

    def size(self) -> int:
        self.flush()
        assert self.path is not None
        return self.path.stat().st_size


def codec_seconds(run_dir: Path) -> dict[str, float]:
    """Measured codec wall seconds per side, summed over the run's events."""
    out = {"client_decode_s": 0.0, "client_encode_s": 0.0, "server_encode_s": 0.0, "server_decode_s": 0.0}
    for e in read_events(run_dir):
        if e.get("event") == "dispatch":
            out["server_encode_s"] += e.get("wall_server_encode_s") or 0.0
        elif e.get("event") == "arrival":
            out["client_decode_s"] += e.get("wall_decode_s") or 0.0
            out["client_encode_s"] += e.get("wall_encode_s") or 0.0
            out["server_decode_s"] += e.get("wall_server_decode_s") or 0.0
    return out


def _progress(t0: float) -> Callable[[dict[str, Any]], None]:
    state = {"last": 0.0}

    def hook(info: dict[str, Any]) -> None:
        now = time.monotonic()
        if info.get("accuracy") is None and now - state["last"] < 1.0:
            return
        state["last"] = now
        acc = info.get("accuracy")
        log.info(
            "t=%.1fs updates=%s%s", now - t0, info.get("updates"),
            f" accuracy={acc:.4f}" if acc is not None else "",
        )

    return hook


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedpress server", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--address", default="127.0.0.1:50051",
                   help="HOST:PORT to listen on (0.0.0.0:PORT for other machines; PORT 0: any free)")
    p.add_argument("--tls-cert", help="server certificate (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--tokens", help="file of 'ID TOKEN' lines; without it any client may join")
    p.add_argument("--checkpoint-dir", help="checkpoint + upload journal here; resume if present")
    p.add_argument("--run-dir", help="default: run.out_dir/<run name>")
    p.add_argument("--port-file", help="write the port listened on to this file")
    p.add_argument("--heartbeat", type=float, default=2.0, help="client heartbeat period, seconds")
    p.add_argument("--client-timeout", type=float, default=10.0,
                   help="a client silent this long is lost (its task given up)")
    p.add_argument("--join-timeout", type=float, default=120.0,
                   help="a dispatched client that never connected is lost after this long")
    p.add_argument("--max-transfers", type=int, default=DEFAULT_MAX_TRANSFERS,
                   help="payload transfers (downloads + uploads) in progress at once; more wait, so the "
                        "server's memory does not grow with the clients transferring at once (0: no limit; "
                        f"default {DEFAULT_MAX_TRANSFERS})")
    p.add_argument("--quiet", action="store_true")
    return p.parse_intermixed_args(argv)


def build(cfg: ExperimentConfig | Any, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the server loop to its end; returns the summary."""
    from fedpress.experiment.run import torch_threads

    wl = workload_of(cfg)
    dump_config = wl.dump

    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    ckpt_path = ckpt_dir / CHECKPOINT_FILE if ckpt_dir else None
    state = ckpt.load(ckpt_path) if ckpt_path is not None and ckpt_path.is_file() else None
    if state is not None and state.get("config") != dump_config(cfg):
        raise ValueError(f"{ckpt_path} was written for another config; use another --checkpoint-dir")
    tokens = read_tokens(args.tokens) if args.tokens else None
    creds = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        creds = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")

    journal = Journal(ckpt_dir / "journal" if ckpt_dir else out / "journal", durable=ckpt_dir is not None)
    events = ResumableEventLog(out / EVENTS_FILE, cfg.run.target_accuracy,
                               state["events_bytes"] if state else None)
    with torch_threads(cfg.run.torch_threads), events:
        side = wl.build_server(cfg, events, None if args.quiet else _progress(time.monotonic()))
        server, n = side.server, len(side.shard_sizes)

        def save_checkpoint() -> None:
            assert ckpt_path is not None
            ckpt.save(ckpt_path, {
                "format": 1,
                "config": dump_config(cfg),
                "events_bytes": events.size(),
                "server": server.state_dict(),
                "transport": transport.state_dict(),
            })
            journal.trim(transport.consumed)

        transport = GrpcTransport(
            n, journal, heartbeat_s=args.heartbeat, client_timeout=args.client_timeout,
            join_timeout=args.join_timeout, shard_sizes=side.shard_sizes,
            checkpoint=save_checkpoint if ckpt_path is not None else None,
        )
        if ckpt_path is not None and not hasattr(server, "state_dict"):
            raise ValueError("this server loop cannot checkpoint (no Server.state_dict); drop --checkpoint-dir")
        server.transport = transport  # the loop only ever talks to a Transport
        if state is not None:
            server.load_state_dict(state["server"])
            transport.load_state_dict(state["transport"])
            log.info("resumed from %s at version %d", ckpt_path, server.version)
        if tokens is None:
            log.warning("no --tokens: any client may join under any id")
        if creds is None:
            log.warning("no TLS: traffic is not encrypted")
        interceptor = TokenInterceptor(tokens, n)
        slots = TransferSlots(args.max_transfers)
        grpc_server, port = start_server(transport, args.address, interceptor=interceptor, credentials=creds,
                                         slots=slots)
        host = args.address.rsplit(":", 1)[0]
        print(f"fedpress server: listening on {host}:{port}", flush=True)
        if args.port_file:
            tmp = Path(args.port_file + ".tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(args.port_file)
        try:
            summary = server.run()
            # tell every client that showed up to stop before the port closes
            transport.wait_stopped(transport.seen_clients(), timeout=3 * args.heartbeat + 2)
        finally:
            grpc_server.stop(grace=1.0).wait()
    if ckpt_dir is None:
        shutil.rmtree(out / "journal", ignore_errors=True)
    if state is not None:
        summary = summarize(read_events(out), cfg.run.target_accuracy)
    summary.update(
        run_dir=str(out), codec=cfg.codec.name, seed=cfg.run.seed, transport="grpc",
        wire_bytes=dict(transport.wire), lost_clients=transport.lost, refused_calls=interceptor.refused,
        codec_wall_s=codec_seconds(out), resumed=state is not None,
        transfers={"max": slots.limit, "peak": slots.peak, "waited": slots.waited},
    )
    summary.update(side.extras(out))  # the workload's own fields (dataset, LLM metrics, ...)
    return summary


def main_server(argv: list[str] | None = None) -> int:
    """``fedpress server CONFIG [key=value ...] [--address HOST:PORT] [--tls-cert F --tls-key F]
    [--tokens FILE] [--checkpoint-dir DIR]``"""
    args = parse_args(argv)
    cap_malloc_arenas()  # before the gRPC threads start
    MemoryTrimmer().start()  # for the life of the process
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[server] %(message)s", stream=sys.stderr)
    from fedpress.codec.errors import CodecError
    from fedpress.config import ConfigError

    try:
        wl, cfg = resolve(args.config, args.overrides)
        out = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / cfg.run_name()
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(wl.dump(cfg), encoding="utf-8")
        summary = build(cfg, out, args)
    except (ConfigError, CodecError, ValueError, OSError, KeyError) as exc:
        print(f"fedpress server: error: {exc}", file=sys.stderr)
        return 2
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    if cfg.run.plots:
        from fedpress.metrics.plots import plot_run

        try:
            plot_run(out)
        except (KeyError, ValueError) as exc:  # plots are a convenience; the event log is the record
            print(f"fedpress server: plots skipped ({exc})", file=sys.stderr)
    acc, loss = summary.get("final_accuracy"), summary.get("final_loss")
    print(
        f"{summary['strategy']}: final acc {acc if acc is None else f'{acc:.4f}'} "
        f"loss {loss if loss is None else f'{loss:.4f}'} "
        f"updates {summary['updates']} wall {summary.get('wall_s') or 0:.1f}s "
        f"wire up {summary['wire_bytes']['up'] / 1e6:.2f} MB down {summary['wire_bytes']['down'] / 1e6:.2f} MB "
        f"-> {out}", flush=True,
    )
    return 0
