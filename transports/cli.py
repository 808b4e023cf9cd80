"""The ``smtpcore`` command. ``smtpcore serve`` runs a server until SIGINT or SIGTERM:

    smtpcore serve --transport trio --port 2525 --handler debug

Each transport runs natively in the main thread (``asyncio.run``, ``trio.run``, ``anyio.run``,
or the threads server's ``start``/``join``); a signal stops it gracefully and the exit status
is 0. Bad options exit 2, a server that cannot listen exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from smtpcore import SmtpConfig

from .controller import TRANSPORTS
from .handlers import HANDLERS, resolve_handler
from .options import ServerOptions

__all__ = ["build_parser", "main"]

GRACE = 5.0
"""Seconds a stop signal leaves transactions in progress to finish (see ``Server.stop``)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Runner = Callable[[Any, Callable[[], None], LoopFactory | None], None]
N = TypeVar("N", int, float)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _serve(args.parser, args)  # errors then show the serve command's usage
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtpcore",
        description="A sans-IO SMTP/LMTP server core with threads, asyncio, trio and anyio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run an SMTP or LMTP server until SIGINT or SIGTERM",
        description="Run an SMTP or LMTP server until SIGINT or SIGTERM (a graceful stop). "
        "It advertises every extension the core supports.",
    )
    serve.set_defaults(parser=serve)
    config, options = SmtpConfig(), ServerOptions()
    add = serve.add_argument
    add(
        "--transport",
        choices=TRANSPORTS,
        default="asyncio",
        help="the I/O framework (default: %(default)s)",
    )
    add(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of the asyncio and anyio transports (default: %(default)s)",
    )
    add(
        "--host",
        default="127.0.0.1",
        help="the address to listen on, IPv4 or IPv6 (default: %(default)s)",
    )
    add(
        "--port",
        type=_port,
        default=2525,
        help="the TCP port; 0 picks a free one (default: %(default)s)",
    )
    add(
        "--hostname",
        help="the server's name in its banner and EHLO reply "
        "(default: this machine's fully qualified name, else localhost)",
    )
    add(
        "--handler",
        default="debug",
        help=f"what to do with mail: {', '.join(HANDLERS)}, or package.module:Class "
        "(importable from the current directory too; instantiated without arguments) "
        "(default: %(default)s)",
    )
    add("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP (default: off)")
    add(
        "--max-connections",
        type=_positive(int),
        metavar="N",
        help="concurrent sessions; one more client gets 421 (default: no limit)",
    )
    add(
        "--max-message-size",
        type=_positive(int),
        default=config.max_message_size,
        metavar="BYTES",
        help="the largest message accepted (default: %(default)s)",
    )
    add(
        "--idle-timeout",
        type=_positive(float),
        default=options.idle_timeout,
        metavar="SECONDS",
        help="how long a client may stay silent (default: %(default)s)",
    )
    parser.epilog = f"The serve command in detail:\n\n{serve.format_help()}"
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {text!r}")
    return int(text)


def _positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    def convert(text: str) -> N:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return convert


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        config = SmtpConfig(
            hostname=args.hostname or socket.getfqdn() or "localhost",
            lmtp=args.lmtp,
            max_message_size=args.max_message_size,
        )
        options = ServerOptions.build(
            host=args.host.removeprefix("[").removesuffix("]"),  # [::1] as in a URL
            port=args.port,
            config=config,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
        )
        if os.getcwd() not in sys.path:  # package.module:Class from where smtpcore is run
            sys.path.append(os.getcwd())
        handler = resolve_handler(args.handler)
    except ValueError as exc:
        parser.error(str(exc))
    loop_factory = _loop_factory(parser, args.loop, args.transport)
    try:
        module = importlib.import_module(f"transports.{args.transport}")
    except ImportError as exc:
        parser.error(f"transport {args.transport} is not available: {exc}")
    try:
        server = module.Server(handler, options)
    except TypeError as exc:  # e.g. async def hooks under the threads transport
        parser.error(str(exc))

    transport = args.transport if loop_factory is None else f"{args.transport} on {args.loop}"

    def ready() -> None:
        where = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in server.addresses)
        print(
            f"smtpcore: serving {'LMTP' if args.lmtp else 'SMTP'} on {where} "
            f"(transport {transport}, handler {args.handler}); SIGINT or SIGTERM stops",
            file=sys.stderr,
            flush=True,
        )

    try:
        _RUNNERS[args.transport](server, ready, loop_factory)
    except Exception as exc:
        error = _os_error(exc)
        if error is None:
            raise
        print(f"smtpcore: cannot serve: {error}", file=sys.stderr)
        return 1
    return 0


def _loop_factory(parser: argparse.ArgumentParser, loop: str, transport: str) -> LoopFactory | None:
    if loop == "asyncio":
        return None
    if transport not in ("asyncio", "anyio"):
        parser.error(f"--loop {loop} needs --transport asyncio or anyio")
    try:
        factory: LoopFactory = importlib.import_module(loop).new_event_loop
    except ImportError as exc:
        parser.error(f"--loop {loop} is not available: {exc}")
    return factory


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError (e.g. address in use) behind ``exc``, also inside a one-error group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


# ---- one runner per transport: start, call ready(), serve until a stop signal, stop(GRACE)


def _run_threads(server: Any, ready: Callable[[], None], _: LoopFactory | None) -> None:
    stopping: list[threading.Thread] = []

    def on_signal(signum: int, frame: object) -> None:
        if not stopping:  # stop() blocks: run it beside the main thread, which is in join()
            stopping.append(threading.Thread(target=server.stop, args=(GRACE,), daemon=True))
            stopping[0].start()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        server.start()
        ready()
        server.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for thread in stopping:
        thread.join()


def _run_asyncio(server: Any, ready: Callable[[], None], loop_factory: LoopFactory | None) -> None:
    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        ready()
        await stop.wait()
        await server.stop(GRACE)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


def _run_trio(server: Any, ready: Callable[[], None], _: LoopFactory | None) -> None:
    import trio

    async def serve() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve)
                ready()
                async for _signum in signals:
                    break
                await server.stop(GRACE)

    trio.run(serve)


def _run_anyio(server: Any, ready: Callable[[], None], loop_factory: LoopFactory | None) -> None:
    import anyio

    async def serve() -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with anyio.create_task_group() as tasks:
                await tasks.start(server.serve)
                ready()
                async for _signum in signals:
                    break
                await server.stop(GRACE)

    anyio.run(serve, backend="asyncio", backend_options={"loop_factory": loop_factory})


_RUNNERS: dict[str, Runner] = {
    "threads": _run_threads,
    "asyncio": _run_asyncio,
    "trio": _run_trio,
    "anyio": _run_anyio,
}

if __name__ == "__main__":
    sys.exit(main())
