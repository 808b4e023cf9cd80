"""Oversized and malformed input: 10 MB lines (command state, DATA, AUTH), 10,000 MAIL
parameters, huge addresses, NUL and invalid UTF-8.

Each gets its proper reply or a prompt ``421 4.7.0`` close; the server's memory stays bounded
(it runs in a child process, whose VmRSS/VmHWM are read from /proc); and the next client is
served normally. The core drops a line past ``max_line_length`` (``max_auth_line_length`` in
an AUTH exchange) as it arrives and ends the session once ``max_buffer_size`` octets (1 MiB)
came without a line end.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from smtpcore import AuthMode, SmtpConfig, SmtpConnection
from tests.helpers import feed

from . import figures
from ._support import EHLO, RCPT, Client, Reply, ServerProcess

MB = 1024 * 1024
HUGE = 10 * MB
GROWTH_LIMIT = 50 * MB
"""Largest RSS growth tolerated over the whole attack sequence."""

SUBPROCESS_SPEC = {
    "config": {"auth_mode": "optional", "allow_insecure_auth": True},
    "auth_failure_delay": 0.01,
    "idle_timeout": 10.0,
}


def send_huge(client: Client, prefix: bytes, size: int, suffix: bytes = b"") -> bool:
    """Write ``prefix``, ``size`` octets of "A" in 256 KiB writes, and ``suffix``, stopping
    quietly if the server closes. True if everything was written."""
    client.sock.settimeout(10.0)
    if not client.try_send(prefix):
        return False
    block = b"A" * (256 * 1024)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        if not client.try_send(piece):
            return False
        sent += len(piece)
    return client.try_send(suffix) if suffix else True


def replies_or_close(client: Client, timeout: float = 10.0) -> tuple[list[Reply], str]:
    return client.rest(timeout=timeout)


def assert_421_close(client: Client) -> None:
    """The session ended with 421 4.7.0, or with a reset that swallowed it (the server closed
    a socket whose unread input was still queued, so the kernel sent RST)."""
    replies, end = replies_or_close(client)
    assert end in ("eof", "reset"), end
    if replies:
        assert (replies[-1].code, replies[-1].enhanced) == (421, "4.7.0"), replies
    figures.count("attacks.oversized.closed_421" if replies else "attacks.oversized.reset")


def serve_one(address: tuple[str, int]) -> None:
    """A normal client gets a whole transaction through."""
    with Client(address) as client:
        client.greet()
        client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        client.send(b"Subject: fine\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        assert client.codes(2) == [250, 221]


def attack_command_line(address: tuple[str, int]) -> None:
    with Client(address) as client:
        client.greet()
        send_huge(client, b"NOOP ", HUGE)
        assert_421_close(client)


def attack_data_line(address: tuple[str, int]) -> None:
    """10 MB without a line end inside DATA is content: within the 32 MiB default it is
    accepted whole (and counted, and streamed; the core never holds it)."""
    with Client(address) as client:
        client.greet()
        client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        assert send_huge(client, b"Subject: big\r\n\r\n", HUGE, b"\r\n.\r\n")
        client.expect(250, timeout=20.0)


def attack_data_too_big(address: tuple[str, int]) -> None:
    """Past ``max_message_size`` (the child runs with 4 MiB here): 552, content dropped."""
    with Client(address) as client:
        client.greet()
        client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        assert send_huge(client, b"Subject: big\r\n\r\n", HUGE, b"\r\n.\r\n")
        reply = client.reply(timeout=20.0)
        assert (reply.code, reply.enhanced) == (552, "5.3.4")
        client.send(b"NOOP\r\n")
        client.expect(250)


def attack_auth_line(address: tuple[str, int]) -> None:
    with Client(address) as client:
        client.greet()
        client.send(b"AUTH LOGIN\r\n")
        client.expect(334)
        send_huge(client, b"", HUGE)
        assert_421_close(client)


def attack_many_params(address: tuple[str, int]) -> None:
    params = b"".join(b" X-P%d=v" % i for i in range(10_000))
    with Client(address) as client:
        client.greet()
        client.send(b"MAIL FROM:<a@example.org>" + params + b"\r\nNOOP\r\n")
        reply = client.reply()
        assert (reply.code, reply.enhanced) == (500, "5.5.6"), reply  # line too long
        client.expect(250)


def attack_huge_addresses(address: tuple[str, int]) -> None:
    with Client(address) as client:
        client.greet()
        local = b"a" * 100_000
        client.send(b"MAIL FROM:<" + local + b"@example.org>\r\nNOOP\r\n")
        assert client.reply().code == 500 and client.code() == 250
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<a@" + b"b." * 50_000 + b"org>\r\n")
        assert client.code() == 250 and client.reply().enhanced == "5.5.6"
    with Client(address) as client:
        client.greet()
        send_huge(client, b"MAIL FROM:<", 2 * MB, b"@example.org>\r\n")
        assert_421_close(client)


def attack_nul_and_utf8(address: tuple[str, int]) -> None:
    with Client(address) as client:
        client.greet()
        cases = [
            b"MAIL FROM:<a\x00b@example.org>\r\n",
            b"\x00\x00\x00\r\n",
            b"NOOP\x00\r\n",
            b"MAIL FROM:<\xff\xfe@example.org>\r\n",
            b"\xc0\xaf\xed\xa0\x80\r\n",
            b"EHLO \xff\r\n",
        ]
        for line in cases:
            client.send(line)
            reply = client.reply()
            assert (reply.code, reply.enhanced) == (500, "5.5.2"), (line, reply)
        # NUL and 8-bit octets are content in DATA, delivered as sent
        client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        client.send(b"Subject: \xff\xfe\r\n\r\n\x00\x01\xff\r\n.\r\n")
        client.expect(250)


def attack_unread_replies(address: tuple[str, int]) -> float:
    """Reply amplification: 6-octet HELP commands draw 70-octet replies; the client writes
    8 MB of them and never reads. The server must stop reading when it cannot write (its
    memory then stays bounded) rather than buffer replies without end."""
    with Client(address) as client:
        client.greet()
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sock.settimeout(0.5)
        block = b"HELP\r\n" * 10_000
        sent = 0
        try:
            while sent < 8 * MB:
                client.sock.sendall(block)
                sent += len(block)
        except (TimeoutError, OSError):
            pass  # the server stopped reading: what we want
        return round(sent / MB, 1)


ATTACKS = [
    attack_command_line,
    attack_data_line,
    attack_auth_line,
    attack_many_params,
    attack_huge_addresses,
    attack_nul_and_utf8,
    attack_unread_replies,
]


def test_oversized_inputs_memory_bounded(transport: str) -> None:
    with ServerProcess(transport, SUBPROCESS_SPEC) as server:
        serve_one(server.address)  # warm up: imports, first session, TLS-free paths
        before = server.rss
        for attack in ATTACKS:
            result = attack(server.address)
            if result is not None:
                figures.record(f"memory.{attack.__name__}.client_wrote_mb", transport, result)
            serve_one(server.address)
            figures.count("attacks.oversized")
        # the same again, four clients at a time: memory must not scale with the attackers
        threads = [
            threading.Thread(target=attack, args=(server.address,))
            for attack in (attack_command_line, attack_auth_line) * 2
        ]
        errors: list[BaseException] = []
        for thread in threads:
            thread.run = _catching(thread.run, errors)  # type: ignore[method-assign]
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        figures.count("attacks.oversized", len(threads))
        serve_one(server.address)
        after, peak = server.rss, server.peak
        figures.record("memory.oversized.rss_growth_mb", transport, round((after - before) / MB, 1))
        figures.record("memory.oversized.peak_rss_mb", transport, round(peak / MB, 1))
        figures.record("memory.oversized.peak_growth_mb", transport, round((peak - before) / MB, 1))
        assert after - before < GROWTH_LIMIT, (before, after)
        assert peak - before < GROWTH_LIMIT, (before, peak)
        assert server.stop()


def test_message_size_limit_drops_content(transport: str) -> None:
    spec = {"config": {"max_message_size": 4 * MB}}
    with ServerProcess(transport, spec) as server:
        serve_one(server.address)
        before = server.rss
        attack_data_too_big(server.address)
        serve_one(server.address)
        peak = server.peak
        figures.count("attacks.oversized")
        figures.record("memory.too_big.peak_growth_mb", transport, round((peak - before) / MB, 1))
        assert peak - before < 20 * MB, (before, peak)
        assert server.stop()


def _catching(run, errors):  # type: ignore[no-untyped-def]
    def wrapped() -> None:
        try:
            run()
        except BaseException as exc:
            errors.append(exc)

    return wrapped


# ---------------------------------------------------------------- the core alone


@pytest.mark.parametrize("state", ["command", "auth", "data"])
def test_core_buffer_stays_bounded(state: str) -> None:
    """Fed 10 MB in 64 KiB reads, the core never holds more than a line limit plus one read
    in command/AUTH state (and at most 4 octets between DATA reads)."""
    config = SmtpConfig(hostname="mx.test", auth_mode=AuthMode.OPTIONAL, allow_insecure_auth=True)
    conn = SmtpConnection(config)
    prefix = {
        "command": EHLO,
        "auth": EHLO + b"AUTH LOGIN\r\n",
        "data": EHLO + b"MAIL FROM:<a@b.example>\r\n" + RCPT + b"DATA\r\n",
    }[state]
    feed(conn, [prefix])
    read = b"A" * 65536
    biggest = 0
    for _ in range(HUGE // len(read)):
        if conn.closed:
            break
        _, _ = feed(conn, [read])
        biggest = max(biggest, len(conn._buffer))
    if state == "data":
        assert not conn.closed and biggest <= 4
    else:
        assert conn.closed and biggest <= config.max_auth_line_length + len(read)


def test_ten_thousand_params_parse_fast_even_with_a_raised_line_limit() -> None:
    config = SmtpConfig(hostname="mx.test", max_line_length=2 * MB, max_buffer_size=4 * MB)
    for params, code in (
        (b"".join(b" X-P%d=v" % i for i in range(10_000)), b"555"),
        (b" SIZE=10" * 10_000, b"501"),  # duplicates
        (b" BODY=8BITMIME" + b" =" * 10_000, b"501"),
    ):
        conn = SmtpConnection(config)
        start = time.perf_counter()
        _, out = feed(conn, [EHLO, b"MAIL FROM:<a@b.example>" + params + b"\r\n"])
        assert time.perf_counter() - start < 1.0
        assert out.split(b"\r\n")[-2][:3] == code, out[-100:]
        figures.count("attacks.oversized.core_params")


@pytest.mark.parametrize(
    "address",
    [
        "a" * 500_000 + "@example.org",
        "a@" + "b." * 250_000 + "org",
        "a@" + "b-" * 250_000 + "!",
        '"' + "\\a" * 250_000 + '"@example.org',
        "@a," * 100_000 + "a@b",
        "a." * 250_000 + "@b",
        "a@[" + "1" * 500_000 + "]",
        "a@[IPv6:" + ":" * 500_000 + "]",
    ],
    ids=lambda a: a[:12],
)
def test_address_parsing_is_linear(address: str) -> None:
    """Even with the line limit raised to 2 MiB, a 500 KB address parses in well under a
    second (no catastrophic regex backtracking)."""
    config = SmtpConfig(hostname="mx.test", max_line_length=2 * MB, max_buffer_size=4 * MB)
    conn = SmtpConnection(config)
    start = time.perf_counter()
    _, out = feed(conn, [EHLO, b"MAIL FROM:<" + address.encode() + b">\r\n"])
    elapsed = time.perf_counter() - start
    figures.count("attacks.oversized.core_addresses")
    assert elapsed < 1.0, elapsed
    assert out.split(b"\r\n")[-2][:3] in (b"250", b"501", b"500", b"553")
