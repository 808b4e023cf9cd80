"""Timeouts of the trio transport (`transports._tasks`), run directly and as the server that
`transports.anyio` runs on anyio's trio backend, that the per-transport suites leave out: a
peer that never reads our replies (dropped after the idle timeout, during a graceful stop
too), and an interruption that lands as a read has already taken its bytes (the bytes are
served, and the session goes on under a new cancel scope).

Real sockets on 127.0.0.1; every wait is bounded, with no timing assertion but an upper bound.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest

from smtpcore import SmtpConfig
from transports.controller import ServerThread

from ._support import TIMEOUT, RawClient, Recorder, make_message, smtp_client

pytestmark = pytest.mark.network

KINDS = ["trio", "anyio-trio"]
IDLE = 1.0


@contextmanager
def serving(kind: str, handler: Recorder, **options: Any) -> Iterator[ServerThread]:
    server = ServerThread(
        kind, handler, host="127.0.0.1", port=0, config=SmtpConfig(hostname="mx.test"), **options
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=2.0, timeout=15.0)


def stalled_client(address: tuple[str, int]) -> socket.socket:
    """A client that writes HELP commands and never reads their (longer) replies, until the
    server stops reading because it cannot write: it then waits in a send."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    assert sock.recv(4096).startswith(b"220")
    sock.settimeout(0.5)
    block = b"HELP\r\n" * 10_000
    for _ in range(300):
        try:
            sock.sendall(block)
        except OSError:  # TimeoutError included: the server stopped reading
            return sock
    sock.close()
    raise AssertionError("the server read 18 MB of commands without writing a reply")


@pytest.mark.parametrize("kind", KINDS)
def test_peer_that_never_reads_is_dropped_after_the_idle_timeout(kind: str) -> None:
    rec = Recorder()
    with serving(kind, rec, idle_timeout=IDLE) as server:
        with closing(stalled_client(server.address)):
            rec.wait_disconnects(1, timeout=15.0)
        with smtp_client(server.address) as client:  # the others are served meanwhile
            client.sendmail("x@y.z", ["a@b.c"], make_message("after the stall"))
    assert rec.subjects() == ["after the stall"]


@pytest.mark.parametrize("kind", KINDS)
def test_graceful_stop_drops_a_peer_that_never_reads(kind: str) -> None:
    """The stop waits for the session, which cannot take its 421; the idle timeout ends it
    long before the grace period would."""
    rec = Recorder()
    server = ServerThread(kind, rec, host="127.0.0.1", port=0, idle_timeout=IDLE).start()
    with closing(stalled_client(server.address)):
        started = time.monotonic()
        server.stop(grace=60.0, timeout=20.0)  # TimeoutError if still running then
        assert time.monotonic() - started < 15.0
    assert len(rec.disconnects) == 1


def interrupt_on_noop(server: ServerThread) -> list[bytes]:
    """Make each read that brings a NOOP interrupt its session as it returns, as the sweep or
    a stop may when trio reschedules a task whose recv succeeded. On the running server: an
    anyio one makes its trio server (`inner`) in ``serve``; a session takes the backend as it
    starts. Returns the reads that interrupted."""
    tasks = getattr(server.server, "inner", None) or server.server
    base = type(tasks.backend)
    interrupting: list[bytes] = []

    class Interrupting(base):  # type: ignore[valid-type,misc]
        def receiver(self, stream: Any) -> Callable[[int], Awaitable[bytes]]:
            receive = super().receiver(stream)

            async def read(max_bytes: int) -> bytes:
                data: bytes = await receive(max_bytes)
                if data.startswith(b"NOOP"):
                    interrupting.append(data)
                    for session in list(tasks.registry.sessions):
                        session.interrupt()
                return data

            return read

    tasks.backend = Interrupting()  # this server's only: the class keeps its own
    return interrupting


@pytest.mark.parametrize("kind", KINDS)
def test_interruption_as_the_bytes_come_loses_nothing(kind: str) -> None:
    rec = Recorder()
    server = ServerThread(kind, rec, host="127.0.0.1", port=0, idle_timeout=IDLE).start()
    try:
        interrupting = interrupt_on_noop(server)
        with RawClient(server.address) as client:
            client.expect(220)
            client.command("NOOP", 250)  # answered, though its read was interrupted
            assert interrupting == [b"NOOP\r\n"]
            client.command("EHLO client.test", 250)
            code, lines = client.read_reply()  # the next interruption: an idle timeout
            assert code == 421 and lines[0].startswith("4.4.2"), (code, lines)
            assert client.wait_closed()
        rec.wait_disconnects(1)
    finally:
        server.stop(grace=2.0, timeout=15.0)
