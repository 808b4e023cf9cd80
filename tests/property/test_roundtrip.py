"""Round trip: what a client sends as a message body is what the application receives.

The client side is done by hand the way RFC 5321 §4.5.2 says (every line starting with '.'
gets another '.', the body ends with CRLF, then ``.CRLF``). The bytes are sent after a valid
envelope, cut at arbitrary points, and the `DataChunk` events must give the body back
byte for byte; `HeadersComplete` must sit exactly where the first empty line starts.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpcore import (
    CrlfMode,
    DataChunk,
    Event,
    HeadersComplete,
    MessageComplete,
    SmtpConfig,
    SmtpConnection,
)
from tests.helpers import codes, content, feed, pump

CRLF = b"\r\n"
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- bodies

LINE_STARTS = [b".", b"..", b"...", b"", b"", b"Subject: x", b"From: a@b.example", b" ."]
lines = st.builds(
    lambda start, rest: start + rest,
    st.sampled_from(LINE_STARTS),
    st.binary(max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
"""One line's text: often dots or a header up front, never CR or LF."""
crlf_bodies = st.lists(lines, max_size=12).map(lambda ls: b"".join(line + CRLF for line in ls))
"""Bodies whose every line ends in CRLF (no bare CR or LF): NORMALIZE and STRICT keep them."""

any_endings = st.lists(
    st.tuples(lines, st.sampled_from([CRLF, CRLF, b"\n", b"\r", b"\r\r\n", b"\n.\n", b""])),
    max_size=12,
).map(lambda parts: b"".join(line + end for line, end in parts))
leave_bodies = st.one_of(st.binary(max_size=300), any_endings, crlf_bodies)
"""Anything: LEAVE hands content over exactly as sent (after unstuffing)."""


def client_data(body: bytes) -> tuple[bytes, bytes]:
    """(what the client sends after 354, what the server must deliver) for ``body``."""
    if body and not body.endswith(CRLF):
        body += CRLF  # the client ends the last line (RFC 5321 §4.1.1.4)
    stuffed = (CRLF + body).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n", body


def first_empty_line(delivered: bytes) -> int:
    """Offset of the first empty line of the content (its end if there is none)."""
    if delivered.startswith((CRLF, b"\n")):
        return 0
    hits = [i + 1 for i in (delivered.find(b"\n\r\n"), delivered.find(b"\n\n")) if i >= 0]
    return min(hits) if hits else len(delivered)


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p for p in points if 0 < p < len(wire)}), len(wire)]
    return [wire[a:b] for a, b in pairwise(bounds) if b > a]


# --------------------------------------------------------------------------- driving


def deliver(config: SmtpConfig, chunks: list[bytes], *, command: bytes = b"DATA") -> list[Event]:
    """Run an envelope, then the content ``chunks``; return the events of the message."""
    conn = SmtpConnection(config)
    greeting = b"LHLO client.example\r\n" if config.lmtp else b"EHLO client.example\r\n"
    envelope = greeting + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@x.example>\r\n"
    if command == b"DATA":
        envelope += b"DATA\r\n"
    _, out = feed(conn, [envelope])
    assert codes(out) == [220, 250, 250, 250] + ([354] if command == b"DATA" else [])
    events: list[Event] = []
    sent = bytearray()
    for chunk in chunks:
        conn.receive_data(chunk)
        events += pump(conn)
        sent += conn.data_to_send()
    assert codes(bytes(sent)) == [250] * (sent.count(b"\r\n")), sent
    assert any(isinstance(e, MessageComplete) for e in events), "the message never ended"
    return events


def check_message(events: list[Event], expected: bytes) -> None:
    assert content(events) == expected
    heads = [i for i, e in enumerate(events) if isinstance(e, HeadersComplete)]
    assert len(heads) == 1, "HeadersComplete must come exactly once"
    complete = next(i for i, e in enumerate(events) if isinstance(e, MessageComplete))
    assert heads[0] < complete
    assert not any(isinstance(e, DataChunk) for e in events[complete:])
    offset = len(content(events[: heads[0]]))
    assert offset == first_empty_line(expected), "HeadersComplete is not at the first empty line"
    chunks = [e for e in events if isinstance(e, DataChunk)]
    assert all(chunk.data for chunk in chunks), "empty DataChunk"
    message = events[complete]
    assert isinstance(message, MessageComplete)
    assert message.size == len(expected)


def config(mode: CrlfMode, lmtp: bool = False) -> SmtpConfig:
    return SmtpConfig(hostname="mx.test", crlf_mode=mode, lmtp=lmtp, max_message_size=None)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
@SETTINGS
@given(body=leave_bodies, data=st.data())
def test_data_leave_mode_is_byte_exact(lmtp: bool, body: bytes, data: st.DataObject) -> None:
    wire, expected = client_data(body)
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=20), label="cuts")
    check_message(deliver(config(CrlfMode.LEAVE, lmtp), cut(wire, points)), expected)


@pytest.mark.parametrize("mode", [CrlfMode.NORMALIZE, CrlfMode.STRICT], ids=lambda m: m.value)
@SETTINGS
@given(body=crlf_bodies, data=st.data())
def test_data_crlf_bodies_are_byte_exact(mode: CrlfMode, body: bytes, data: st.DataObject) -> None:
    wire, expected = client_data(body)
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=20), label="cuts")
    check_message(deliver(config(mode), cut(wire, points)), expected)


@SETTINGS
@given(body=crlf_bodies, data=st.data())
def test_data_byte_at_a_time(body: bytes, data: st.DataObject) -> None:
    wire, expected = client_data(body)
    mode = data.draw(st.sampled_from(CrlfMode), label="mode")
    check_message(deliver(config(mode), [wire[i : i + 1] for i in range(len(wire))]), expected)


def bdat_wire(body: bytes, sizes: list[int]) -> bytes:
    pieces = cut(body, sizes) or [b""]
    return b"".join(
        b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(pieces) - 1 else b"") + p
        for i, p in enumerate(pieces)
    )


@SETTINGS
@given(body=leave_bodies, data=st.data())
def test_bdat_is_byte_exact(body: bytes, data: st.DataObject) -> None:
    """BDAT carries octets as they are (no stuffing, no line-ending rules), in any chunking."""
    sizes = data.draw(st.lists(st.integers(0, len(body)), max_size=4), label="chunk cuts")
    wire = bdat_wire(body, sizes)
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=20), label="cuts")
    mode = data.draw(st.sampled_from(CrlfMode), label="mode")
    check_message(deliver(config(mode), cut(wire, points), command=b"BDAT"), body)


@SETTINGS
@given(body=crlf_bodies, data=st.data())
def test_bdat_byte_at_a_time(body: bytes, data: st.DataObject) -> None:
    sizes = data.draw(st.lists(st.integers(0, len(body)), max_size=3), label="chunk cuts")
    wire = bdat_wire(body, sizes)
    chunks = [wire[i : i + 1] for i in range(len(wire))]
    check_message(deliver(config(CrlfMode.NORMALIZE), chunks, command=b"BDAT"), body)
