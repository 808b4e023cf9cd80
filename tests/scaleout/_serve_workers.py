"""A multi-process server for the scale-out tests and benchmarks, run as a child process:

    python -m tests.scaleout._serve_workers --workers 2 --port 0 --maildir DIR

It prints one JSON line on stdout once the listeners are bound (``addresses``, ``ops``,
``pid``), then serves until SIGTERM. Each stored message carries ``X-Test-Remote:`` with the
client address the session saw, the real peer and the worker's pid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from smtpcore import SmtpConfig
from transports.handler import Handler, Session
from transports.handlers import MaildirHandler, Sink
from transports.options import Listener, ServerOptions
from transports.workers import run_workers, serve_until_signal, worker_observer


class Recording(MaildirHandler):
    """A maildir handler that records who the session thought the client was, and logs each
    greeting with the PROXY command it came with (HAProxy's health checks say LOCAL)."""

    def on_helo(self, ctx: Session, domain: str) -> None:
        command = ctx.proxy.info.command.value if ctx.proxy else "none"
        logging.getLogger("test").info("helo %s from %s proxy %s", domain, ctx.remote_ip, command)

    def on_message_headers(self, ctx: Session) -> None:
        via = f"{ctx.proxy.peer_ip}:{ctx.proxy.peer_port}" if ctx.proxy else "-"
        ctx.message.add_header(
            "X-Test-Remote", f"{ctx.remote_ip}:{ctx.remote_port} via {via} pid {os.getpid()}"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="asyncio")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append", default=[])
    parser.add_argument("--maildir")
    parser.add_argument("--proxy-protocol", action="store_true")
    parser.add_argument("--trusted-proxy", action="append", default=[])
    parser.add_argument("--ops-port", type=int)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(process)d %(message)s")
    listeners = [
        Listener(args.host, port, proxy_protocol=args.proxy_protocol) for port in args.port or [0]
    ]

    def serve_one(bound: tuple[Listener, ...]) -> int:
        handler: Handler = Recording(args.maildir) if args.maildir else Sink()
        options = ServerOptions(
            listeners=bound,
            config=SmtpConfig(hostname="mx.test"),
            trusted_proxies=tuple(args.trusted_proxy),
            observer=worker_observer(),
        )
        return serve_until_signal(args.transport, handler, options, grace=args.grace)

    def ready(addresses: list[tuple[str, int]], ops: tuple[str, int] | None) -> None:
        line = {"addresses": addresses, "ops": ops, "pid": os.getpid()}
        print(json.dumps(line), flush=True)

    ops = None if args.ops_port is None else ("127.0.0.1", args.ops_port)
    return run_workers(
        args.workers,
        serve_one,
        listeners,
        ops_address=ops,
        ready=ready,
        reuse_port=args.reuse_port,
        stop_timeout=args.grace + 10,
    )


if __name__ == "__main__":
    sys.exit(main())
