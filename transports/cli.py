"""The ``smtpcore`` command. ``smtpcore serve`` runs a server until SIGINT or SIGTERM:

    smtpcore serve --transport trio --port 2525 --handler debug
    smtpcore serve --tls-mode required --auth-mode required --auth-file users --smtps-port 4650

Each transport runs natively in the main thread (``asyncio.run``, ``trio.run``, ``anyio.run``,
or the threads server's ``start``/``join``); a signal stops it gracefully and the exit status
is 0. Bad options exit 2, a server that cannot listen exits 1.

``smtpcore hash-password [USER]`` reads a password from stdin and prints the line for an
``--auth-file`` (see `transports.auth`).

Every ``serve`` option can also come from an environment variable named after it:
``SMTPCORE_PORT=2600``, ``SMTPCORE_TLS_MODE=required``, ``SMTPCORE_LMTP=1`` (switches take
1/true/yes/on or 0/false/no/off), ``SMTPCORE_CHAOS=rcpt=451:0.2,mail=421`` (repeatable options
take comma-separated values). A flag wins over its variable; an empty variable counts as unset;
a malformed one is an error (exit 2) even when a flag overrides it, so a broken environment
does not go unnoticed. ``python -m smtpcore`` is the same command.

Logs (the ``smtpcore.*`` loggers and any others) go to stderr at ``--log-level`` (default info),
as text or, with ``--log-format json``, as one JSON object per line: ``time``, ``level``,
``logger``, ``message``, then ``remote_ip``/``remote_port`` for session lines, any ``extra``
fields the record carries, and ``exception`` with the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import importlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, NoReturn, TypeVar

from smtpcore import AuthMode, SmtpConfig, TlsMode, __version__
from smtpcore.sasl import BUILTIN_MECHANISMS

from .auth import AuthenticatingHandler, Credentials, check_user_name, hash_password
from .controller import TRANSPORTS
from .handler import Handler
from .handlers import (
    HANDLERS,
    ChaosHandler,
    ChaosRule,
    MemoryHandler,
    parse_chaos,
    resolve_handler,
)
from .ops import OpsServer, make_observer
from .options import ServerOptions
from .tls import TlsPreset, make_server_context
from .workers import run_workers, worker_observer

__all__ = ["ENV_PREFIX", "JsonFormatter", "build_parser", "main"]

GRACE = 5.0
"""Seconds a stop signal leaves transactions in progress to finish (see ``Server.stop``)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Runner = Callable[[Any, Callable[[], None], LoopFactory | None, float], None]
N = TypeVar("N", int, float)

ENV_PREFIX = "SMTPCORE_"
"""``serve --tls-mode`` can also be set with ``SMTPCORE_TLS_MODE``, and so on."""
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class _Parser(argparse.ArgumentParser):
    """Says what is wrong in one line (and where to read more), exit status 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


class _FromEnv(list[Any]):
    """A repeatable option's values taken from its environment variable."""


class _Append(argparse.Action):
    """``action="append"`` whose first flag replaces values from the environment."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or isinstance(items, _FromEnv) else list(items)
        items.append(values)
        setattr(namespace, self.dest, items)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) with the environment ``env``
    (default ``os.environ``, for the ``SMTPCORE_*`` variables); returns the exit status."""
    parser, serve = _build()
    problems, unknown = _apply_environment(serve, os.environ if env is None else env)
    args = parser.parse_args(argv)
    if args.command == "serve":
        if problems:
            serve.error("; ".join(problems))
        for name in unknown:
            print(
                f"{serve.prog}: warning: {name} is not an option's variable (ignored)",
                file=sys.stderr,
            )
    try:
        return int(args.run(args.parser, args))  # errors then show the command's own usage
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The command line parser, with the built-in defaults (``main`` adds the environment)."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser and its ``serve`` subparser."""
    parser = _Parser(
        prog="smtpcore",
        description="A sans-IO SMTP/LMTP server core with threads, asyncio, trio and anyio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run an SMTP or LMTP server until SIGINT or SIGTERM",
        description="Run an SMTP or LMTP server until SIGINT or SIGTERM (a graceful stop). "
        "It advertises every extension the core supports. Every option can also be set "
        f"with the environment variable shown beside it, [env: {ENV_PREFIX}<OPTION>]: a flag "
        "wins; repeatable options take comma-separated values there, switches 1 or 0.",
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
        action=_Append,
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
    _add_catcher_arguments(serve)
    _add_scaleout_arguments(serve)
    _add_logging_arguments(serve)
    _document_environment(serve)
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
    return parser, serve


def _add_catcher_arguments(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument_group("mail catcher").add_argument
    add(
        "--http",
        type=_http_address,
        metavar="[HOST:]PORT",
        help="also show the messages of --handler memory as a web page and a Mailpit-like JSON "
        "API on HOST:PORT (a PORT alone: 127.0.0.1:PORT; see docs/mail-catcher.md) "
        "(default: none)",
    )
    add(
        "--max-messages",
        type=_positive(int),
        metavar="N",
        help="with --http: keep at most N messages, dropping the oldest (default: no limit)",
    )
    add(
        "--max-age",
        type=_positive(float),
        metavar="SECONDS",
        help="with --http: drop messages received more than SECONDS ago (default: no limit)",
    )


def _add_scaleout_arguments(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument_group("scale-out and operations").add_argument
    add(
        "--proxy-protocol",
        action="store_true",
        help="every connection to --port starts with a PROXY protocol header (v1 or v2, "
        "HAProxy's send-proxy/send-proxy-v2) naming the real client; only from "
        "--trusted-proxy peers, others are closed without a reply (default: off)",
    )
    add(
        "--trusted-proxy",
        action=_Append,
        default=[],
        type=_network,
        metavar="CIDR",
        help="a proxy allowed to send PROXY headers, e.g. 10.0.0.0/8 or 192.0.2.5; "
        "repeatable (default: none)",
    )
    add(
        "--workers",
        type=_positive(int),
        default=1,
        metavar="N",
        help="serve with N processes sharing the listening sockets; a worker that dies is "
        "restarted (default: %(default)s)",
    )
    add(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /livez, /readyz and /metrics (Prometheus, with prometheus-client "
        "installed) over HTTP on --host, PORT (default: off)",
    )
    add(
        "--grace",
        type=_non_negative(float),
        default=GRACE,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long transactions in progress may take to finish "
        "before the rest are closed with 421 (default: %(default)s)",
    )


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address or CIDR: {text!r}") from None


def _add_logging_arguments(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument_group("logging").add_argument
    add(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="the least severe log lines shown, on stderr (default: %(default)s)",
    )
    add(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or json: one object per line with time, level, logger, message "
        "and the session's remote_ip and remote_port (default: %(default)s)",
    )


# ---- options from the environment


def env_name(action: argparse.Action) -> str:
    """``--tls-mode`` -> ``SMTPCORE_TLS_MODE``."""
    long = next(o for o in action.option_strings if o.startswith("--"))
    return ENV_PREFIX + long.removeprefix("--").replace("-", "_").upper()


def _env_actions(serve: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        env_name(action): action
        for action in serve._actions
        if action.option_strings and action.dest != "help"
    }


def _document_environment(serve: argparse.ArgumentParser) -> None:
    """Write each option's default into its help (the environment may change the default
    later, the help keeps telling the built-in one) followed by its variable's name."""
    for name, action in _env_actions(serve).items():
        text = action.help or ""
        if "%(default)s" in text:
            text = text.replace("%(default)s", str(action.default))
        repeatable = ", comma-separated" if isinstance(action, _Append) else ""
        if not text.endswith(")") or "(default: " not in text:
            raise AssertionError(f"{action.option_strings[0]}: help must end in (default: ...)")
        action.help = f"{text} [env: {name}{repeatable}]".replace("%", "%%")


def _apply_environment(
    serve: argparse.ArgumentParser, env: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """Make each ``SMTPCORE_*`` variable its option's default; returns what is wrong with
    them, and the names of those that name no option."""
    actions = _env_actions(serve)
    problems: list[str] = []
    unknown: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        action = actions.get(name)
        text = env[name].strip()
        if action is None:
            unknown.append(name)
            continue
        if not text:
            continue
        try:
            action.default = _env_value(action, text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            problems.append(f"{name}={env[name]!r}: {_why(action, exc)}")
    return problems, unknown


def _env_value(action: argparse.Action, text: str) -> Any:
    if action.nargs == 0:  # a switch
        word = text.lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(f"use one of {', '.join(_TRUE + _FALSE)}")
        return word in _TRUE
    if isinstance(action, _Append):
        return _FromEnv(_convert(action, part.strip()) for part in text.split(",") if part.strip())
    return _convert(action, text)


def _convert(action: argparse.Action, text: str) -> Any:
    value = text if action.type is None else action.type(text)  # type: ignore[operator]
    if action.choices is not None and value not in action.choices:
        shown = ", ".join(map(str, action.choices))
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {shown})")
    return value


def _why(action: argparse.Action, exc: Exception) -> str:
    if isinstance(exc, argparse.ArgumentTypeError) or action.nargs == 0:
        return str(exc)
    kind = getattr(action.type, "__name__", "")  # as argparse says it: invalid int value
    return f"invalid {kind} value" if kind else str(exc)


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
        action=_Append,
        default=[],
        metavar="USER:PASSWORD",
        help="a user and its clear password, for tests and demos; repeatable (a password "
        "holding a comma cannot come from the environment variable) (default: none)",
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


def _http_address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "127.0.0.1", text
    elif not host:
        raise argparse.ArgumentTypeError(f"use HOST:PORT or PORT, not {text!r}")
    return host.removeprefix("[").removesuffix("]"), _port(port)


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
    with _logging_to(sys.stderr, args.log_level, args.log_format) as log:
        return _serve_logged(parser, args, log)


def _serve_logged(
    parser: argparse.ArgumentParser, args: argparse.Namespace, log: Callable[..., None]
) -> int:
    host = args.host.removeprefix("[").removesuffix("]")  # [::1] as in a URL
    try:
        _check_tls_and_auth(args)
        if args.trusted_proxy and not args.proxy_protocol:
            raise ValueError("--trusted-proxy needs --proxy-protocol")
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
            trusted_proxies=tuple(args.trusted_proxy),
        )
        listeners = tuple(  # PROXY on the plain/STARTTLS port; SMTPS (implicit TLS) without
            dataclasses.replace(lst, proxy_protocol=args.proxy_protocol and not lst.implicit_tls)
            for lst in options.listeners
        )
        options = dataclasses.replace(options, listeners=listeners)
        if os.getcwd() not in sys.path:  # package.module:Class from where smtpcore is run
            sys.path.append(os.getcwd())
        base = resolve_handler(args.handler)
        catcher = _catcher(args, base)
        if catcher is not None and args.workers > 1:
            raise ValueError("--http keeps messages in one process: it cannot go with --workers")
        handler = _wrapped(base, args)
    except (ValueError, OSError) as exc:  # OSError: a certificate or user file cannot be read
        parser.error(str(exc))
    loop_factory = _loop_factory(parser, args.loop, args.transport)
    try:
        module = importlib.import_module(f"transports.{args.transport}")
    except ImportError as exc:
        parser.error(f"transport {args.transport} is not available: {exc}")
    observer = None
    if args.metrics_port is not None and args.workers == 1:  # workers: see _serve_workers
        observer = make_observer()
        options = dataclasses.replace(options, observer=observer)
    try:
        server = module.Server(handler, options)
    except TypeError as exc:  # e.g. async def hooks under the threads transport
        parser.error(str(exc))
    if args.workers > 1:
        return _serve_workers(args, options, module, loop_factory, host, log)
    ops: list[OpsServer] = []

    transport = args.transport if loop_factory is None else f"{args.transport} on {args.loop}"

    def ready() -> None:
        protocol = "LMTP" if args.lmtp else "SMTP"
        smtps = args.smtps_port is not None
        addresses = server.addresses
        tls, auth = _tls_summary(args, options), _auth_summary(args, handler)
        web = "" if catcher is None else f"; mail catcher on {catcher.url}"
        log(
            logging.INFO,
            f"serving {_where(addresses, protocol, smtps=smtps)} (transport {transport}, "
            f"handler {args.handler}, {tls}, {auth}){web}; SIGINT or SIGTERM stops",
            protocol=protocol,
            listen=[_show(a) for a in addresses[: len(addresses) // 2 if smtps else None]],
            smtps=[_show(a) for a in addresses[len(addresses) // 2 :]] if smtps else [],
            transport=transport,
            handler=args.handler,
            tls=tls.removeprefix("TLS "),
            auth=auth.removeprefix("AUTH "),
            catcher=None if catcher is None else catcher.url,
        )

    try:
        if catcher is not None:
            catcher.start()  # first: a busy HTTP port stops the command before SMTP starts
        if observer is not None:
            ops.append(OpsServer((host, args.metrics_port), observer).start())
        _RUNNERS[args.transport](server, ready, loop_factory, args.grace)
    except Exception as exc:
        error = _os_error(exc)
        if error is None:
            raise
        log(logging.ERROR, f"cannot serve: {error}")
        return 1
    finally:
        if catcher is not None:
            catcher.stop()
        for endpoint in ops:
            endpoint.close()
    return 0


def _wrapped(handler: Handler, args: argparse.Namespace) -> Handler:
    """The handler with --auth-user/--auth-file checks and --chaos around it."""
    handler = _with_credentials(handler, args)
    if args.chaos:  # outermost, so that AUTH failures can be injected too
        handler = ChaosHandler(handler, args.chaos, seed=args.chaos_seed)
    return handler


def _serve_workers(
    args: argparse.Namespace,
    options: ServerOptions,
    module: Any,
    loop_factory: LoopFactory | None,
    host: str,
    log: Callable[..., None],
) -> int:
    """--workers N: the parent binds and supervises, each worker runs the transport natively
    (its own handler, and its own metrics which the parent's /metrics sums)."""

    def serve_one(listeners: tuple[Any, ...]) -> int:
        mine = dataclasses.replace(options, listeners=listeners, observer=worker_observer())
        server = module.Server(_wrapped(resolve_handler(args.handler), args), mine)
        _RUNNERS[args.transport](server, lambda: None, loop_factory, args.grace)
        return 0

    def ready(addresses: list[tuple[str, int]], ops: tuple[str, int] | None) -> None:
        protocol = "LMTP" if args.lmtp else "SMTP"
        where = _where(addresses, protocol, smtps=args.smtps_port is not None)
        log(
            logging.INFO,
            f"serving {where} with {args.workers} {args.transport} workers (handler "
            f"{args.handler}); SIGINT or SIGTERM stops",
            workers=args.workers,
            listen=[_show(a) for a in addresses],
        )

    try:
        return run_workers(
            args.workers,
            serve_one,
            options.listeners,
            ops_address=None if args.metrics_port is None else (host, args.metrics_port),
            stop_timeout=args.grace + 30.0,
            ready=ready,
        )
    except OSError as exc:
        log(logging.ERROR, f"cannot serve: {exc}")
        return 1


def _catcher(args: argparse.Namespace, handler: Handler) -> Any:
    """The mail catcher (``transports.catcher.Catcher``, not started) that ``--http`` asks
    for, over ``handler``; None without ``--http``. Imported only then."""
    if args.http is None:
        for flag in ("max_messages", "max_age"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --http")
        return None
    if not isinstance(handler, MemoryHandler):
        raise ValueError("--http needs --handler memory (the catcher shows what it keeps)")
    try:
        module: Any = importlib.import_module("transports.catcher")
    except ImportError as exc:
        raise ValueError(f"--http: the mail catcher is not available: {exc}") from None
    host, port = args.http
    return module.Catcher(handler, host, port, args.max_messages, args.max_age)


# ---- logging


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``; ``remote_ip`` and ``remote_port`` for the session lines of the transports
    (``[ip:port] message``); every ``extra=`` field of the record; ``exception`` and
    ``stack`` when the record has them. Values JSON cannot hold are written as text."""

    _STANDARD = frozenset(
        (*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName")
    )
    _SESSION = re.compile(r"\[(?P<ip>[^\]\s]+):(?P<port>\d+)\] ")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        session = self._SESSION.match(message)
        if session is not None:
            out["remote_ip"], out["remote_port"] = session["ip"], int(session["port"])
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


@contextmanager
def _logging_to(stream: IO[str], level: str, form: str) -> Iterator[Callable[..., None]]:
    """Send every log record at ``level`` or above to ``stream`` as ``form`` (text or json)
    while the block runs; yields ``log(level, message, **fields)`` for the command's own lines,
    which are shown whatever the level (text: ``smtpcore: message``)."""
    formatter = JsonFormatter() if form == "json" else logging.Formatter(TEXT_LOG_FORMAT)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())

    def log(severity: int, message: str, **fields: Any) -> None:
        if form == "json":
            record = logging.LogRecord("smtpcore.cli", severity, __file__, 0, message, None, None)
            record.__dict__.update(fields)
            line = formatter.format(record)
        else:
            line = f"smtpcore: {message}"
        print(line, file=stream, flush=True)

    try:
        yield log
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.flush()


def _show(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    shown = [_show(address) for address in addresses]
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
    if isinstance(handler, ChaosHandler):  # --chaos wraps the users' handler
        handler = handler.handler
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


# ---- one runner per transport: start, call ready(), serve until a stop signal, stop(grace)


def _run_threads(
    server: Any, ready: Callable[[], None], _: LoopFactory | None, grace: float
) -> None:
    stopping: list[threading.Thread] = []

    def on_signal(signum: int, frame: object) -> None:
        if not stopping:  # stop() blocks: run it beside the main thread, which is in join()
            stopping.append(threading.Thread(target=server.stop, args=(grace,), daemon=True))
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


def _run_asyncio(
    server: Any, ready: Callable[[], None], loop_factory: LoopFactory | None, grace: float
) -> None:
    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        ready()
        await stop.wait()
        await server.stop(grace)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


def _run_trio(server: Any, ready: Callable[[], None], _: LoopFactory | None, grace: float) -> None:
    import trio

    async def serve() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve)
                ready()
                async for _signum in signals:
                    break
                await server.stop(grace)

    trio.run(serve)


def _run_anyio(
    server: Any, ready: Callable[[], None], loop_factory: LoopFactory | None, grace: float
) -> None:
    import anyio

    async def serve() -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with anyio.create_task_group() as tasks:
                await tasks.start(server.serve)
                ready()
                async for _signum in signals:
                    break
                await server.stop(grace)

    anyio.run(serve, backend="asyncio", backend_options={"loop_factory": loop_factory})


_RUNNERS: dict[str, Runner] = {
    "threads": _run_threads,
    "asyncio": _run_asyncio,
    "trio": _run_trio,
    "anyio": _run_anyio,
}

if __name__ == "__main__":
    sys.exit(main())
