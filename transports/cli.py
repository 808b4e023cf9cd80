"""The ``smtpcore`` command. ``smtpcore serve`` runs a server until SIGINT or SIGTERM:

    smtpcore serve --transport trio --port 2525 --handler debug
    smtpcore serve --tls-mode required --auth-mode required --auth-file users --smtps-port 4650

Each transport runs natively in the main thread (``asyncio.run``, ``trio.run``, ``anyio.run``,
or the threads server's ``start``/``join``); a signal stops it gracefully and the exit status
is 0. Bad options exit 2, a server that cannot listen exits 1.

``smtpcore hash-password [USER]`` reads a password from stdin and prints the line for an
``--auth-file`` (see `transports.auth`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from smtpcore import AuthMode, SmtpConfig, TlsMode
from smtpcore.sasl import BUILTIN_MECHANISMS

from .auth import AuthenticatingHandler, Credentials, check_user_name, hash_password
from .controller import TRANSPORTS
from .handler import Handler
from .handlers import HANDLERS, ChaosHandler, ChaosRule, parse_chaos, resolve_handler
from .options import ServerOptions
from .tls import TlsPreset, make_server_context

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
        return int(args.run(args.parser, args))  # errors then show the command's own usage
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
    serve.set_defaults(parser=serve, run=_serve)
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
    add(
        "--chaos",
        action="append",
        default=[],
        type=_chaos_rule,
        metavar="VERB=CODE[:RATE]",
        help="fail MAIL, RCPT, DATA or AUTH with CODE at RATE (0 to 1, default 1), to test "
        "how senders cope, e.g. rcpt=451:0.2; repeatable (default: none)",
    )
    add(
        "--chaos-seed",
        type=int,
        metavar="N",
        help="seed the --chaos draws, so a run can be repeated (default: random)",
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
    _add_tls_arguments(serve)
    _add_auth_arguments(serve, config, options)
    hasher = commands.add_parser(
        "hash-password",
        help="read a password from stdin, print a USER:HASH line for --auth-file",
        description="Read a password from stdin (its first line; prompted for without echo on "
        "a terminal) and print its scrypt hash, as a USER:HASH line for serve --auth-file "
        "when USER is given.",
    )
    hasher.set_defaults(parser=hasher, run=_hash_password)
    hasher.add_argument("user", nargs="?", metavar="USER", help="the user name to print first")
    parser.epilog = (
        f"The serve command in detail:\n\n{serve.format_help()}\n"
        f"The hash-password command:\n\n{hasher.format_help()}"
    )
    return parser


def _add_tls_arguments(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument_group("TLS").add_argument
    add(
        "--tls-mode",
        choices=[mode.value for mode in TlsMode],
        default=TlsMode.FORBIDDEN.value,
        help="offer STARTTLS (optional), or also demand it before MAIL (required) "
        "(default: %(default)s)",
    )
    add(
        "--tls-cert",
        metavar="PATH",
        help="PEM certificate chain, the private key may follow in the same file "
        "(default: none, a self-signed certificate is made at start-up)",
    )
    add(
        "--tls-key",
        metavar="PATH",
        help="PEM private key, if not in the --tls-cert file (default: none)",
    )
    add(
        "--tls-preset",
        choices=[preset.value for preset in TlsPreset],
        help="protocol versions and ciphers: modern, advanced and broad need TLS 1.2+, widest "
        "and legacy allow TLS 1.0 (default: modern)",
    )
    add(
        "--smtps-port",
        type=_port,
        metavar="PORT",
        help="also listen on PORT (same host) with implicit TLS, RFC 8314; 0 picks a free "
        "one (default: none)",
    )


def _add_auth_arguments(
    serve: argparse.ArgumentParser, config: SmtpConfig, options: ServerOptions
) -> None:
    add = serve.add_argument_group("AUTH").add_argument
    add(
        "--auth-mode",
        choices=[mode.value for mode in AuthMode],
        default=AuthMode.FORBIDDEN.value,
        help="offer AUTH (optional), or also demand it before MAIL (required) "
        "(default: %(default)s)",
    )
    add(
        "--auth-user",
        action="append",
        default=[],
        metavar="USER:PASSWORD",
        help="a user and its clear password, for tests and demos; repeatable (default: none)",
    )
    add(
        "--auth-file",
        metavar="PATH",
        help="users, one USER:HASH line each, hashes from 'smtpcore hash-password' (default: none)",
    )
    add(
        "--auth-mechanisms",
        type=_mechanisms,
        default=config.auth_mechanisms,
        metavar="LIST",
        help="comma-separated SASL mechanisms: PLAIN, LOGIN, CRAM-MD5 (CRAM-MD5 only with "
        "--auth-user: hashes cannot answer it) (default: PLAIN,LOGIN)",
    )
    add(
        "--allow-insecure-auth",
        action="store_true",
        help="offer AUTH without TLS too; passwords then cross the network in clear (default: off)",
    )
    add(
        "--auth-failure-delay",
        type=_non_negative(float),
        default=options.auth_failure_delay,
        metavar="SECONDS",
        help="pause after the n-th failed AUTH of a session, times n (default: %(default)s)",
    )
    add(
        "--max-auth-failures",
        type=_positive(int),
        default=config.max_auth_failures,
        metavar="N",
        help="failed AUTH attempts after which a session ends with 421 (default: %(default)s)",
    )


def _chaos_rule(text: str) -> ChaosRule:
    try:
        return parse_chaos(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {text!r}")
    return int(text)


def _mechanisms(text: str) -> tuple[str, ...]:
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUILTIN_MECHANISMS]
    if not names or unknown:
        known = ",".join(BUILTIN_MECHANISMS)
        raise argparse.ArgumentTypeError(f"choose from {known}, not {text!r}")
    return tuple(dict.fromkeys(names))


def _non_negative(kind: Callable[[str], N]) -> Callable[[str], N]:
    def convert(text: str) -> N:
        value = kind(text)
        if not value >= 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be zero or more, not {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    def convert(text: str) -> N:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return convert


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    host = args.host.removeprefix("[").removesuffix("]")  # [::1] as in a URL
    try:
        _check_tls_and_auth(args)
        config = SmtpConfig(
            hostname=args.hostname or socket.getfqdn() or "localhost",
            lmtp=args.lmtp,
            max_message_size=args.max_message_size,
            tls_mode=TlsMode(args.tls_mode),
            auth_mode=AuthMode(args.auth_mode),
            auth_mechanisms=args.auth_mechanisms,
            allow_insecure_auth=args.allow_insecure_auth,
            max_auth_failures=args.max_auth_failures,
        )
        tls_context = _tls_context(args, config, host)
        options = ServerOptions.build(
            host=host,
            port=args.port,
            smtps_port=args.smtps_port,
            config=config,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            tls_context=tls_context,
            auth_failure_delay=args.auth_failure_delay,
        )
        if os.getcwd() not in sys.path:  # package.module:Class from where smtpcore is run
            sys.path.append(os.getcwd())
        handler = _with_credentials(resolve_handler(args.handler), args)
        if args.chaos:  # outermost, so that AUTH failures can be injected too
            handler = ChaosHandler(handler, args.chaos, seed=args.chaos_seed)
    except (ValueError, OSError) as exc:  # OSError: a certificate or user file cannot be read
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
        protocol = "LMTP" if args.lmtp else "SMTP"
        where = _where(server.addresses, protocol, smtps=args.smtps_port is not None)
        print(
            f"smtpcore: serving {where} (transport {transport}, handler {args.handler}, "
            f"{_tls_summary(args, options)}, {_auth_summary(args, handler)}); "
            "SIGINT or SIGTERM stops",
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


def _tls_on(args: argparse.Namespace) -> bool:
    return args.tls_mode != TlsMode.FORBIDDEN.value or args.smtps_port is not None


def _check_tls_and_auth(args: argparse.Namespace) -> None:
    """Refuse TLS and AUTH flags that contradict each other or would have no effect."""
    if args.tls_key is not None and args.tls_cert is None:
        raise ValueError("--tls-key needs --tls-cert")
    if not _tls_on(args):
        for flag in ("tls_cert", "tls_key", "tls_preset"):
            if getattr(args, flag) is not None:
                raise ValueError(
                    f"--{flag.replace('_', '-')} needs --tls-mode optional or required, "
                    "or --smtps-port"
                )
    if args.smtps_port is not None and args.smtps_port == args.port != 0:
        raise ValueError("--smtps-port must differ from --port")
    auth_on = args.auth_mode != AuthMode.FORBIDDEN.value
    if not auth_on:
        for flag, given in (
            ("--auth-user", bool(args.auth_user)),
            ("--auth-file", args.auth_file is not None),
            ("--allow-insecure-auth", args.allow_insecure_auth),
        ):
            if given:
                raise ValueError(f"{flag} needs --auth-mode optional or required")
        return
    if not (_tls_on(args) or args.allow_insecure_auth):
        raise ValueError(
            "AUTH is offered only over TLS: add --tls-mode optional or required, "
            "--smtps-port, or (for tests) --allow-insecure-auth"
        )
    if "CRAM-MD5" in args.auth_mechanisms and (not args.auth_user or args.auth_file):
        raise ValueError(
            "CRAM-MD5 needs clear passwords: use it with --auth-user only, not --auth-file"
        )


def _tls_context(args: argparse.Namespace, config: SmtpConfig, host: str) -> ssl.SSLContext | None:
    """The context for STARTTLS and SMTPS; without --tls-cert a self-signed certificate for
    the hostname and the listening address (make_server_context logs a warning then)."""
    if not _tls_on(args):
        return None
    return make_server_context(
        cert_path=args.tls_cert,
        key_path=args.tls_key,
        preset=args.tls_preset or TlsPreset.MODERN,
        hostname=config.hostname,
        addresses=[host],
    )


def _with_credentials(handler: Handler, args: argparse.Namespace) -> Handler:
    """Wrap the handler with the --auth-user/--auth-file users, if any."""
    credentials = Credentials.from_user_passwords(args.auth_user)
    if args.auth_file is not None:
        listed = Credentials.from_file(args.auth_file)
        if not len(listed):
            raise ValueError(f"--auth-file {args.auth_file} lists no users")
        credentials = credentials.merged(listed)
    if len(credentials):
        return AuthenticatingHandler(credentials, handler)
    if args.auth_mode != AuthMode.FORBIDDEN.value and type(handler).on_auth is Handler.on_auth:
        raise ValueError(
            f"--auth-mode {args.auth_mode} needs --auth-user or --auth-file "
            f"(handler {args.handler} does not check passwords itself)"
        )
    return handler


def _where(addresses: Sequence[tuple[str, int]], protocol: str, *, smtps: bool) -> str:
    """``SMTP on a:p`` (and ``SMTPS on a:q``): listeners bind in order, one address set each."""
    shown = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses]
    if not smtps:
        return f"{protocol} on {', '.join(shown)}"
    half = len(shown) // 2
    implicit = "SMTPS" if protocol == "SMTP" else f"{protocol} over TLS"
    return f"{protocol} on {', '.join(shown[:half])} and {implicit} on {', '.join(shown[half:])}"


def _tls_summary(args: argparse.Namespace, options: ServerOptions) -> str:
    if options.tls_context is None:
        return f"TLS {args.tls_mode}"
    details = [
        f"{args.tls_preset or TlsPreset.MODERN.value} preset",
        "self-signed certificate" if args.tls_cert is None else f"certificate {args.tls_cert}",
    ]
    if args.tls_mode == TlsMode.FORBIDDEN.value:
        details.insert(0, "implicit TLS only")
    return f"TLS {args.tls_mode} ({', '.join(details)})"


def _auth_summary(args: argparse.Namespace, handler: Handler) -> str:
    if args.auth_mode == AuthMode.FORBIDDEN.value:
        return "AUTH forbidden"
    details = [" ".join(args.auth_mechanisms)]
    if isinstance(handler, AuthenticatingHandler):
        count = len(handler.credentials)
        details.append(f"{count} user{'' if count == 1 else 's'}")
    if args.allow_insecure_auth:
        details.append("also without TLS")
    return f"AUTH {args.auth_mode} ({', '.join(details)})"


def _hash_password(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print ``[USER:]scrypt$...`` for the password on stdin."""
    user = args.user
    if user is not None:
        try:
            check_user_name(user)
        except ValueError as exc:
            parser.error(str(exc))
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            parser.error("the passwords differ")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        parser.error("the password is empty")
    line = hash_password(password)
    print(line if user is None else f"{user}:{line}")
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
