"""PIPELINING (RFC 2920): replies in command order, and no parsing past a pending decision."""

from __future__ import annotations

import pytest

from smtpcore import (
    NEED_DATA,
    PAUSED,
    Event,
    MailFrom,
    MessageStart,
    RcptTo,
    SmtpConfig,
    UnknownCommand,
)
from tests.core._support import EHLO, MAIL, RCPT, config, connect, kinds, rejecting, send
from tests.helpers import codes, merged, session

TRANSACTION = (
    EHLO
    + MAIL
    + RCPT
    + b"RCPT TO:<second@example.net>\r\n"
    + b"DATA\r\n"
    + b"Subject: pipelined\r\n\r\nbody\r\n.\r\n"
    + b"MAIL FROM:<next@example.org>\r\n"
    + b"RSET\r\n"
    + b"NOOP\r\n"
    + b"QUIT\r\n"
)


def test_whole_transaction_in_one_chunk() -> None:
    """RFC 2920 §3.1: replies come back in the order of the commands."""
    events, out = session(TRANSACTION)
    assert codes(out) == [220, 250, 250, 250, 250, 354, 250, 250, 250, 250, 221]
    assert kinds(merged(events)) == [
        "Greeting",
        "Helo",
        "MailFrom",
        "RcptTo",
        "RcptTo",
        "MessageStart",
        "DataChunk",
        "HeadersComplete",
        "DataChunk",
        "MessageComplete",
        "MailFrom",
        "Reset",
        "ConnectionClosed",
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_read_boundaries_do_not_matter(size: int) -> None:
    """Any split of the same input gives the same bytes out and the same events."""
    whole_events, whole_out = session(TRANSACTION)
    chunks = [TRANSACTION[i : i + size] for i in range(0, len(TRANSACTION), size)]
    events, out = session(chunks)
    assert out == whole_out
    assert merged(events) == merged(whole_events)


def test_rejected_mail_makes_the_pipelined_rcpts_fail() -> None:
    """RFC 2920 §3.1: each command in the group is answered; without a sender, 503."""
    conn = connect()
    data = MAIL + RCPT + b"RCPT TO:<b@example.net>\r\nDATA\r\n"
    events, lines = send(conn, data, rejecting(MailFrom))
    assert lines == [
        "550 5.7.1 Sender address rejected",
        "503 5.5.1 Need MAIL command",
        "503 5.5.1 Need MAIL command",
        "503 5.5.1 Need MAIL command",
    ]
    assert kinds(events) == [
        "MailFrom",
        "ProtocolViolation",
        "ProtocolViolation",
        "ProtocolViolation",
    ]


def test_nothing_is_parsed_past_a_pending_decision() -> None:
    """The RCPT waits in the buffer until MAIL is answered; no reply jumps the queue."""
    conn = connect()
    rest = RCPT + b"NOOP\r\n"
    conn.receive_data(MAIL + rest)
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    assert conn.pending is mail
    for _ in range(3):
        assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert bytes(conn._buffer.raw) == rest  # white-box: the RCPT is still unread
    conn.accept(mail)
    assert conn.data_to_send() == b"250 2.1.0 Sender OK\r\n"
    rcpt = conn.next_event()
    assert isinstance(rcpt, RcptTo)
    assert conn.pending is rcpt
    assert bytes(conn._buffer.raw) == b"NOOP\r\n"
    conn.accept(rcpt)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"250 2.1.5 Recipient OK\r\n250 2.0.0 OK\r\n"


def test_late_decision_keeps_reply_order() -> None:
    """A reply decided late still precedes the replies of the commands after it."""
    conn = connect()
    conn.receive_data(MAIL + b"NOOP\r\nHELP\r\n")
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    assert conn.next_event() is PAUSED
    conn.reject(mail)
    assert conn.next_event() is NEED_DATA
    lines = conn.data_to_send().decode().splitlines()
    assert [line[:3] for line in lines] == ["550", "250", "214"]


def test_data_content_is_not_read_before_354() -> None:
    """Content sent before the DATA decision stays unread until 354 is sent."""
    conn = connect()
    send(conn, MAIL + RCPT)
    conn.receive_data(b"DATA\r\nhello\r\n.\r\n")
    start = conn.next_event()
    assert isinstance(start, MessageStart)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.accept(start)
    assert conn.data_to_send().startswith(b"354 ")
    events: list[Event] = []
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        assert isinstance(event, Event)
        events.append(event)
    assert kinds(events) == ["DataChunk", "HeadersComplete", "MessageComplete"]


def test_without_pipelining_input_sent_ahead_is_still_answered() -> None:
    """A server not offering PIPELINING still answers each command in order, no 500."""
    cfg: SmtpConfig = config(pipelining=False)
    _events, out = session(TRANSACTION, cfg)
    assert codes(out) == [220, 250, 250, 250, 250, 354, 250, 250, 250, 250, 221]
    assert not [c for c in codes(out) if c >= 500]


def test_errors_in_a_group_do_not_desynchronise() -> None:
    conn = connect()
    data = b"BOGUS\r\n" + MAIL + b"RCPT TO:bad\r\n" + RCPT + b"DATA\r\nx\r\n.\r\n"
    _, lines = send(conn, data, rejecting(UnknownCommand))
    assert [line[:3] for line in lines] == ["500", "250", "501", "250", "354", "250"]


def test_pipelined_commands_after_quit_are_ignored() -> None:
    events, out = session(EHLO + b"QUIT\r\n" + MAIL)
    assert codes(out)[-1] == 221
    assert not [e for e in events if isinstance(e, MailFrom)]
