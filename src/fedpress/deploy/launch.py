"""``fedpress launch``: a server and N client processes on this machine, over loopback gRPC.

It writes fresh per-client tokens (owner-only files under ``RUN_DIR/secrets``), starts
``fedpress server`` on a free port and ``fedpress client`` once per id, forwards the server's
progress lines, keeps each process's output in ``RUN_DIR/logs/``, and stops every process it
started when the server ends (or on Ctrl-C). The run directory is the one ``fedpress run``
writes (``events.jsonl``, ``summary.json``, plots), from the real run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from .workload import resolve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedpress launch", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--clients", type=int, required=True, help="client processes (sets data.clients)")
    p.add_argument("--run-dir", help="default: run.out_dir/<run name>")
    p.add_argument("--checkpoint-dir", help="passed to the server (resume after a crash)")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--client-timeout", type=float, default=10.0)
    p.add_argument("--join-timeout", type=float, default=300.0,
                   help="a client process that has not connected after this long is given up")
    p.add_argument("--max-transfers", type=int, default=None,
                   help="passed to the server: payload transfers in progress at once (0: no limit)")
    p.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    return p.parse_intermixed_args(argv)


def _pump(stream: IO[str], log: Path, echo: bool) -> threading.Thread:
    def run() -> None:
        with log.open("a", encoding="utf-8") as fh:
            for line in stream:
                fh.write(line)
                fh.flush()
                if echo:
                    sys.stderr.write(line)
                    sys.stderr.flush()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """Terminate the given processes (only those we started), then kill what is left."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main_launch(argv: list[str] | None = None) -> int:
    """``fedpress launch CONFIG --clients N [--run-dir DIR] [key=value ...]``"""
    args = parse_args(argv)
    from fedpress.config import ConfigError
    from fedpress.transport.grpc.auth import write_tokens

    if args.clients < 1:
        print("fedpress launch: error: --clients must be >= 1", file=sys.stderr)
        return 2
    overrides = [*args.overrides, f"data.clients={args.clients}"]
    try:
        _, cfg = resolve(args.config, overrides)
    except ConfigError as exc:
        print(f"fedpress launch: error: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / cfg.run_name()
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port_file = run_dir / "server.port"
    port_file.unlink(missing_ok=True)
    tokens, token_files = write_tokens(run_dir / "secrets", list(range(args.clients)))
    py = [sys.executable, "-m", "fedpress.cli"]
    server_cmd = [
        *py, "server", args.config, *overrides, "--address", "127.0.0.1:0", "--tokens", str(tokens),
        "--run-dir", str(run_dir), "--port-file", str(port_file), "--heartbeat", str(args.heartbeat),
        "--client-timeout", str(args.client_timeout), "--join-timeout", str(args.join_timeout),
    ]
    if args.checkpoint_dir:
        server_cmd += ["--checkpoint-dir", args.checkpoint_dir]
    if args.max_transfers is not None:
        server_cmd += ["--max-transfers", str(args.max_transfers)]
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    try:
        server = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(server)
        assert server.stdout is not None
        pump = _pump(server.stdout, logs / "server.log", echo=True)
        while not port_file.is_file():
            if server.poll() is not None:
                pump.join(2)
                print(f"fedpress launch: error: the server exited ({server.returncode}); see {logs / 'server.log'}",
                      file=sys.stderr)
                return 2
            if time.monotonic() - t0 > 300:
                raise TimeoutError("the server did not start listening within 300 s")
            time.sleep(0.05)
        port = int(port_file.read_text().strip())
        clients = []
        for cid in range(args.clients):
            fh = (logs / f"client_{cid}.log").open("w", encoding="utf-8")
            cmd = [
                *py, "client", args.config, *overrides, "--server", f"127.0.0.1:{port}", "--id", str(cid),
                "--token-file", str(token_files[cid]),
            ]
            clients.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True))
            fh.close()
        procs.extend(clients)
        try:
            rc = server.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"fedpress launch: error: run exceeded --timeout {args.timeout}s; stopping", file=sys.stderr)
            return 124
        pump.join(5)
        # clients stop on their own once the server told them; give them a moment
        for c in clients:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                pass
        failed = [i for i, c in enumerate(clients) if c.returncode not in (0, None)]
        if failed:
            print(f"fedpress launch: clients {failed} exited with errors; see {logs}", file=sys.stderr)
    except KeyboardInterrupt:
        print("fedpress launch: interrupted; stopping all processes", file=sys.stderr)
        return 130
    except TimeoutError as exc:
        print(f"fedpress launch: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _stop(procs, grace=5.0)
    summary_path = run_dir / "summary.json"
    if rc == 0 and summary_path.is_file():
        s = json.loads(summary_path.read_text())
        print(f"fedpress launch: {args.clients} clients, wall {time.monotonic() - t0:.1f}s, "
              f"final accuracy {s.get('final_accuracy')} loss {s.get('final_loss')} -> {run_dir}")
    return rc
