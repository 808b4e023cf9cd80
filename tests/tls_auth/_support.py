"""Clients, peers and a recording handler for the TLS and AUTH suite.

Every socket operation is bounded by `TIMEOUT` and every subprocess by its own timeout, so a
hung server fails a test instead of blocking the run. Assertions are about behaviour (replies,
closes, what the handler saw), never about how long something took.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib

# Real sockets are the point of these tests.
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

import pytest

from smtpcore import AuthAttempt, MailFrom
from transports.handler import Handler, Session

TIMEOUT = 5.0
"""Seconds any one socket operation or expected output may take."""
PROCESS_TIMEOUT = 20.0
CLIENT_NAME = "client.test"
HOSTNAME = "mx.test"
USER, PASSWORD = "alice", "s3cret pass:word"
"""A password with a space and a colon, as ``--auth-user`` and PLAIN must carry them."""
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: tls-auth\r\n\r\nHi.\r\n"


def tool(name: str) -> str:
    """The path of a client program; the test is skipped if it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def plain(user: str, password: str, authzid: str = "") -> str:
    """The base64 PLAIN initial response."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# ---------------------------------------------------------------- the recording handler


@dataclass(frozen=True, slots=True)
class Seen:
    """What a hook saw of the session: the TLS facts and the identity."""

    tls_active: bool
    version: str | None
    cipher: str | None
    authentication_id: str | None
    authorization_id: str | None


class Recorder(Handler):
    """Records MAIL FROMs, delivered messages and disconnects, with the session's TLS facts
    and identity as each hook saw them. Checks nothing: wrap it in `AuthenticatingHandler`."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.senders: list[tuple[str, Seen]] = []
        self.messages: list[tuple[bytes, Seen]] = []
        self.disconnects = 0

    @staticmethod
    def seen(ctx: Session) -> Seen:
        facts = ctx.tls
        return Seen(
            tls_active=ctx.tls_active,
            version=None if facts is None else facts.version,
            cipher=None if facts is None else facts.cipher,
            authentication_id=ctx.authentication_id,
            authorization_id=ctx.authorization_id,
        )

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        with self.cond:
            self.senders.append((address, self.seen(ctx)))

    def on_message(self, ctx: Session) -> None:
        with self.cond:
            self.messages.append((ctx.message.as_bytes(), self.seen(ctx)))
            self.cond.notify_all()

    def on_disconnect(self, ctx: Session) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(condition, TIMEOUT):
                raise AssertionError(f"timed out waiting for {what}")

    def message(self) -> tuple[bytes, Seen]:
        """The one message received (waits for it: hooks run on the server's threads)."""
        self.wait_for(lambda: bool(self.messages), "a message")
        assert len(self.messages) == 1, self.messages
        return self.messages[0]


class CustomAuth(Handler):
    """A handler that checks passwords itself (the CLI must not demand --auth-user)."""

    def on_auth(
        self, ctx: Session, authz: str, authc: str, password: str | None, attempt: AuthAttempt
    ) -> None:
        return None


# ---------------------------------------------------------------- a raw client


class RawClient:
    """A line-oriented SMTP client on a socket it can upgrade to TLS, for what smtplib cannot
    do: commands in one write with STARTTLS, replies read one by one, a 421 then a close."""

    def __init__(self, address: tuple[str, int], *, implicit_tls: bool = False) -> None:
        self.sock: socket.socket = socket.create_connection(address, timeout=TIMEOUT)
        self.buffer = b""
        if implicit_tls:
            self.start_tls()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def start_tls(
        self, context: ssl.SSLContext | None = None, server_hostname: str = HOSTNAME
    ) -> ssl.SSLSocket:
        """Handshake on the socket. Plaintext left unread would be a server bug (replies to
        commands it should have dropped), so it fails the test."""
        assert not self.buffer, f"plaintext after the TLS go-ahead: {self.buffer!r}"
        # suppress_ragged_eofs=False: a close without close_notify raises instead of b"".
        tls = (context or unverified_context()).wrap_socket(
            self.sock, server_hostname=server_hostname, suppress_ragged_eofs=False
        )
        self.sock = tls
        return tls

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> str:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed; unfinished line {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def reply(self) -> tuple[int, list[str]]:
        """The next reply: its code and the text of each line."""
        lines: list[str] = []
        while True:
            line = self.read_line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    def expect(self, code: int) -> list[str]:
        got, lines = self.reply()
        assert got == code, f"expected {code}, got {got} {lines}"
        return lines

    def command(self, line: str, code: int) -> list[str]:
        self.send(line.encode() + b"\r\n")
        return self.expect(code)

    def ehlo(self) -> list[str]:
        """EHLO; the extension keywords, upper-case, the greeting line left out."""
        return [line.upper() for line in self.command(f"EHLO {CLIENT_NAME}", 250)[1:]]

    def starttls(self) -> ssl.SSLSocket:
        self.command("STARTTLS", 220)
        return self.start_tls()

    def closed_by_server(self) -> bool:
        """True once the server has closed (EOF or reset) with nothing more sent."""
        assert not self.buffer, f"unread data: {self.buffer!r}"
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return True
        except ssl.SSLError as exc:  # e.g. a TLS alert instead of data
            return "EOF" in str(exc) or "closed" in str(exc).lower()
        assert not data, f"data instead of a close: {data!r}"
        return True


def client_hello() -> bytes:
    """A genuine TLS ClientHello, as the first flight of a handshake."""
    outgoing = ssl.MemoryBIO()
    tls = unverified_context().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=HOSTNAME)
    with suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshake_then_send(sock: socket.socket, first: bytes) -> bytes:
    """TLS over memory BIOs so that the client's Finished and ``first`` (a command) leave in a
    single TCP segment, as a TLS 1.3 client that writes right after its handshake may; returns
    the first reply line(s) the server sends back, decrypted (b"" if it closed instead)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = unverified_context().wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                return b""
            incoming.write(data)
    assert tls.version() == "TLSv1.3"  # a TLS 1.2 client could not send data this early
    tls.write(first)
    sock.sendall(outgoing.read())  # Finished + the command, one write
    received = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", received):
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        incoming.write(data)
        try:
            received += tls.read(65536)
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError:
            return received
    return received


# ---------------------------------------------------------------- smtplib


def smtp(address: tuple[str, int]) -> smtplib.SMTP:
    return smtplib.SMTP(*address, local_hostname=CLIENT_NAME, timeout=TIMEOUT)


def smtps(address: tuple[str, int]) -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL(
        *address, local_hostname=CLIENT_NAME, timeout=TIMEOUT, context=unverified_context()
    )


def peer_certificate(client: smtplib.SMTP) -> bytes:
    sock = client.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


# ---------------------------------------------------------------- peers as subprocesses


def run_swaks(address: tuple[str, int], *args: str) -> subprocess.CompletedProcess[str]:
    """swaks against ``address`` sending one message to bob (its own SMTP timeout 10 s)."""
    command = [
        tool("swaks"),
        "--server",
        f"{address[0]}:{address[1]}",
        "--helo",
        CLIENT_NAME,
        "--from",
        "alice@example.org",
        "--to",
        "bob@example.org",
        "--timeout",
        "10",
        *args,
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class Interactive:
    """A client program driven line by line: write to its stdin, wait for its output.

    ``expect`` waits (at most `TIMEOUT`) until a pattern shows up in the output after what
    earlier calls consumed, so each command is sent only once the previous reply is in.
    """

    def __init__(self, argv: Sequence[str], *, newline: bytes = b"\n") -> None:
        self.newline = newline
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self.consumed = 0
        self.cond = threading.Condition()
        self.finished = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            with self.cond:
                self.output += chunk
                self.cond.notify_all()
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def __enter__(self) -> Interactive:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(PROCESS_TIMEOUT)
        self.reader.join(PROCESS_TIMEOUT)

    def text(self) -> str:
        with self.cond:
            return self.output.decode("utf-8", "replace")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + self.newline)
        self.process.stdin.flush()

    def expect(self, pattern: str) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while True:
                text = self.output.decode("utf-8", "replace")
                found = regex.search(text, self.consumed)
                if found:
                    self.consumed = found.end()
                    return found
                left = deadline - time.monotonic()
                if self.finished or left <= 0:
                    raise AssertionError(f"no {pattern!r} in the output:\n{text}")
                self.cond.wait(left)

    def command(self, line: str, reply: str, first: str | None = None) -> str:
        """Send a command, wait for the last line of its reply (starting with ``reply``, e.g.
        ``"250 "``; after a line starting with ``first``, for a reply of several lines) and
        return the output up to there."""
        start = self.consumed
        self.send(line)
        if first is not None:
            self.expect(rf"^{re.escape(first)}.*$")
        self.expect(rf"^{reply}.*$")
        return self.text()[start : self.consumed]

    def wait(self) -> int:
        return self.process.wait(PROCESS_TIMEOUT)


def s_client(address: tuple[str, int], *args: str) -> list[str]:
    """openssl s_client doing EHLO and STARTTLS itself; ``-ign_eof`` keeps it talking after
    stdin ends and turns off its command letters (a line "RCPT TO" would renegotiate)."""
    return [
        tool("openssl"),
        "s_client",
        "-connect",
        f"{address[0]}:{address[1]}",
        "-brief",
        "-crlf",
        "-ign_eof",
        *args,
    ]


def old_tls_client_flags(version_flag: str) -> list[str]:
    """Flags for an s_client that offers only ``version_flag``, with SECLEVEL=0 so that a
    refusal can only come from the server."""
    return [version_flag, "-cipher", "DEFAULT:@SECLEVEL=0"]


def run_quick(argv: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def extract(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"no {pattern!r} in:\n{text}"
    return found.group(1)
