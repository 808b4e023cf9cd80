"""Fuzzing: arbitrary peer bytes, in arbitrary chunks, never break the core.

Bytes are fed from a fresh connection, after a valid EHLO/MAIL/RCPT/DATA (or BDAT) prefix,
and inside an AUTH exchange. Whatever arrives:

* nothing raises, and `next_event()` only returns events or the two sentinels;
* every byte written is a well-formed reply line;
* the receive buffer stays bounded: after each pump it holds at most
  ``max(max_line_length, max_auth_line_length)`` octets plus the last chunk fed;
* `NEED_DATA` means what it says: no complete command line is left waiting in the buffer
  (4 octets at most while reading DATA, none inside a BDAT chunk);
* EOF always ends the session with `ConnectionClosed`.
"""

from __future__ import annotations

import re
from base64 import b64encode
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpcore import (
    NEED_DATA,
    PAUSED,
    AuthMode,
    ConnectionClosed,
    CrlfMode,
    Event,
    Reply,
    SmtpConfig,
    SmtpConnection,
    State,
    TlsMode,
    TlsUpgrade,
)

MAX_LINE = 512
MAX_AUTH_LINE = 1024
MAX_BUFFER = 4096
BOUND = max(MAX_LINE, MAX_AUTH_LINE)
REPLY_LINE = re.compile(rb"[2-5]\d\d[ -][^\r\n]*\r\n")
COMMAND_STATES = {
    State.REFUSED,
    State.HELO,
    State.READY,
    State.MAIL,
    State.RCPT,
    State.BDAT,
    State.AUTH,
}

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

configs = st.builds(
    SmtpConfig,
    hostname=st.just("mx.test"),
    lmtp=st.booleans(),
    crlf_mode=st.sampled_from(CrlfMode),
    tls_mode=st.sampled_from([TlsMode.FORBIDDEN, TlsMode.OPTIONAL]),
    auth_mode=st.just(AuthMode.OPTIONAL),
    auth_mechanisms=st.just(("PLAIN", "LOGIN", "CRAM-MD5")),
    allow_insecure_auth=st.just(True),
    max_line_length=st.just(MAX_LINE),
    max_auth_line_length=st.just(MAX_AUTH_LINE),
    max_buffer_size=st.just(MAX_BUFFER),
    max_message_size=st.sampled_from([None, 1000]),
    max_errors=st.sampled_from([3, 1000]),
)

FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"BDAT 7\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 99999999999999999999\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"*\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"RCPT TO:<r@x.example>\r\n",
    b"\x00",
    b"\xff\xfe",
]
noise = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from(FRAGMENTS),
        st.integers(100, 2 * MAX_BUFFER).map(lambda n: b"Z" * n),
    ),
    max_size=16,
).map(b"".join)

EHLO = b"EHLO client.example\r\n"
LHLO = b"LHLO client.example\r\n"
ENVELOPE = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@x.example>\r\n"
PREFIXES = {
    "fresh": b"",
    "greeted": EHLO,
    "mail": EHLO + b"MAIL FROM:<a@b.example>\r\n",
    "rcpt": EHLO + ENVELOPE,
    "data": EHLO + ENVELOPE + b"DATA\r\n",
    "bdat": EHLO + ENVELOPE + b"BDAT 2000\r\n",
    "auth plain": EHLO + b"AUTH PLAIN\r\n",
    "auth login": EHLO + b"AUTH LOGIN " + b64encode(b"user") + b"\r\n",
    "auth cram": EHLO + b"AUTH CRAM-MD5\r\n",
}


class Fuzzer:
    """Drives one connection, deciding at random and checking the invariants at each pump."""

    def __init__(self, config: SmtpConfig, data: st.DataObject) -> None:
        self.conn = SmtpConnection(config)
        self.data = data
        self.out = bytearray()

    def decide(self, event: Event) -> None:
        roll = self.data.draw(st.integers(0, 9), label=type(event).__name__)
        if roll < 7:
            self.conn.accept(event)
        elif roll < 9:
            self.conn.reject(event)
        else:
            self.conn.reject(event, Reply(421, "bye", "4.3.2"))

    def pump(self, last_chunk: int) -> list[Event]:
        conn = self.conn
        events: list[Event] = []
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED, "PAUSED with every decision answered"
            assert isinstance(event, Event), f"next_event() returned {event!r}"
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            if isinstance(event, TlsUpgrade):
                conn.tls_established()
            if event.needs_reply:
                self.decide(event)
        self.out += conn.data_to_send()
        self.check_buffer(last_chunk)
        return events

    def check_buffer(self, last_chunk: int) -> None:
        conn = self.conn
        held = bytes(conn._buffer.raw)
        assert len(held) <= BOUND + last_chunk, (len(held), conn.state)
        if conn.closed:
            assert not held
        elif conn.state in COMMAND_STATES:
            assert b"\n" not in held, f"NEED_DATA with a complete line buffered in {conn.state}"
        elif conn.state is State.DATA:
            assert len(held) <= 4, "NEED_DATA with DATA content left unread"
        elif conn.state is State.BDAT_CHUNK:
            assert not held, "NEED_DATA with BDAT octets left unread"

    def run(self, chunks: list[bytes]) -> None:
        conn = self.conn
        self.pump(0)
        for chunk in chunks:
            if conn.closed:
                break
            conn.receive_data(chunk)
            self.pump(len(chunk))
        if not conn.closed:
            conn.receive_data(b"")
            events = self.pump(0)
            assert events and isinstance(events[-1], ConnectionClosed), events
        assert conn.closed
        assert isinstance(conn.next_event(), ConnectionClosed)  # and it stays that way
        out = bytes(self.out)
        assert REPLY_LINE.sub(b"", out) == b"", f"malformed output {out!r}"


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p for p in points if 0 < p < len(wire)}), len(wire)]
    return [wire[a:b] for a, b in pairwise(bounds) if b > a]


def fuzz(config: SmtpConfig, wire: bytes, data: st.DataObject) -> None:
    if data.draw(st.integers(0, 4), label="byte at a time") == 4 and len(wire) < 3000:
        chunks = [wire[i : i + 1] for i in range(len(wire))]
    else:
        points = data.draw(st.lists(st.integers(0, len(wire)), max_size=30), label="cuts")
        chunks = cut(wire, points)
    Fuzzer(config, data).run(chunks)


@SETTINGS
@given(config=configs, junk=st.binary(max_size=2000), data=st.data())
def test_arbitrary_bytes(config: SmtpConfig, junk: bytes, data: st.DataObject) -> None:
    fuzz(config, junk, data)


@SETTINGS
@given(
    config=configs,
    prefix=st.sampled_from(sorted(PREFIXES)),
    junk=noise,
    data=st.data(),
)
def test_bytes_after_a_valid_prefix(
    config: SmtpConfig, prefix: str, junk: bytes, data: st.DataObject
) -> None:
    start = PREFIXES[prefix]
    if config.lmtp:
        start = start.replace(EHLO, LHLO)
    fuzz(config, start + junk, data)


@SETTINGS
@given(
    config=configs,
    lines=st.lists(st.one_of(noise, st.binary(max_size=40)), min_size=1, max_size=5),
    data=st.data(),
)
def test_inside_an_auth_exchange(
    config: SmtpConfig, lines: list[bytes], data: st.DataObject
) -> None:
    """SASL response lines of any content and length (the AUTH line limit applies)."""
    mechanism = data.draw(st.sampled_from([b"PLAIN", b"LOGIN", b"CRAM-MD5"]), label="mechanism")
    greeting = LHLO if config.lmtp else EHLO
    wire = greeting + b"AUTH " + mechanism + b"\r\n" + b"".join(line + b"\r\n" for line in lines)
    fuzz(config, wire, data)
