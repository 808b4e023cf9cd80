"""Floods: thousands of pipelined commands, repeated errors, too many recipients, AUTH brute
force. Every command gets exactly one reply, in order; the limits end sessions with the
replies the options promise (``max_errors`` -> 421 4.7.0, ``max_recipients`` -> 452 4.5.3,
``max_auth_failures`` -> 421 4.7.0, each failure slowed by ``auth_failure_delay``).
"""

from __future__ import annotations

import threading
import time
from base64 import b64encode

from smtpcore import NEED_DATA, AuthMode, Event, SmtpConfig, SmtpConnection
from tests.helpers import feed

from . import figures
from ._support import EHLO, RCPT, Client, Recorder, Reply

AUTH_CONFIG = SmtpConfig(hostname="mx.test", auth_mode=AuthMode.OPTIONAL, allow_insecure_auth=True)


class Reader(threading.Thread):
    """Reads ``count`` replies while the main thread is still writing (no deadlock when both
    sides' socket buffers fill up)."""

    def __init__(self, client: Client, count: int) -> None:
        super().__init__(daemon=True)
        self.client, self.count = client, count
        self.replies: list[Reply] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self.replies.append(self.client.reply(timeout=20.0))
        except BaseException as exc:
            self.error = exc


def pipelined(client: Client, data: bytes, count: int) -> list[Reply]:
    reader = Reader(client, count)
    reader.start()
    client.send(data)
    reader.join(60.0)
    assert reader.error is None, f"after {len(reader.replies)} replies: {reader.error!r}"
    assert not reader.is_alive()
    return reader.replies


def test_thousands_of_pipelined_commands_answered_in_order(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler) as server, Client(server.address) as client:
        client.greet()
        cycle = [
            (b"NOOP\r\n", 250),
            (b"HELP\r\n", 214),
            (b"VRFY someone\r\n", 252),
            (b"MAIL FROM:<a@example.org>\r\n", 250),
            (RCPT, 250),
            (b"RSET\r\n", 250),
        ]
        message = b"MAIL FROM:<m@example.org>\r\n" + RCPT + b"DATA\r\nSubject: n\r\n\r\n.x\r\n.\r\n"
        data, expected = bytearray(), []
        for i in range(1000):
            for line, code in cycle:
                data += line
                expected.append(code)
            if i % 5 == 0:  # 200 whole messages, body included, in the same stream
                data += message
                expected += [250, 250, 354, 250]
        data += b"QUIT\r\n"
        expected.append(221)
        replies = pipelined(client, bytes(data), len(expected))
        assert [r.code for r in replies] == expected
        assert client.rest(timeout=2.0) == ([], "eof")
        figures.count("floods.pipelined_commands", len(expected))
        assert handler.wait_for(lambda: len(handler.messages) == 200)


def test_thousands_of_bdat_chunks(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler) as server, Client(server.address) as client:
        client.greet()
        n = 2000
        data = b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"BDAT 3\r\nS: " * 1
        data += b"".join(b"BDAT 2\r\n%02d" % (i % 100) for i in range(n)) + b"BDAT 0 LAST\r\n"
        replies = pipelined(client, data, n + 4)
        assert [r.code for r in replies] == [250] * (n + 4)
        figures.count("floods.pipelined_commands", n + 4)
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert handler.messages[0].data == b"S: " + b"".join(b"%02d" % (i % 100) for i in range(n))


def test_repeated_errors_end_the_session(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler) as server:
        for junk in (b"FOO\r\n", b"MAIL FROM:<bad\r\n", b"\x00\r\n", b"RCPT TO:<a@b.c>\r\n"):
            with Client(server.address) as client:
                client.greet()
                client.send(junk * 50)
                replies, end = client.rest()
                codes = [r.code for r in replies]
                assert len(codes) == 21 and codes[-1] == 421, codes
                assert replies[-1].enhanced == "4.7.0"
                assert all(400 <= c < 600 for c in codes[:-1]) and end in ("eof", "reset")
                figures.count("floods.errors", 50)
        with Client(server.address) as client:  # the server goes on
            client.greet()
            assert client.command("QUIT").code == 221


def test_recipients_beyond_the_limit(transport: str, serve) -> None:
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", max_recipients=100)
    with serve(handler, config=config) as server, Client(server.address) as client:
        client.greet()
        rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(150))
        replies = pipelined(client, b"MAIL FROM:<a@example.org>\r\n" + rcpts + b"DATA\r\n", 152)
        codes = [r.code for r in replies]
        assert codes == [250] + [250] * 100 + [452] * 50 + [354]
        assert {r.enhanced for r in replies[101:151]} == {"4.5.3"}
        client.send(b"Subject: many\r\n\r\nhi\r\n.\r\n")
        client.expect(250)
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert len(handler.messages[0].recipients) == 100
        assert len(handler.rcpts) == 100  # the handler was never asked about the extra 50
        figures.count("floods.recipients", 150)


def test_auth_brute_force(transport: str, serve) -> None:
    handler = Recorder()
    delay = 0.05
    with serve(handler, config=AUTH_CONFIG, auth_failure_delay=delay) as server:
        tries = 0
        for _connection in range(5):
            with Client(server.address) as client:
                client.greet()
                guesses = b"".join(
                    b"AUTH PLAIN " + b64encode(b"\0user\0guess%d" % i) + b"\r\n" for i in range(10)
                )
                start = time.monotonic()
                client.send(guesses)
                replies, end = client.rest()
                elapsed = time.monotonic() - start
                assert [r.code for r in replies] == [535, 535, 535, 421], replies
                assert replies[-1].enhanced == "4.7.0" and end in ("eof", "reset")
                # n-th failure waits n * delay: 1 + 2 before the third refusal
                assert elapsed >= 3 * delay * 0.9, elapsed
                tries += 10
        figures.count("floods.auth_guesses", tries)
        with handler.cond:
            assert len(handler.auths) == 15  # 3 per connection reached the handler
        with Client(server.address) as client:  # the right password still works afterwards
            client.greet()
            client.send(b"AUTH PLAIN " + b64encode(b"\0user\0secret") + b"\r\n")
            client.expect(235)


def test_rset_and_helo_floods_keep_state_bounded(transport: str, serve) -> None:
    """EHLO/RSET/NOOP loops never count as errors and never grow anything: 6,000 commands."""
    handler = Recorder()
    with serve(handler) as server, Client(server.address) as client:
        client.greet()
        data = (EHLO + b"RSET\r\nNOOP\r\n") * 2000
        replies = pipelined(client, data, 6000)
        assert [r.code for r in replies] == [250] * 6000
        figures.count("floods.pipelined_commands", 6000)


def test_pending_output_is_capped_per_read() -> None:
    """One 256 KiB read (asyncio's read size) of pipelined EHLO must not make the core hold
    megabytes of replies: it stops parsing once the replies pass OUTPUT_LIMIT, until they are
    taken (a client that never reads cannot pin ~25x its writes per session)."""
    conn = SmtpConnection(SmtpConfig(hostname="mx.test"))
    feed(conn, [])
    conn.data_to_send()
    conn.receive_data(EHLO * (256 * 1024 // len(EHLO)))
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, Event)
        if event.needs_reply:
            conn.accept(event)
    assert conn.output_full
    out = conn.data_to_send()
    figures.record(
        "floods.reply_amplification", "outbox_mb_per_256KiB_read", round(len(out) / 2**20, 1)
    )
    assert len(out) <= 1024 * 1024, len(out)
