"""Clients, handlers and a subprocess server for the security suite.

Every socket operation is bounded by a timeout and every subprocess is stopped by the test
that started it (by its own pid), so a hung transport fails a test instead of blocking CI.
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transports.handler import Handler, Session

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0
"""Seconds any one client socket operation may take."""
EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<sender@example.org>\r\n"
RCPT = b"RCPT TO:<rcpt@example.net>\r\n"
_REPLY_LINE = re.compile(rb"(\d{3})([ -])(.*)")

# ---------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 code of the last line ("" if none)."""
        words = self.lines[-1].split(" ", 1)
        return words[0] if words and re.fullmatch(r"[245]\.\d+\.\d+", words[0]) else ""


class Client:
    """A raw SMTP client on a plain socket: pipelining by hand, injection, resets."""

    def __init__(self, address: tuple[str, int], timeout: float = TIMEOUT) -> None:
        self.sock: socket.socket = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, tolerating a server that closed meanwhile; False if it did."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _line(self, timeout: float | None) -> bytes:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed; unfinished line {self.buffer[:200]!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self, timeout: float | None = None) -> Reply:
        """The next (possibly multi-line) reply; EOFError if the server closed first."""
        lines: list[str] = []
        while True:
            raw = self._line(timeout)
            m = _REPLY_LINE.fullmatch(raw)
            assert m, f"malformed reply line {raw!r}"
            lines.append(m.group(3).decode("utf-8"))
            if m.group(2) == b" ":
                return Reply(int(m.group(1)), tuple(lines))

    def code(self, timeout: float | None = None) -> int:
        return self.reply(timeout).code

    def expect(self, code: int, timeout: float | None = None) -> Reply:
        reply = self.reply(timeout)
        assert reply.code == code, f"expected {code}, got {reply}"
        return reply

    def codes(self, count: int, timeout: float | None = None) -> list[int]:
        return [self.code(timeout) for _ in range(count)]

    def command(self, line: bytes | str) -> Reply:
        data = line.encode() if isinstance(line, str) else line
        self.send(data if data.endswith(b"\n") else data + b"\r\n")
        return self.reply()

    def greet(self) -> Client:
        """Read the banner and say EHLO."""
        self.expect(220)
        self.send(EHLO)
        self.expect(250)
        return self

    def rest(self, timeout: float = TIMEOUT) -> tuple[list[Reply], str]:
        """Every reply until the server closes; and how it closed ("eof", "reset", "timeout",
        or "alert" when a TLS layer ended with an alert instead of close_notify)."""
        out: list[Reply] = []
        while True:
            try:
                out.append(self.reply(timeout))
            except EOFError:
                return out, "eof"
            except ConnectionResetError:
                return out, "reset"
            except TimeoutError:
                return out, "timeout"
            except ssl.SSLError:
                return out, "alert"

    def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """True once the server has closed (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def starttls(self, settle: float = 0.05) -> None:
        """Run the client side of a TLS handshake on the socket (no certificate checks).

        ``settle``: seconds to wait before the caller may write. The asyncio transport loses
        a session whose first command arrives with the client's Finished (see
        ``test_commands_right_after_the_handshake_are_served``); the other tests give it time
        so they test what they are about.
        """
        assert not self.buffer, f"plaintext left over before TLS: {self.buffer!r}"
        context = ssl._create_unverified_context()
        self.sock.settimeout(self.timeout)
        self.sock = context.wrap_socket(self.sock, server_hostname="mx.test")
        if settle:
            time.sleep(settle)


def transaction(body: bytes, *, sender: bytes = b"sender@example.org") -> bytes:
    """MAIL, RCPT, DATA, the body (already dot-stuffed, ending in CRLF) and the terminator."""
    return b"MAIL FROM:<" + sender + b">\r\n" + RCPT + b"DATA\r\n" + body + b".\r\n"


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (to cut a handshake short on purpose)."""
    context = ssl._create_unverified_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="mx.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ---------------------------------------------------------------- handlers


@dataclass
class Stored:
    sender: str | None
    recipients: tuple[str, ...]
    data: bytes
    authenticated: str | None


@dataclass
class Recorder(Handler):
    """Records what each hook saw. Plain ``def`` hooks: every transport runs them."""

    password: str = "secret"
    cond: threading.Condition = field(default_factory=threading.Condition)
    messages: list[Stored] = field(default_factory=list)
    mail_froms: list[tuple[str, str | None]] = field(default_factory=list)
    """(address, authentication id at the time) of every MAIL the handler was asked about."""
    rcpts: list[str] = field(default_factory=list)
    auths: list[tuple[str, str | None]] = field(default_factory=list)
    disconnects: int = 0
    unknown: list[str] = field(default_factory=list)

    def __hash__(self) -> int:  # the driver caches hooks by handler identity
        return id(self)

    def on_mail_from(self, ctx: Session, address: str, event: Any) -> None:
        with self.cond:
            self.mail_froms.append((address, ctx.authentication_id))

    def on_rcpt_to(self, ctx: Session, address: str, event: Any) -> None:
        with self.cond:
            self.rcpts.append(address)

    def on_auth(
        self, ctx: Session, authz: str, authn: str, password: str | None, attempt: Any
    ) -> None:
        with self.cond:
            self.auths.append((authn, password))
        if authn != "user" or password != self.password:
            from transports.errors import Smtp535Error

            raise Smtp535Error()

    def on_unknown_command(self, ctx: Session, verb: str, argument: str) -> None:
        with self.cond:
            self.unknown.append(verb)
        from transports.errors import SmtpError

        raise SmtpError(500, "Command unrecognized", "5.5.2")

    def on_message(self, ctx: Session) -> None:
        stored = Stored(ctx.sender, ctx.recipients, ctx.message.as_bytes(), ctx.authentication_id)
        with self.cond:
            self.messages.append(stored)
            self.cond.notify_all()

    def on_disconnect(self, ctx: Session) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def on_logging(self, ctx: Any, level: int, message: str, exc: Any = None) -> None:
        pass  # keep the test output quiet: failures are asserted, not logged

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


# ---------------------------------------------------------------- a server in a subprocess

_SERVER_SCRIPT = r"""
import json, sys
from smtpcore import SmtpConfig
from transports.controller import ServerThread
from transports.handler import Handler

class Quiet(Handler):
    def on_logging(self, ctx, level, message, exc=None):
        pass

transport, spec = sys.argv[1], json.loads(sys.argv[2])
config = SmtpConfig(hostname="mx.test", **spec.pop("config", {}))
server = ServerThread(transport, Quiet(), host="127.0.0.1", port=0, config=config, **spec)
server.start()
print(server.address[1], flush=True)
sys.stdin.read()  # runs until the test closes our stdin
server.stop(grace=1.0, timeout=20.0)
print("stopped", flush=True)
"""


class ServerProcess:
    """A server of ``transport`` in a child process, so its memory can be measured alone.

    ``spec`` holds `ServerOptions` keywords, with ``config`` a dict of `SmtpConfig` keywords.
    Closing the child's stdin stops it gracefully; `close` kills it (by pid) if it hangs.
    """

    def __init__(self, transport: str, spec: dict[str, Any] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, transport, json.dumps(spec or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = threading.Event()
        box: list[str] = []

        def read_port() -> None:
            assert self.proc.stdout is not None
            box.append(self.proc.stdout.readline())
            ready.set()

        threading.Thread(target=read_port, daemon=True).start()
        if not ready.wait(20.0) or not box[0].strip().isdigit():
            self.close()
            raise RuntimeError(f"server subprocess did not start: {box!r}")
        self.address = ("127.0.0.1", int(box[0]))

    def status(self, field_name: str) -> int:
        """A /proc/PID/status figure in bytes (VmRSS, VmHWM...)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
        assert m, f"no {field_name} in /proc status"
        return int(m.group(1)) * 1024

    @property
    def rss(self) -> int:
        return self.status("VmRSS")

    @property
    def peak(self) -> int:
        return self.status("VmHWM")

    def stop(self, timeout: float = 25.0) -> bool:
        """Graceful stop; True if the child said it stopped and exited 0."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return False
        return "stopped" in self.proc.stdout.read() and self.proc.returncode == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
