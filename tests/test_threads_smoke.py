"""Smoke tests for transports.threads over 127.0.0.1, with smtplib and raw sockets.

Every socket operation is bounded by TIMEOUT and every server stop by STOP_TIMEOUT, so a hang
fails the test instead of blocking the run.
"""

from __future__ import annotations

import smtplib

# Real sockets are the point of these tests; the ban only protects the sans-IO core.
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import pytest

from smtpcore import RcptTo, SmtpConfig, TlsMode
from tests.sockets import read_reply
from transports import threads
from transports.controller import ServerThread
from transports.errors import Smtp550Error
from transports.handler import Handler, Session

pytestmark = pytest.mark.network

TIMEOUT = 5.0
STOP_TIMEOUT = 15.0
MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello there.\r\n"


class Recorder(Handler):
    """Refuses nobody@ recipients; keeps every delivered message and its TLS state."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str | None, tuple[str, ...], bytes, bool]] = []

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if address.startswith("nobody@"):
            raise Smtp550Error()

    def on_message(self, ctx: Session) -> None:
        message = ctx.message.as_bytes()
        self.delivered.append((ctx.sender, ctx.recipients, message, ctx.tls_active))


@contextmanager
def serving(handler: Handler | None = None, **kwargs: Any) -> Iterator[ServerThread]:
    kwargs.setdefault("config", SmtpConfig(hostname="mx.test"))
    server = ServerThread("threads", handler or Recorder(), host="127.0.0.1", port=0, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0, timeout=STOP_TIMEOUT)


def client(server: ServerThread) -> smtplib.SMTP:
    return smtplib.SMTP(*server.address, local_hostname="client.test", timeout=TIMEOUT)


def test_delivers_message_with_envelope_and_content() -> None:
    handler = Recorder()
    with serving(handler) as server:
        with client(server) as smtp:
            refused = smtp.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE)
        assert refused == {}
    [(sender, recipients, content, tls)] = handler.delivered
    assert sender == "a@example.com"
    assert recipients == ("b@example.com", "c@example.com")
    assert content == MESSAGE
    assert tls is False


def test_rejected_recipient_gets_550() -> None:
    handler = Recorder()
    with serving(handler) as server, client(server) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@example.com")[0] == 250
        code, text = smtp.rcpt("nobody@example.com")
        assert code == 550
        assert text.startswith(b"5.1.1")
        assert smtp.rcpt("b@example.com")[0] == 250
        assert smtp.data(MESSAGE)[0] == 250
    assert handler.delivered[0][1] == ("b@example.com",)


def test_starttls_then_delivery() -> None:
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with serving(handler, config=config) as server, client(server) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert smtp.starttls(context=ssl._create_unverified_context())[0] == 220
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert handler.delivered[0][3] is True


def test_starttls_injection_is_discarded() -> None:
    """Commands pipelined after STARTTLS in plaintext must not be answered (RFC 3207 §5)."""
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with serving(config=config) as server:
        raw = socket.create_connection(server.address, timeout=TIMEOUT)
        try:
            assert read_reply(raw).startswith(b"220 ")
            raw.sendall(b"EHLO client.test\r\n")
            assert b"STARTTLS" in read_reply(raw)
            raw.sendall(b"STARTTLS\r\nRSET\r\n")
            assert read_reply(raw).startswith(b"220 ")
            raw.settimeout(0.5)  # nothing more may come before the handshake
            with pytest.raises(TimeoutError):
                raw.recv(4096)
            raw.settimeout(TIMEOUT)
            context = ssl._create_unverified_context()
            with context.wrap_socket(raw, server_hostname="mx.test") as tls:
                tls.sendall(b"EHLO client.test\r\n")
                assert read_reply(tls).startswith(b"250-mx.test")
                tls.sendall(b"QUIT\r\n")
                assert read_reply(tls).startswith(b"221 ")
        finally:
            raw.close()


def test_implicit_tls_listener() -> None:
    handler = Recorder()
    with serving(handler, smtps_port=0) as server:
        smtps = server.addresses[1]
        context = ssl._create_unverified_context()
        with smtplib.SMTP_SSL(*smtps, context=context, timeout=TIMEOUT) as smtp:
            smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        # A client that does not speak TLS there is just disconnected.
        with socket.create_connection(smtps, timeout=TIMEOUT) as raw:
            raw.sendall(b"EHLO client.test\r\n")
            with suppress(ConnectionResetError):
                assert raw.recv(4096) == b""
    assert handler.delivered[0][3] is True


def test_idle_timeout_sends_421() -> None:
    with (
        serving(idle_timeout=0.5) as server,
        socket.create_connection(server.address, timeout=TIMEOUT) as raw,
    ):
        assert read_reply(raw).startswith(b"220 ")
        started = time.monotonic()
        reply = read_reply(raw)
        elapsed = time.monotonic() - started
        assert reply.startswith(b"421 4.4.2 ")
        assert raw.recv(4096) == b""
    assert 0.4 < elapsed < 2.0


def test_data_timeout_bounds_the_whole_message() -> None:
    """A client trickling content still gets 421 4.4.2 once data_timeout has passed."""
    with (
        serving(idle_timeout=5.0, data_timeout=0.6) as server,
        socket.create_connection(server.address, timeout=TIMEOUT) as raw,
    ):
        read_reply(raw)
        for command in (b"HELO c.test", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>"):
            raw.sendall(command + b"\r\n")
            assert read_reply(raw).startswith(b"250")
        raw.sendall(b"DATA\r\n")
        assert read_reply(raw).startswith(b"354")
        started = time.monotonic()
        raw.settimeout(0.1)
        reply = b""
        while not reply and time.monotonic() - started < TIMEOUT:
            raw.sendall(b"x")
            with suppress(TimeoutError):
                reply = raw.recv(4096)
        assert reply.startswith(b"421 4.4.2 ")
        assert 0.5 < time.monotonic() - started < 2.0


def test_connection_limit_refuses_with_421() -> None:
    with serving(max_connections=1) as server, client(server) as first:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client(server)
        assert refused.value.smtp_code == 421
        assert "4.7.0" in str(refused.value.smtp_error)
        assert first.noop()[0] == 250


def listener_closed(address: tuple[str, int]) -> bool:
    """True once connecting is refused (the acceptor notices a stop within its slice)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=TIMEOUT).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_graceful_stop_lets_a_transaction_finish() -> None:
    handler = Recorder()
    server = ServerThread("threads", handler, host="127.0.0.1", port=0).start()
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 5.0, "timeout": STOP_TIMEOUT})
    with ExitStack() as cleanup:

        @cleanup.callback
        def stop_if_not_stopping() -> None:
            if stopper.ident is None:  # the test failed before the stop began
                server.stop(grace=0, timeout=STOP_TIMEOUT)

        address = server.address
        busy = cleanup.enter_context(client(server))
        idle = cleanup.enter_context(socket.create_connection(address, timeout=TIMEOUT))
        assert read_reply(idle).startswith(b"220 ")
        busy.ehlo()
        busy.mail("a@example.com")
        busy.rcpt("b@example.com")
        started = time.monotonic()
        stopper.start()
        # The idle session is closed at once with 421, no new client gets in...
        assert read_reply(idle).startswith(b"421 4.3.2 ")
        assert listener_closed(address)
        # ...and the one in a transaction finishes it, then gets its 421.
        assert busy.data(MESSAGE)[0] == 250
        try:
            code = busy.noop()[0]
        except smtplib.SMTPServerDisconnected:
            code = 421
        assert code == 421
        stopper.join(STOP_TIMEOUT)
        assert not stopper.is_alive()
        assert time.monotonic() - started < 4.0  # ended with the transaction, not the grace
    assert len(handler.delivered) == 1


def test_async_hook_is_refused() -> None:
    class AsyncHandler(Handler):
        async def on_helo(self, ctx: Session, domain: str) -> None:
            pass

    with pytest.raises(TypeError, match="on_helo is async"):
        threads.Server(AsyncHandler(), port=0)
