"""Clients and a recording handler for the integration suite (fixtures live in conftest.py).

Every socket operation here is bounded by `TIMEOUT` and every subprocess by its own timeout,
so a hung transport fails a test instead of blocking the run.
"""

from __future__ import annotations

import shutil
import smtplib

# Real sockets are the point of these tests.
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from transports.handler import Handler, Session

__all__ = [
    "ASYNC_HOOKS",
    "SWAKS",
    "TIMEOUT",
    "Delivery",
    "LogLine",
    "RawClient",
    "Recorder",
    "asyncify",
    "make_message",
    "refusing_new_clients",
    "run_swaks",
    "smtp_client",
]

TIMEOUT = 5.0
"""Seconds any one socket operation of a client may take."""
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
CLIENT_NAME = "client.test"
"""Our EHLO name: smtplib and swaks would otherwise look the local host name up."""

H = TypeVar("H", bound=Handler)

ASYNC_HOOKS = (
    "on_connect",
    "on_disconnect",
    "on_helo",
    "on_mail_from",
    "on_rcpt_to",
    "on_auth",
    "on_message_start",
    "on_message_headers",
    "on_message_data",
    "on_message",
    "on_unknown_command",
)
"""Every hook that may be ``async def`` (``on_logging`` never may)."""


def make_message(subject: str, body: str = "Hello there.\r\n", *, sender: str = "x@y.z") -> bytes:
    """A small RFC 5322 message ending in CRLF (so it is delivered byte for byte)."""
    return (
        f"From: {sender}\r\nTo: a@b.c\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\n\r\n{body}"
    ).encode()


# ---------------------------------------------------------------- the recording handler


@dataclass(frozen=True, slots=True)
class Delivery:
    """What `Handler.on_message` saw of one message."""

    sender: str | None
    recipients: tuple[str, ...]
    data: bytes
    subject: str | None
    helo: str | None
    authorization_id: str | None
    authentication_id: str | None
    mail_params: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogLine:
    level: int
    message: str
    exc: BaseException | None


class Recorder(Handler):
    """Records every delivered message, every disconnect and every log line.

    Hooks run on the server's threads; the test thread reads the records under `cond`
    (`wait_for` blocks until a condition holds or a timeout passes).
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.deliveries: list[Delivery] = []
        self.disconnects: list[int] = []
        """The client port of each session that ended (one entry per `on_disconnect`)."""
        self.logs: list[LogLine] = []

    def on_message(self, ctx: Session) -> None:
        self.deliver(ctx)

    def deliver(self, ctx: Session) -> None:
        delivery = Delivery(
            sender=ctx.sender,
            recipients=ctx.recipients,
            data=ctx.message.as_bytes(),
            subject=ctx.message.email["subject"],
            helo=ctx.helo,
            authorization_id=ctx.authorization_id,
            authentication_id=ctx.authentication_id,
            mail_params=dict(ctx.mail_params),
        )
        with self.cond:
            self.deliveries.append(delivery)
            self.cond.notify_all()

    def on_disconnect(self, ctx: Session) -> None:
        with self.cond:
            self.disconnects.append(ctx.remote_port)
            self.cond.notify_all()

    def on_logging(
        self, ctx: Session | None, level: int, message: str, exc: BaseException | None = None
    ) -> None:
        with self.cond:
            self.logs.append(LogLine(level, message, exc))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_disconnects(self, count: int, timeout: float = TIMEOUT) -> list[int]:
        """Wait for ``count`` disconnects, then a moment more to catch a duplicate call."""
        assert self.wait_for(lambda: len(self.disconnects) >= count, timeout), (
            f"on_disconnect called {len(self.disconnects)} times, expected {count}"
        )
        time.sleep(0.05)
        with self.cond:
            return list(self.disconnects)

    def subjects(self) -> list[str | None]:
        with self.cond:
            return [d.subject for d in self.deliveries]


def _async_hook(sync: Callable[..., Any]) -> Callable[..., Any]:
    async def hook(self: Handler, *args: Any) -> Any:
        await anyio.sleep(0)  # really suspend, on whichever loop runs us (asyncio or trio)
        return sync(self, *args)

    hook.__name__ = hook.__qualname__ = sync.__name__
    return hook


def asyncify(cls: type[H]) -> type[H]:
    """A subclass of ``cls`` whose overridden hooks are ``async def`` (suspending once first),
    each doing what the synchronous one does."""
    namespace: dict[str, Any] = {}
    for name in ASYNC_HOOKS:
        sync = getattr(cls, name)
        if sync is not getattr(Handler, name):
            namespace[name] = _async_hook(sync)
    return type(f"Async{cls.__name__}", (cls,), namespace)


# ---------------------------------------------------------------- clients


class RawClient:
    """A line-oriented SMTP client on a plain socket, for what smtplib cannot do
    (pipelining by hand, reading an unsolicited 421, dropping mid-DATA)."""

    def __init__(self, address: tuple[str, int], timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self, timeout: float | None = None) -> str:
        """The next line without CRLF; EOFError if the server closed first."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed the connection; unfinished line {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def read_reply(self, timeout: float | None = None) -> tuple[int, list[str]]:
        """The next (possibly multi-line) reply: its code and the text of each line."""
        lines: list[str] = []
        while True:
            line = self.read_line(timeout)
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    def expect(self, code: int) -> list[str]:
        got, lines = self.read_reply()
        assert got == code, f"expected {code}, got {got} {lines}"
        return lines

    def command(self, line: str, code: int) -> list[str]:
        self.send(line.encode() + b"\r\n")
        return self.expect(code)

    def wait_closed(self, timeout: float = TIMEOUT) -> bool:
        """True once the server has closed the connection (EOF or reset) with nothing more
        sent; False if it is still open after ``timeout``."""
        if self.buffer:
            raise AssertionError(f"unread data before the close: {self.buffer!r}")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if data:
            raise AssertionError(f"expected the connection closed, got {data!r}")
        return True

    def start_transaction(
        self, sender: str = "x@y.z", recipients: tuple[str, ...] = ("a@b.c",)
    ) -> None:
        """Banner, EHLO, MAIL, RCPT..., DATA: the server is then waiting for content."""
        self.expect(220)
        self.command(f"EHLO {CLIENT_NAME}", 250)
        self.command(f"MAIL FROM:<{sender}>", 250)
        for rcpt in recipients:
            self.command(f"RCPT TO:<{rcpt}>", 250)
        self.command("DATA", 354)


@contextmanager
def smtp_client(address: tuple[str, int], timeout: float = 10.0) -> Iterator[smtplib.SMTP]:
    """An smtplib client with a fixed EHLO name; QUITs (if still connected) and closes."""
    client = smtplib.SMTP(address[0], address[1], local_hostname=CLIENT_NAME, timeout=timeout)
    try:
        yield client
    finally:
        with suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()


def run_swaks(
    address: tuple[str, int], *args: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run swaks against ``address`` (its own SMTP timeout 10 s, the process ``timeout``)."""
    command = [
        SWAKS,
        "--server",
        f"{address[0]}:{address[1]}",
        "--helo",
        CLIENT_NAME,
        "--timeout",
        "10",
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def refusing_new_clients(address: tuple[str, int], timeout: float = TIMEOUT) -> bool:
    """Poll until a new client is turned away (connection refused or reset, or a 421 before
    any banner); False if clients are still being greeted after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with RawClient(address, timeout=1.0) as probe:
                code, _ = probe.read_reply()
        except (ConnectionRefusedError, ConnectionResetError, EOFError):
            return True
        except TimeoutError:
            continue
        if code == 421:
            return True
        time.sleep(0.05)
    return False
