"""Messages per second with 1 and 2 worker processes (`transports.workers.run_workers`).

    python -m benchmarks.workers [--transport asyncio] [--workers 1 2] [--sessions 20]
                                 [--messages 20000] [--generator smtp-source|python]

Each run starts a fresh supervisor (this module with ``--serve``) on 127.0.0.1 with the
``sink`` handler, loads it with Postfix's ``smtp-source`` (or the Python generator), keeps the
best of ``--rounds`` and stops the server with SIGTERM. On a machine with two cores the load
generator competes with the workers for CPU: compare runs made on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from .loadgen import LoadResult, ensure_smtp_source, run_python_load, run_smtp_source

ROOT = Path(__file__).resolve().parent.parent


def serve(transport: str, workers: int) -> int:
    """The server side (``--serve``): N workers with the sink handler, port printed as JSON."""
    from smtpcore import SmtpConfig
    from transports.handlers import Sink
    from transports.options import Listener, ServerOptions
    from transports.workers import run_workers, serve_until_signal

    def serve_one(listeners: tuple[Listener, ...]) -> int:
        options = ServerOptions(
            listeners=listeners, config=SmtpConfig(hostname="bench.test"), idle_timeout=60
        )
        return serve_until_signal(transport, Sink(), options, grace=1.0)

    def ready(addresses: list[tuple[str, int]], ops: tuple[str, int] | None) -> None:
        print(json.dumps({"port": addresses[0][1]}), flush=True)

    return run_workers(workers, serve_one, [Listener("127.0.0.1", 0)], ready=ready)


def measure(args: argparse.Namespace, workers: int) -> LoadResult:
    command = [sys.executable, "-m", "benchmarks.workers", "--serve"]
    command += ["--transport", args.transport, "--workers", str(workers)]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        port = int(json.loads(server.stdout.readline())["port"])
        time.sleep(0.5)  # the workers start accepting
        best: LoadResult | None = None
        for _ in range(args.rounds):
            load = dict(
                sessions=args.sessions,
                messages=args.messages,
                message_size=args.size,
                timeout=args.timeout,
            )
            if args.generator == "smtp-source":
                result = run_smtp_source("127.0.0.1", port, binary=args.binary, **load)
            else:
                result = run_python_load("127.0.0.1", port, **load)
            if best is None or result.msgs_per_s > best.msgs_per_s:
                best = result
        assert best is not None
        return best
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--transport", default="asyncio")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--generator", choices=("smtp-source", "python"), default="smtp-source")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.transport, args.workers[0])
    args.binary = None
    if args.generator == "smtp-source":
        args.binary = ensure_smtp_source()
        if args.binary is None:
            print("smtp-source unavailable: using the Python generator", file=sys.stderr)
            args.generator = "python"
    print(f"# {args.transport}, sink handler, {args.size} B messages, {args.sessions} sessions, "
          f"{args.generator}, best of {args.rounds}; {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}")  # fmt: skip
    print("| workers | msgs/s | accepted | errors | seconds | generator CPU-s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        result = measure(args, workers)
        print(f"| {workers} | {result.msgs_per_s:,.0f} | {result.messages} | {result.errors} | "
              f"{result.seconds:.2f} | {result.client_cpu_s:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
