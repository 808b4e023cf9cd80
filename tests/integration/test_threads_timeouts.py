"""transports.threads ends stalled sessions by itself: timeouts and stops over TLS, and peers
that never read our replies, with both ways a session thread waits in slices (kernel socket
timeouts on plain Linux sockets, Python socket timeouts otherwise).

Every socket operation is bounded by TIMEOUT and every stop by STOP_TIMEOUT; the only timing
asserted is "ended within a generous bound".
"""

from __future__ import annotations

# Real sockets on 127.0.0.1 are the point of these tests.
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import SimpleNamespace
from typing import Any

import pytest

from smtpcore import SmtpConfig, TlsMode
from tests.sockets import read_reply
from transports import threads
from transports.controller import ServerThread
from transports.handler import Handler, Session

pytestmark = pytest.mark.network

TIMEOUT = 5.0
STOP_TIMEOUT = 15.0
BOUND = 8.0
"""Seconds within which a stalled session must be gone (its timeouts are 0.5 s)."""


class Disconnects(Handler):
    def __init__(self) -> None:
        self.ended = threading.Event()

    def on_disconnect(self, ctx: Session) -> None:
        self.ended.set()


@pytest.fixture(params=["kernel", "python"])
def slices(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How session threads wait in slices: "kernel" as on Linux, "python" as elsewhere."""
    if request.param == "python":
        monkeypatch.setattr(threads, "sys", SimpleNamespace(platform="elsewhere"))
    return str(request.param)


@contextmanager
def serving(handler: Handler, **kwargs: Any) -> Iterator[ServerThread]:
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    server = ServerThread("threads", handler, host="127.0.0.1", port=0, config=config, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0, timeout=STOP_TIMEOUT)


def connect(server: ServerThread, tls: bool) -> socket.socket:
    """A client past EHLO, and past STARTTLS and a second EHLO when ``tls``."""
    sock = socket.create_connection(server.address, timeout=TIMEOUT)
    assert read_reply(sock).startswith(b"220 ")
    sock.sendall(b"EHLO client.test\r\n")
    assert read_reply(sock).startswith(b"250")
    if not tls:
        return sock
    sock.sendall(b"STARTTLS\r\n")
    assert read_reply(sock).startswith(b"220 ")
    context = ssl._create_unverified_context()
    sock = context.wrap_socket(sock, server_hostname="mx.test")
    sock.sendall(b"EHLO client.test\r\n")
    assert read_reply(sock).startswith(b"250")
    return sock


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_idle_session_gets_421_4_4_2(slices: str, tls: bool) -> None:
    handler = Disconnects()
    with serving(handler, idle_timeout=0.5) as server, connect(server, tls) as sock:
        assert read_reply(sock).startswith(b"421 4.4.2 ")
        with suppress(ConnectionResetError):
            assert sock.recv(4096) == b""
        assert handler.ended.wait(BOUND)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_stop_closes_idle_session_with_421_4_3_2(slices: str, tls: bool) -> None:
    handler = Disconnects()
    with serving(handler) as server, connect(server, tls) as sock:
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 5.0})
        started = time.monotonic()
        stopper.start()
        assert read_reply(sock).startswith(b"421 4.3.2 ")
        stopper.join(STOP_TIMEOUT)
        assert not stopper.is_alive()
        assert time.monotonic() - started < BOUND


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_peer_that_never_reads_is_cut_after_idle_timeout(slices: str, tls: bool) -> None:
    """HELP draws more reply than it takes to send: a client that writes thousands and reads
    nothing leaves the server blocked in a write, until ``idle_timeout`` has passed."""
    handler = Disconnects()
    with serving(handler, idle_timeout=0.5) as server:
        sock = connect(server, tls)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(0.5)
            started = time.monotonic()
            with suppress(OSError):  # the server stops reading, then resets or closes
                while not handler.ended.is_set() and time.monotonic() - started < BOUND:
                    sock.sendall(b"HELP\r\n" * 1000)
            assert handler.ended.wait(BOUND)
            assert time.monotonic() - started < BOUND
            assert not server.server.registry.sessions
        finally:
            sock.close()
