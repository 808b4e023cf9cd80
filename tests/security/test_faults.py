"""Fault injection: resets mid-DATA and mid-handshake, half-closed sockets, hooks that raise or
hang, and a graceful stop while a hook hangs.

The server must survive every fault and keep serving; it must never answer 250 for a message
its handler did not take (a raising ``on_message`` gives 451 and nothing is recorded).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import anyio
import pytest

from smtpcore import SmtpConfig, TlsMode
from transports.handler import Session

from . import figures
from ._support import EHLO, RCPT, Client, Recorder, client_hello, wait_until

BODY = b"From: a@example.org\r\nSubject: %s\r\n\r\nbody line\r\n"


def transaction(subject: bytes = b"ok") -> bytes:
    return b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n" + BODY % subject + b".\r\n"


def serve_ok(address: tuple[str, int], handler: Recorder, subject: bytes = b"ok") -> None:
    before = len(handler.messages)
    with Client(address) as client:
        client.greet()
        client.send(transaction(subject) + b"QUIT\r\n")
        assert client.codes(5) == [250, 250, 354, 250, 221]
    assert handler.wait_for(lambda: len(handler.messages) == before + 1)


# ---------------------------------------------------------------- resets and half-closes


def test_reset_mid_data(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler) as server:
        for cut in (0, 10, 40):
            with Client(server.address) as client:
                client.greet()
                client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
                assert client.codes(3) == [250, 250, 354]
                client.send((BODY % b"cut")[:cut] or b"S")
                time.sleep(0.05)
                client.abort()
            figures.count("faults.reset_mid_data")
        assert handler.wait_for(lambda: handler.disconnects == 3)
        assert handler.messages == []
        serve_ok(server.address, handler)


def test_reset_mid_command_and_mid_reply(transport: str, serve) -> None:
    """A reset after half a command, and one while the server still writes 6,000 replies."""
    handler = Recorder()
    with serve(handler) as server:
        with Client(server.address) as client:
            client.greet()
            client.send(b"MAIL FROM:<a@exa")
            time.sleep(0.05)
            client.abort()
        with Client(server.address) as client:
            client.greet()
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.try_send(b"HELP\r\n" * 6000)
            time.sleep(0.1)
            client.abort()
        figures.count("faults.reset_mid_command", 2)
        assert handler.wait_for(lambda: handler.disconnects == 2)
        serve_ok(server.address, handler)


def test_reset_mid_tls_handshake(transport: str, serve) -> None:
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    hello = client_hello()
    with serve(handler, config=config) as server:
        for cut in (0, 5, len(hello) // 2, len(hello)):
            with Client(server.address) as client:
                client.greet()
                client.send(b"STARTTLS\r\n")
                client.expect(220)
                if cut:
                    client.send(hello[:cut])
                time.sleep(0.05)
                client.abort()
            figures.count("faults.reset_mid_handshake")
        # and garbage instead of a ClientHello
        with Client(server.address) as client:
            client.greet()
            client.send(b"STARTTLS\r\n")
            client.expect(220)
            client.send(b"\x16\x03\x01\xff\xff" + b"\x00" * 64)
            assert client.closed_by_server()
            figures.count("faults.garbage_handshake")
        serve_ok(server.address, handler)


@pytest.mark.parametrize("how", ["reset", "timeout", "garbage", "close"])
def test_failed_handshakes_release_their_session(
    transport: str, serve, how: str, request: pytest.FixtureRequest
) -> None:
    """However a STARTTLS handshake fails, the session ends: it leaves the registry (so it no
    longer counts against ``max_connections``) and ``on_disconnect`` runs once."""
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with serve(handler, config=config, tls_handshake_timeout=0.3, max_connections=2) as server:
        for _ in range(2):
            client = Client(server.address)
            client.greet()
            client.send(b"STARTTLS\r\n")
            client.expect(220)
            if how == "reset":
                client.abort()
            elif how == "timeout":
                assert client.closed_by_server(timeout=3.0)
                client.close()
            elif how == "garbage":
                client.send(b"\x16\x03\x01\xff\xff" + b"\x00" * 64)
                assert client.closed_by_server(timeout=3.0)
                client.close()
            else:
                client.close()
            figures.count("faults.failed_handshakes")
        registry = server.server.registry
        assert wait_until(lambda: not registry.sessions, timeout=3.0), "session leaked"
        assert handler.wait_for(lambda: handler.disconnects == 2, timeout=1.0)
        serve_ok(server.address, handler)  # max_connections=2: only if both were released


def test_half_close_after_a_full_transaction(transport: str, serve) -> None:
    """shutdown(SHUT_WR) after the client wrote everything: every reply still comes."""
    handler = Recorder()
    with serve(handler) as server:
        with Client(server.address) as client:
            client.expect(220)
            client.send(EHLO + transaction(b"half 1") + b"QUIT\r\n")
            client.sock.shutdown(socket.SHUT_WR)
            replies, end = client.rest()
            assert [r.code for r in replies] == [250, 250, 250, 354, 250, 221] and end == "eof"
        with Client(server.address) as client:  # no QUIT: the EOF ends the session
            client.expect(220)
            client.send(EHLO + transaction(b"half 2") + transaction(b"half 3"))
            client.sock.shutdown(socket.SHUT_WR)
            replies, end = client.rest()
            assert [r.code for r in replies] == [250] + [250, 250, 354, 250] * 2, replies
            assert end == "eof"
        with Client(server.address) as client:  # EOF inside DATA: the message is dropped
            client.greet()
            client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n" + BODY % b"cut")
            client.sock.shutdown(socket.SHUT_WR)
            replies, end = client.rest()
            assert [r.code for r in replies] == [250, 250, 354] and end == "eof"
        figures.count("faults.half_close", 3)
        assert handler.wait_for(lambda: handler.disconnects == 3)
        subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in handler.messages]
        assert subjects == [b"half 1", b"half 2", b"half 3"]


def test_half_close_over_tls(transport: str, serve) -> None:
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with serve(handler, config=config) as server, Client(server.address) as client:
        client.greet()
        client.send(b"STARTTLS\r\n")
        client.expect(220)
        client.starttls()
        client.send(EHLO + transaction(b"tls half"))
        socket.socket.shutdown(client.sock, socket.SHUT_WR)  # a FIN without close_notify
        replies, end = client.rest()
        assert [r.code for r in replies] == [250, 250, 250, 354, 250], replies
        # threads: OpenSSL answers the ragged EOF with a decode_error alert after the replies
        assert end in ("eof", "alert")
        figures.count("faults.half_close")
        assert handler.wait_for(lambda: len(handler.messages) == 1)


# ---------------------------------------------------------------- hooks that raise


class Raising(Recorder):
    """Raises from the hook named in the subject / address of the client's choosing."""

    def on_rcpt_to(self, ctx: Session, address: str, event: Any) -> None:
        if address.startswith("boom"):
            raise RuntimeError("rcpt hook failed")
        super().on_rcpt_to(ctx, address, event)

    def on_message_data(self, ctx: Session, chunk: bytes) -> None:
        if b"data-boom" in chunk:
            raise RuntimeError("data hook failed")

    def on_message(self, ctx: Session) -> None:
        if b"message-boom" in ctx.message.as_bytes():
            raise RuntimeError("message hook failed")
        super().on_message(ctx)

    def on_disconnect(self, ctx: Session) -> None:
        super().on_disconnect(ctx)
        raise RuntimeError("disconnect hook failed")


def test_raising_hooks_give_451_and_the_session_goes_on(transport: str, serve) -> None:
    handler = Raising()
    with serve(handler) as server, Client(server.address) as client:
        client.greet()
        for subject in (b"message-boom", b"data-boom"):
            client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
            assert client.codes(3) == [250, 250, 354]
            client.send(BODY % subject + b".\r\n")
            reply = client.reply()
            assert (reply.code, reply.enhanced) == (451, "4.3.0"), reply
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<boom@example.net>\r\n" + RCPT)
        replies = [client.reply() for _ in range(3)]
        assert [(r.code, r.enhanced) for r in replies][1] == (451, "4.3.0")
        client.send(b"DATA\r\n" + BODY % b"fine" + b".\r\n")
        assert client.codes(2) == [354, 250]
        figures.count("faults.raising_hooks", 3)
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert b"Subject: fine" in handler.messages[0].data
        assert handler.messages[0].recipients == ("rcpt@example.net",)
    assert handler.wait_for(lambda: handler.disconnects == 1)


# ---------------------------------------------------------------- hooks that hang

HANG_SYNC = 10.0
"""Longest a blocking hook waits on the threads transport (the test releases it sooner)."""
HANG_ASYNC = 30.0
"""Seconds an ``async`` hook sleeps: far longer than any timeout here; a stop cancels it."""
GRACE = 0.5
MARGIN = 2.0


class SyncHang(Recorder):
    """Blocks in on_message until `release` is set (a thread cannot be interrupted)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def on_message(self, ctx: Session) -> None:
        if b"hang" in ctx.message.as_bytes():
            with self.cond:
                self.unknown.append("hanging")
                self.cond.notify_all()
            self.release.wait(HANG_SYNC)
        super().on_message(ctx)


class AsyncHang(Recorder):
    async def on_message(self, ctx: Session) -> None:  # type: ignore[override]
        if b"hang" in ctx.message.as_bytes():
            with self.cond:
                self.unknown.append("hanging")
                self.cond.notify_all()
            await anyio.sleep(HANG_ASYNC)
        super().on_message(ctx)


def start_hung_client(address: tuple[str, int], handler: Recorder) -> Client:
    hung = Client(address, timeout=HANG_ASYNC)
    hung.greet()
    hung.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
    assert hung.codes(3) == [250, 250, 354]
    hung.send(BODY % b"hang" + b".\r\n")
    assert handler.wait_for(lambda: "hanging" in handler.unknown)
    return hung


def stop_in_background(server: Any) -> threading.Thread:
    thread = threading.Thread(
        target=server.stop, kwargs={"grace": GRACE, "timeout": 20.0}, daemon=True
    )
    thread.start()
    return thread


def test_hanging_hook_server_stays_responsive_and_stops(transport: str, serve) -> None:
    handler = SyncHang() if transport == "threads" else AsyncHang()
    with serve(handler, idle_timeout=1.0, data_timeout=1.0) as server:
        hung = start_hung_client(server.address, handler)
        # other clients are served at once, several times over, past the idle timeout
        start = time.monotonic()
        for i in range(3):
            serve_ok(server.address, handler, b"other %d" % i)
        assert time.monotonic() - start < 2.0
        time.sleep(1.2)  # longer than idle_timeout: the hung session is not cut meanwhile
        serve_ok(server.address, handler, b"other late")
        figures.count("faults.hanging_hooks")
        # a graceful stop while the hook still runs
        start = time.monotonic()
        stopping = stop_in_background(server)
        if isinstance(handler, SyncHang):
            time.sleep(GRACE + 0.3)
            handler.release.set()  # the hook returns at last
        stopping.join(20.0)
        took = time.monotonic() - start
        assert not stopping.is_alive()
        figures.record("faults.stop_with_hung_hook_seconds", transport, round(took, 2))
        replies, _ = hung.rest(timeout=5.0)
        hung.close()
        codes = [r.code for r in replies]
        assert took < GRACE + MARGIN, took
        if transport == "threads":
            # stop waited for the hook; its 250 went out, then the 421 of the stop
            assert codes in ([250], [250, 421]), codes
        else:
            # never a 250 for a message whose hook did not return; 421 or a bare close
            assert codes in ([], [421]), codes


@pytest.mark.parametrize("transport", ["threads"])
def test_threads_stop_is_bounded_with_a_hung_hook(
    transport: str, serve, request: pytest.FixtureRequest
) -> None:
    """What a graceful stop should promise on every transport: done within grace + margin
    even when a hook does not return (the async transports pass this in the test above)."""
    handler = SyncHang()
    with serve(handler) as server:
        hung = start_hung_client(server.address, handler)
        stopping = stop_in_background(server)
        stopping.join(GRACE + MARGIN)
        stopped_in_time = not stopping.is_alive()
        handler.release.set()
        stopping.join(20.0)
        hung.close()
        assert stopped_in_time


def test_hook_exception_inside_data_never_acknowledges(transport: str, serve) -> None:
    """A handler that fails for every message: 500 messages, 500 refusals, nothing stored."""
    handler = Raising()
    with serve(handler) as server, Client(server.address) as client:
        client.greet()
        data = b"".join(transaction(b"message-boom %d" % i) for i in range(500))
        reader_codes: list[int] = []

        def read() -> None:
            for _ in range(2000):
                reader_codes.append(client.code(timeout=20.0))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        client.send(data)
        reader.join(60.0)
        assert reader_codes == [250, 250, 354, 451] * 500
        figures.count("faults.raising_hooks", 500)
    assert wait_until(lambda: handler.disconnects == 1)
    assert handler.messages == []
