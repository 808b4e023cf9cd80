"""CHUNKING and BINARYMIME: BDAT chunks, their replies and their failures (RFC 3030)."""

from __future__ import annotations

import pytest

from smtpcore import (
    CloseReason,
    ConnectionClosed,
    DataChunk,
    Event,
    HeadersComplete,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageStart,
    ProtocolViolation,
    Reply,
    Reset,
    SmtpConfig,
    SmtpConnection,
    State,
    UnknownCommand,
)
from tests.core._support import (
    MAIL,
    RCPT,
    config,
    connect,
    drive,
    kinds,
    of_type,
    rejecting,
    send,
)
from tests.helpers import content, merged

ACCEPTED = "250 2.0.0 Message accepted"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT size [LAST]"


def octets(n: int) -> str:
    return f"250 2.0.0 {n} octets received"


def chunk(data: bytes, last: bool = False) -> bytes:
    """One BDAT command with its octets."""
    return f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode() + data


def ready(cfg: SmtpConfig | None = None, mail: bytes = MAIL) -> SmtpConnection:
    """A session with MAIL and RCPT accepted."""
    conn = connect(cfg)
    _, lines = send(conn, mail + RCPT)
    assert [line[:3] for line in lines] == ["250", "250"]
    return conn


def test_single_last_chunk() -> None:
    conn = ready()
    events, lines = send(conn, chunk(b"Subject: x\r\n\r\nhello\r\n", last=True))
    assert lines == [ACCEPTED]
    assert kinds(merged(events)) == [
        "MessageStart",
        "DataChunk",
        "HeadersComplete",
        "DataChunk",
        "MessageComplete",
    ]
    assert of_type(events, MessageStart)[0].command == "BDAT"
    assert content(events) == b"Subject: x\r\n\r\nhello\r\n"
    assert of_type(events, MessageComplete)[0].size == 21
    assert conn.state is State.READY
    assert not conn.in_transaction


def test_several_chunks() -> None:
    conn = ready()
    events, lines = send(conn, chunk(b"abc") + chunk(b"defg") + chunk(b"hi", last=True))
    assert lines == [octets(3), octets(4), ACCEPTED]
    assert len(of_type(events, MessageStart)) == 1
    assert content(events) == b"abcdefghi"
    assert of_type(events, MessageComplete)[0].size == 9
    assert conn.message_size == 9


def test_state_between_chunks() -> None:
    conn = ready()
    send(conn, chunk(b"abc"))
    assert conn.state is State.BDAT
    assert conn.in_transaction
    send(conn, b"BDAT 4\r\nab")
    assert conn.state is State.BDAT_CHUNK
    assert conn.reading_data
    send(conn, b"cd")
    assert conn.state is State.BDAT


def test_bdat_zero_last_ends_the_message() -> None:
    conn = ready()
    events, lines = send(conn, chunk(b"abc") + b"BDAT 0 LAST\r\n")
    assert lines == [octets(3), ACCEPTED]
    assert content(events) == b"abc"


def test_bdat_zero_last_alone_is_an_empty_message() -> None:
    conn = ready()
    events, lines = send(conn, b"BDAT 0 LAST\r\n")
    assert lines == [ACCEPTED]
    assert kinds(events) == ["MessageStart", "HeadersComplete", "MessageComplete"]
    assert of_type(events, MessageComplete)[0].size == 0


def test_bdat_zero_not_last() -> None:
    conn = ready()
    _, lines = send(conn, b"BDAT 0\r\n" + chunk(b"x", last=True))
    assert lines == [octets(0), ACCEPTED]


def test_lowercase_bdat_last() -> None:
    conn = ready()
    _, lines = send(conn, b"bdat 2 last\r\nhi")
    assert lines == [ACCEPTED]


def test_chunk_octets_are_not_interpreted() -> None:
    """RFC 3030 §2: no dot-stuffing, no terminator, no line-ending rules inside a chunk."""
    data = b"..x\r\n.\r\nQUIT\r\nbare\nlf\rcr\x00nul"
    for mode in ("strict", "normalize", "leave"):
        conn = ready(config(crlf_mode=mode))
        events, lines = send(conn, chunk(data, last=True))
        assert lines == [ACCEPTED], mode
        assert content(events) == data, mode


def test_chunk_split_across_reads() -> None:
    conn = ready()
    events, lines = send(conn, [b"BDAT 10 LA", b"ST\r\nabc", b"defg", b"hij"])
    assert lines == [ACCEPTED]
    assert content(events) == b"abcdefghij"


def test_whole_pipelined_transaction() -> None:
    conn = connect()
    data = MAIL + RCPT + chunk(b"abc") + chunk(b"def", last=True) + b"QUIT\r\n"
    _, lines = send(conn, data)
    assert lines == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        octets(3),
        ACCEPTED,
        "221 2.0.0 Bye",
    ]


@pytest.mark.parametrize(
    "command",
    [
        b"BDAT\r\n",
        b"BDAT x\r\n",
        b"BDAT -1\r\n",
        b"BDAT 5 LATER\r\n",
        b"BDAT 5 LAST now\r\n",
        b"BDAT 1.5\r\n",
        b"BDAT 9999999999999999999\r\n",
    ],
)
def test_malformed_bdat_is_501(command: bytes) -> None:
    conn = ready()
    events, lines = send(conn, command)
    assert lines == [BDAT_SYNTAX]
    assert of_type(events, ProtocolViolation)
    assert conn.state is State.RCPT


# ---------------------------------------------------------------- out of sequence


@pytest.mark.parametrize(
    ("setup", "reply"),
    [
        (b"", "503 5.5.1 Need MAIL command"),
        (MAIL, "503 5.5.1 Need RCPT command"),
    ],
)
def test_bdat_out_of_sequence_consumes_its_octets(setup: bytes, reply: str) -> None:
    """RFC 3030 §4.2: the chunk is read even when the BDAT fails, so no octet is a command."""
    conn = connect()
    if setup:
        send(conn, setup)
    evil = b"MAIL FROM:<evil@attacker.example>\r\n"
    events, lines = send(conn, [chunk(evil)[:10], chunk(evil)[10:] + b"NOOP\r\n"])
    assert lines == [reply, "250 2.0.0 OK"]
    assert not of_type(events, MailFrom)
    assert not of_type(events, MessageStart)
    assert len(of_type(events, ProtocolViolation)) == 1
    assert conn.error_count == 1


def test_bdat_before_helo_consumes_its_octets() -> None:
    conn = connect(ehlo=None)
    _, lines = send(conn, chunk(b"EHLO x\r\n", last=True) + b"NOOP\r\n")
    assert lines == ["503 5.5.1 Send HELO/EHLO first", "250 2.0.0 OK"]
    assert conn.helo_name is None


@pytest.mark.parametrize(
    ("setting", "reply"),
    [
        ({"tls_mode": "required"}, "530 5.7.0 Must issue a STARTTLS command first"),
        (
            {"auth_mode": "required", "allow_insecure_auth": True},
            "530 5.7.0 Authentication required",
        ),
    ],
)
def test_bdat_refused_by_policy_still_consumes_its_octets(
    setting: dict[str, object], reply: str
) -> None:
    """RFC 3030 §2: on any failure after BDAT the server MUST read and discard the chunk first.

    Otherwise the message octets are parsed as commands (here ``RSET`` and ``NOOP``).
    """
    conn = connect(config(**setting))
    events, lines = send(conn, chunk(b"RSET\r\nNOOP\r\n", last=True) + b"QUIT\r\n")
    assert lines == [reply, "221 2.0.0 Bye"]
    assert len(of_type(events, ProtocolViolation)) == 1


def test_no_chunking_makes_bdat_an_unknown_command() -> None:
    conn = connect(config(chunking=False))
    send(conn, MAIL + RCPT)
    events, lines = send(conn, b"BDAT 3 LAST\r\n", rejecting(UnknownCommand))
    assert lines == ["500 5.5.2 Command unrecognized"]
    assert of_type(events, UnknownCommand)[0].verb == "BDAT"


# ---------------------------------------------------------------- failures


def test_rejected_first_bdat_is_answered_after_its_octets() -> None:
    conn = ready()
    refuse = rejecting(MessageStart, reply=Reply(550, "No mail from you", "5.7.1"))
    events, lines = send(conn, b"BDAT 6\r\nabc", refuse)
    assert lines == []
    assert of_type(events, MessageAborted)
    assert not of_type(events, DataChunk)
    events, lines = send(conn, b"def" + b"NOOP\r\n", refuse)
    assert lines == ["550 5.7.1 No mail from you", "250 2.0.0 OK"]
    assert not of_type(events, DataChunk)


def test_chunks_pipelined_after_a_rejected_bdat_are_discarded() -> None:
    """RFC 3030 §4.2: chunks already in the pipeline after a failed BDAT are discarded."""
    conn = ready()
    data = chunk(b"abc") + chunk(b"QUIT\r\n") + chunk(b"RSET\r\n", last=True) + b"NOOP\r\n"
    events, lines = send(conn, data, rejecting(MessageStart))
    assert lines[0] == "554 5.0.0 Transaction failed"
    assert lines[-1] == "250 2.0.0 OK"
    assert all(line[0] in "45" for line in lines[1:-1]), lines
    assert not of_type(events, DataChunk)
    assert not conn.closed


@pytest.mark.parametrize("last", [False, True])
def test_rejecting_the_first_bdat_with_421_sends_it_then_closes(last: bool) -> None:
    """RFC 5321 §3.8: a 421 is sent, then the channel is closed; the reply is never lost."""
    conn = ready()
    bye = Reply(421, "mx.test shutting down", "4.3.0")
    events, lines = send(
        conn, chunk(b"abc", last=last) + b"NOOP\r\n", rejecting(MessageStart, reply=bye)
    )
    assert lines == ["421 4.3.0 mx.test shutting down"]
    assert events[-1] == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


@pytest.mark.parametrize("last", [False, True])
def test_rejecting_a_chunk_with_421_closes(last: bool) -> None:
    """RFC 5321 §3.8: after 421 the server closes; nothing more is answered."""
    conn = ready()
    bye = Reply(421, "mx.test shutting down", "4.3.0")

    def hook(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, DataChunk):
            c.reject(event, bye)

    head = b"BDAT 6 LAST\r\nabc" if last else b"BDAT 6\r\nabc"
    events, lines = drive(conn, [head, b"def" + b"NOOP\r\n"], hook)
    assert lines == ["421 4.3.0 mx.test shutting down"]
    assert conn.closed
    assert events[-1] == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


def test_rejected_first_bdat_last() -> None:
    conn = ready()
    _, lines = send(conn, chunk(b"abc", last=True), rejecting(MessageStart))
    assert lines == ["554 5.0.0 Transaction failed"]
    assert conn.state is State.READY


def test_size_limit_across_chunks() -> None:
    conn = ready(config(max_message_size=10))
    events, lines = send(conn, chunk(b"12345678") + chunk(b"12345678", last=True) + b"NOOP\r\n")
    assert lines == [octets(8), TOO_BIG, "250 2.0.0 OK"]
    assert of_type(events, MessageAborted)[0].reason == "message too large"
    assert not of_type(events, MessageComplete)
    assert conn.state is State.READY


def test_size_limit_in_a_non_last_chunk() -> None:
    conn = ready(config(max_message_size=10))
    _, lines = send(conn, chunk(b"x" * 20) + b"NOOP\r\n")
    assert lines == [TOO_BIG, "250 2.0.0 OK"]


def test_rejected_chunk_is_answered_after_its_octets() -> None:
    conn = ready()

    def hook(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, DataChunk):
            c.reject(event, Reply(554, "Content refused", "5.7.1"))

    events, lines = drive(conn, [b"BDAT 6\r\nabc", b"def", b"NOOP\r\n"], hook)
    assert lines == ["554 5.7.1 Content refused", "250 2.0.0 OK"]
    assert len(of_type(events, DataChunk)) == 1
    assert conn.state is State.READY


# ---------------------------------------------------------------- BINARYMIME and mixing


def test_binarymime_requires_bdat() -> None:
    """RFC 3030 §3: DATA after BODY=BINARYMIME gets 503 5.5.1."""
    conn = ready(mail=b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n")
    events, lines = send(conn, b"DATA\r\n")
    assert lines == ["503 5.5.1 BODY=BINARYMIME requires BDAT"]
    assert not of_type(events, MessageStart)
    _, lines = send(conn, chunk(b"\x00\xff binary", last=True))
    assert lines == [ACCEPTED]


def test_data_during_bdat_is_503() -> None:
    conn = ready()
    events, lines = send(conn, chunk(b"abc") + b"DATA\r\n" + chunk(b"def", last=True))
    assert lines == [octets(3), "503 5.5.1 DATA not allowed during BDAT", ACCEPTED]
    assert content(events) == b"abcdef"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (RCPT, "503 5.5.1 RCPT not allowed during BDAT"),
        (MAIL, "503 5.5.1 Nested MAIL command"),
    ],
)
def test_envelope_commands_during_bdat_are_503(command: bytes, reply: str) -> None:
    conn = ready()
    _, lines = send(conn, chunk(b"abc") + command + chunk(b"d", last=True))
    assert lines == [octets(3), reply, ACCEPTED]


def test_rset_between_chunks_aborts_the_message() -> None:
    conn = ready()
    events, lines = send(conn, chunk(b"abc") + b"RSET\r\n")
    assert lines == [octets(3), "250 2.0.0 OK"]
    assert kinds(events)[-2:] == ["MessageAborted", "Reset"]
    assert of_type(events, MessageAborted)[0].reason == "transaction reset"
    assert conn.state is State.READY
    _, lines = send(conn, chunk(b"x", last=True))
    assert lines == ["503 5.5.1 Need MAIL command"]


def test_ehlo_between_chunks_aborts_the_message() -> None:
    conn = ready()
    events, _ = send(conn, chunk(b"abc") + b"EHLO client.test\r\n")
    assert of_type(events, MessageAborted)
    assert of_type(events, Reset) == [Reset()]
    assert conn.state is State.READY


def test_quit_between_chunks_aborts_the_message() -> None:
    """`MessageAborted` tells the application to drop the chunks it has collected."""
    conn = ready()
    events, lines = send(conn, chunk(b"abc") + b"QUIT\r\n")
    assert lines == [octets(3), "221 2.0.0 Bye"]
    assert kinds(events)[-2:] == ["MessageAborted", "ConnectionClosed"]
    assert events[-1] == ConnectionClosed(reason=CloseReason.QUIT)


def test_error_limit_between_chunks_aborts_the_message() -> None:
    conn = ready(config(max_errors=1))
    events, lines = send(conn, chunk(b"abc") + b"DATA\r\n")
    assert lines[-1] == "421 4.7.0 Too many errors, closing transmission channel"
    assert of_type(events, MessageAborted)
    assert events[-1] == ConnectionClosed(reason=CloseReason.TOO_MANY_ERRORS)


def test_peer_eof_mid_chunk() -> None:
    conn = ready()
    events, _ = send(conn, [b"BDAT 10 LAST\r\nabc", b""])
    assert events[-2:] == [
        MessageAborted(reason="peer closed", reply=None),
        ConnectionClosed(reason=CloseReason.PEER_CLOSED),
    ]


# ---------------------------------------------------------------- HeadersComplete


def _shape(events: list[Event]) -> list[bytes | None]:
    return [
        e.data if isinstance(e, DataChunk) else None
        for e in merged(events)
        if isinstance(e, DataChunk | HeadersComplete)
    ]


@pytest.mark.parametrize("split", range(1, 18))
def test_headers_complete_placement_across_chunks(split: int) -> None:
    """`HeadersComplete` sits right before the empty line, wherever the chunks split."""
    raw = b"Subject: a\r\n\r\nbody\r\n"
    conn = ready()
    events, lines = send(conn, chunk(raw[:split]) + chunk(raw[split:], last=True))
    assert lines == [octets(split), ACCEPTED]
    assert not [e for e in events if isinstance(e, DataChunk) and not e.data]
    assert _shape(events) == [b"Subject: a\r\n", None, b"\r\nbody\r\n"]


def test_headers_complete_with_one_octet_chunks() -> None:
    raw = b"Subject: a\r\n\r\nbody\r\n"
    conn = ready()
    data = b"".join(chunk(raw[i : i + 1]) for i in range(len(raw))) + b"BDAT 0 LAST\r\n"
    events, lines = send(conn, data)
    assert lines[-1] == ACCEPTED
    assert len(of_type(events, HeadersComplete)) == 1
    assert not [e for e in events if isinstance(e, DataChunk) and not e.data]
    assert _shape(events) == [b"Subject: a\r\n", None, b"\r\nbody\r\n"]
