"""Server-side limits and endings: max_connections, idle timeout, graceful stop, dropped
clients, and the threads transport refusing async hooks."""

from __future__ import annotations

import threading
import time

import pytest

from transports.controller import ServerThread
from transports.handler import Session

from ._support import (
    RawClient,
    Recorder,
    asyncify,
    make_message,
    refusing_new_clients,
    smtp_client,
)
from .conftest import Serve, Styled

pytestmark = pytest.mark.network


def test_connection_limit(serve: Serve) -> None:
    rec = Recorder()
    with serve(rec, max_connections=2) as server:
        with RawClient(server.address) as first, RawClient(server.address) as second:
            first.expect(220)
            second.expect(220)
            with RawClient(server.address) as third:
                code, lines = third.read_reply()
                assert code == 421 and lines[0].startswith("4.7.0"), (code, lines)
                assert third.wait_closed()
            first.command("QUIT", 221)
            second.command("NOOP", 250)  # the two admitted sessions are unharmed
        rec.wait_disconnects(2)  # the refused client never was a session
        with smtp_client(server.address) as client:  # room again
            client.sendmail("x@y.z", ["a@b.c"], make_message("after the crowd"))
        assert len(rec.wait_disconnects(3)) == 3
    assert rec.subjects() == ["after the crowd"]


def test_idle_timeout(serve: Serve) -> None:
    rec = Recorder()
    with serve(rec, idle_timeout=0.5) as server, RawClient(server.address) as client:
        client.expect(220)
        client.command("EHLO client.test", 250)
        started = time.monotonic()
        code, lines = client.read_reply()  # sent unasked, once we have been silent enough
        waited = time.monotonic() - started
        assert code == 421 and lines[0].startswith("4.4.2"), (code, lines)
        assert 0.4 <= waited < 4.0, waited
        assert client.wait_closed()
        rec.wait_disconnects(1)


def test_graceful_stop_finishes_in_flight_message(serve: Serve) -> None:
    rec = Recorder()
    with serve(rec) as server:
        address = server.address  # the listeners are gone once the stop has begun
        with RawClient(address) as client:
            client.start_transaction()
            client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 5.0}, daemon=True)
            stopper.start()
            assert refusing_new_clients(address), "still greeting clients while stopping"
            assert stopper.is_alive(), "stop() returned with a message in flight"
            client.send(b"second half\r\n.\r\n")
            code, lines = client.read_reply()
            assert code == 250, (code, lines)
            try:
                code, lines = client.read_reply(timeout=2.0)
                assert code == 421, (code, lines)
            except TimeoutError:  # not closed for us: our QUIT must still be answered
                client.command("QUIT", 221)
            assert client.wait_closed()
        stopper.join(15.0)
        assert not stopper.is_alive(), "the server did not stop after its last session ended"
    assert rec.subjects() == ["in flight"]
    assert rec.deliveries[0].data == b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"


class Watcher(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def on_message_data(self, ctx: Session, chunk: bytes) -> None:
        with self.cond:
            self.chunks.append(chunk)
            self.cond.notify_all()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_dropping_mid_data(serve: Serve, styled: Styled[Watcher], how: str) -> None:
    rec = styled(Watcher)()
    with serve(rec) as server:
        with RawClient(server.address) as client:
            client.start_transaction()
            client.send(b"Subject: cut short\r\n\r\nthe first part of the body\r\n")
            assert rec.wait_for(lambda: b"first part" in b"".join(rec.chunks))
            if how == "reset":
                client.abort()
        assert len(rec.wait_disconnects(1)) == 1
        assert rec.deliveries == []
        with smtp_client(server.address) as next_client:
            next_client.sendmail("x@y.z", ["a@b.c"], make_message("next one"))
    assert rec.subjects() == ["next one"]


class AsyncHooks(Recorder):
    async def on_helo(self, ctx: Session, domain: str) -> None:
        return None


def test_threads_transport_refuses_async_hooks() -> None:
    """Only transport not parametrised: async hooks are refused at start-up, by design."""
    for handler in (AsyncHooks(), asyncify(Recorder)()):
        with (
            pytest.raises((TypeError, RuntimeError)) as info,
            ServerThread("threads", handler, host="127.0.0.1", port=0, ready_timeout=10),
        ):
            pass
        error = info.value
        assert isinstance(error, TypeError) or isinstance(error.__cause__, TypeError), error
