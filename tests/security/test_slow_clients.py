"""Slow and idle clients: slowloris dribblers and silent connections up to ``max_connections``.

New clients are always either served or told ``421 4.7.0`` promptly (never left hanging);
``idle_timeout``, ``data_timeout`` and ``tls_handshake_timeout`` fire and end sessions with
421 4.4.2 (or a close during a handshake, when nothing can be said).
"""

from __future__ import annotations

import socket
import threading
import time

from smtpcore import SmtpConfig, TlsMode

from . import figures
from ._support import RCPT, Client, Recorder, client_hello, wait_until

PROMPT = 2.0
"""Seconds within which a refused client must get its 421."""


class Dribbler(threading.Thread):
    """Writes one byte to each socket every ``interval`` seconds until stopped."""

    def __init__(self, clients: list[Client], data: bytes, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.clients, self.data, self.interval = clients, data, interval
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        i = 0
        while not self.stopped.wait(self.interval):
            byte = self.data[i % len(self.data) : i % len(self.data) + 1]
            for client in self.clients:
                client.try_send(byte)
            i += 1
            self.sent = i


def refused_promptly(address: tuple[str, int]) -> bool:
    """True if a new client gets ``421 4.7.0`` (and a close) within `PROMPT` seconds."""
    start = time.monotonic()
    with Client(address, timeout=PROMPT) as client:
        replies, end = client.rest(timeout=PROMPT)
    elapsed = time.monotonic() - start
    return (
        len(replies) == 1
        and (replies[0].code, replies[0].enhanced) == (421, "4.7.0")
        and end in ("eof", "reset")
        and elapsed < PROMPT
    )


def served(address: tuple[str, int]) -> None:
    with Client(address, timeout=PROMPT) as client:
        client.greet()
        client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        client.send(b"Subject: hi\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert client.codes(2) == [250, 221]


def test_slowloris_and_idle_clients_up_to_max_connections(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler, max_connections=50, idle_timeout=30.0) as server:
        slow = [Client(server.address) for _ in range(30)]
        idle = [Client(server.address) for _ in range(20)]
        try:
            for client in slow + idle:
                client.expect(220)
            dribbler = Dribbler(slow, b"NOOP\r\n")
            dribbler.start()
            try:
                time.sleep(0.3)
                for _ in range(3):  # the 51st, 52nd, 53rd clients: refused at once
                    assert refused_promptly(server.address)
                figures.count("slow.refused_promptly", 3)
                for client in idle[:10]:
                    client.close()
                time.sleep(0.3)
                for _ in range(5):
                    served(server.address)  # room again: served while the slow ones dribble
                time.sleep(0.8)
            finally:
                dribbler.stopped.set()
                dribbler.join(5)
            # every dribbler got its NOOPs answered meanwhile
            for client in slow:
                assert client.code(timeout=2.0) == 250
            figures.count("slow.slowloris_clients", len(slow))
            figures.count("slow.idle_clients", len(idle))
        finally:
            for client in slow + idle:
                client.close()


def test_idle_timeout_fires(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler, idle_timeout=0.5) as server:
        clients = [Client(server.address) for _ in range(3)]
        start = time.monotonic()
        clients[0].expect(220)  # silent after the banner
        clients[1].greet()  # silent after EHLO
        clients[2].expect(220)
        clients[2].send(b"NOO")  # silent in the middle of a line
        for client in clients:
            replies, end = client.rest(timeout=5.0)
            assert [(r.code, r.enhanced) for r in replies] == [(421, "4.4.2")], replies
            assert end == "eof"
            client.close()
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 3.0, elapsed
        figures.count("slow.idle_timeouts", 3)
        served(server.address)


def test_data_timeout_fires_on_a_trickle(transport: str, serve) -> None:
    """A client that keeps sending one byte per 0.1 s is never idle: ``data_timeout`` bounds
    the whole message instead."""
    handler = Recorder()
    with serve(handler, idle_timeout=5.0, data_timeout=1.0) as server:
        with Client(server.address) as client:
            client.greet()
            client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
            assert client.codes(3) == [250, 250, 354]
            dribbler = Dribbler([client], b"Subject: slow\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxx\r\n")
            start = time.monotonic()
            dribbler.start()
            try:
                replies, end = client.rest(timeout=6.0)
            finally:
                dribbler.stopped.set()
                dribbler.join(5)
            elapsed = time.monotonic() - start
            assert [(r.code, r.enhanced) for r in replies] == [(421, "4.4.2")], replies
            assert end in ("eof", "reset") and 1.0 <= elapsed < 3.5, (end, elapsed)
        assert handler.messages == []
        figures.count("slow.data_timeouts")
        served(server.address)


def test_tls_handshake_timeout_fires(transport: str, serve) -> None:
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with serve(handler, config=config, tls_handshake_timeout=0.5, idle_timeout=10.0) as server:
        hello = client_hello()
        for partial in (b"", hello[:20]):  # silent, or half a ClientHello then silent
            with Client(server.address) as client:
                client.greet()
                client.send(b"STARTTLS\r\n")
                client.expect(220)
                client.send(partial)
                start = time.monotonic()
                assert client.closed_by_server(timeout=5.0)
                assert time.monotonic() - start < 3.0
            figures.count("slow.handshake_timeouts")
        served(server.address)


def test_idle_flood_beyond_max_connections(transport: str, serve) -> None:
    """60 silent clients against ``max_connections=50`` and a 1 s idle timeout: 10 refused at
    once, the 50 others timed out with 421 4.4.2, then the server serves again."""
    handler = Recorder()
    with serve(handler, max_connections=50, idle_timeout=1.0) as server:
        clients = []
        for _ in range(60):
            clients.append(Client(server.address, timeout=PROMPT))
            time.sleep(0.002)
        outcomes: dict[tuple[int, str], int] = {}
        try:
            for client in clients:
                replies, _ = client.rest(timeout=5.0)
                for reply in replies:
                    key = (reply.code, reply.enhanced)
                    outcomes[key] = outcomes.get(key, 0) + 1
        finally:
            for client in clients:
                client.close()
        assert outcomes == {(220, ""): 50, (421, "4.4.2"): 50, (421, "4.7.0"): 10}, outcomes
        figures.count("slow.idle_clients", 60)
        served(server.address)


def test_connect_and_vanish_storm(transport: str, serve) -> None:
    """300 connections that close (half of them with a reset) before or right after the
    banner: nothing leaks, the server serves the next client. (Found the anyio transport
    stopping altogether when a client reset before its addresses were read; fixed in
    f96e429.)"""
    handler = Recorder()
    with serve(handler, max_connections=100) as server:
        for i in range(300):
            sock = socket.create_connection(server.address, timeout=PROMPT)
            if i % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.close()
        figures.count("faults.connect_and_vanish", 300)
        registry = server.server.registry
        start = time.monotonic()
        # empty twice, 0.3 s apart: the listen backlog may still hold vanished clients
        drained = wait_until(lambda: not registry.sessions, timeout=10.0)
        time.sleep(0.3)
        drained = drained and wait_until(lambda: not registry.sessions, timeout=10.0)
        figures.record("faults.vanish_drain_seconds", transport, round(time.monotonic() - start, 2))
        assert drained, f"{len(registry.sessions)} sessions of vanished clients still open"
        served(server.address)
