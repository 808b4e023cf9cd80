"""Smoke tests of the trio and anyio transports (anyio on asyncio and on trio) over 127.0.0.1.

Each test runs a real server in a `ServerThread` and talks to it with `smtplib` or a raw
socket; every socket operation is bounded by TIMEOUT so a hang fails instead of blocking.
"""

from __future__ import annotations

# Real sockets are the point of these tests; the ban only protects the sans-IO core.
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from smtpcore import RcptTo, SmtpConfig, TlsMode
from tests.sockets import read_reply
from transports.controller import ServerThread
from transports.errors import Smtp550Error
from transports.handler import Handler, Session

pytestmark = pytest.mark.network

TIMEOUT = 5.0
TRANSPORTS = ["trio", "anyio", "anyio-trio"]
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


class Recorder(Handler):
    """Accepts everything except recipients at refused.example; records what it saw."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.tls: list[Any] = []
        self.disconnects = 0

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if address.endswith("@refused.example"):
            raise Smtp550Error()

    def on_message(self, ctx: Session) -> None:
        self.messages.append(ctx.message.as_bytes())
        self.tls.append(ctx.tls)

    def on_disconnect(self, ctx: Session) -> None:
        self.disconnects += 1


class AsyncRecorder(Recorder):
    """The same with ``async def`` hooks (anyio.sleep runs on both trio and asyncio)."""

    async def on_message(self, ctx: Session) -> None:  # type: ignore[override]
        await anyio.sleep(0.01)
        super().on_message(ctx)


@contextmanager
def serving(transport: str, handler: Handler, **options: Any) -> Iterator[ServerThread]:
    server = ServerThread(transport, handler, host="127.0.0.1", port=0, **options)
    with server:
        yield server


def connect(server: ServerThread) -> smtplib.SMTP:
    return smtplib.SMTP(*server.address, timeout=TIMEOUT)


def raw(server: ServerThread) -> socket.socket:
    return socket.create_connection(server.address, timeout=TIMEOUT)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("handler_class", [Recorder, AsyncRecorder])
def test_message_delivered(transport: str, handler_class: type[Recorder]) -> None:
    handler = handler_class()
    with serving(transport, handler) as server, connect(server) as client:
        refused = client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        assert refused == {}
    assert len(handler.messages) == 1
    assert handler.messages[0].endswith(MESSAGE)
    assert handler.tls == [None]


def test_rcpt_rejected(transport: str) -> None:
    with serving(transport, Recorder()) as server, connect(server) as client:
        client.ehlo()
        assert client.mail("a@example.com")[0] == 250
        code, text = client.rcpt("b@refused.example")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("b@example.com")[0] == 250
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@example.com", ["c@refused.example"], MESSAGE)


def test_starttls(transport: str) -> None:
    handler = Recorder()
    config = SmtpConfig(tls_mode=TlsMode.OPTIONAL)
    with serving(transport, handler, config=config) as server, connect(server) as client:
        client.starttls(context=ssl._create_unverified_context())
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert len(handler.messages) == 1
    facts = handler.tls[0]
    assert facts is not None and facts.version and facts.version.startswith("TLS")
    assert facts.server_name is None  # smtplib sends SNI only for names, not 127.0.0.1


def test_starttls_injection_is_ignored(transport: str) -> None:
    config = SmtpConfig(tls_mode=TlsMode.OPTIONAL)
    with serving(transport, Recorder(), config=config) as server, raw(server) as sock:
        assert read_reply(sock).startswith(b"220")
        sock.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" in read_reply(sock)
        sock.sendall(b"STARTTLS\r\nRSET\r\n")
        assert read_reply(sock).startswith(b"220 ")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # nothing else in clear text: RSET was dropped
            sock.recv(4096)
        sock.settimeout(TIMEOUT)
        context = ssl._create_unverified_context()
        with context.wrap_socket(sock, server_hostname="mx.example") as tls:
            tls.sendall(b"NOOP\r\n")
            reply = read_reply(tls)  # exactly the NOOP's reply, none for the injected RSET
            assert reply.startswith(b"250 ") and reply.count(b"\r\n") == 1
            tls.sendall(b"QUIT\r\n")
            assert read_reply(tls).startswith(b"221")


def test_idle_timeout(transport: str) -> None:
    with serving(transport, Recorder(), idle_timeout=0.5) as server, raw(server) as sock:
        assert read_reply(sock).startswith(b"220")
        started = time.monotonic()
        reply = read_reply(sock)
        assert reply.startswith(b"421 4.4.2"), reply
        assert 0.4 < time.monotonic() - started < 3.0
        assert sock.recv(4096) == b""


def test_max_connections(transport: str) -> None:
    with serving(transport, Recorder(), max_connections=1) as server, raw(server) as first:
        assert read_reply(first).startswith(b"220")
        with raw(server) as second:
            assert read_reply(second).startswith(b"421 4.7.0")
            assert second.recv(4096) == b""
        first.sendall(b"NOOP\r\n")
        assert read_reply(first).startswith(b"250")


def test_graceful_stop_lets_transaction_finish(transport: str) -> None:
    handler = Recorder()
    server = ServerThread(transport, handler, host="127.0.0.1", port=0).start()
    stopper: threading.Thread | None = None
    try:
        with connect(server) as client, raw(server) as idle:
            assert read_reply(idle).startswith(b"220")
            client.ehlo()
            assert client.mail("a@example.com")[0] == 250
            assert client.rcpt("b@example.com")[0] == 250
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 10.0})
            started = time.monotonic()
            stopper.start()
            assert read_reply(idle).startswith(b"421 4.3.2")  # idle sessions go at once
            assert client.data(MESSAGE)[0] == 250
            assert client.getreply()[0] == 421  # then the session is closed
            stopper.join(TIMEOUT)
            assert not stopper.is_alive()
            assert time.monotonic() - started < 5.0
    finally:
        if stopper is None:
            server.stop(grace=0)
    assert len(handler.messages) == 1
    assert handler.disconnects == 2
