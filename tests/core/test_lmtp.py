"""LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the data."""

from __future__ import annotations

import pytest

from smtpcore import (
    Event,
    Helo,
    LocalProtocolError,
    MessageComplete,
    RcptTo,
    Reply,
    SmtpConnection,
    State,
)
from tests.core._support import MAIL, config, connect, of_type, send, transcript

LHLO = b"LHLO client.test\r\n"
ACCEPTED = "250 2.0.0 Message accepted"
R1 = b"RCPT TO:<one@example.net>\r\n"
R2 = b"RCPT TO:<two@example.net>\r\n"
R3 = b"RCPT TO:<three@example.net>\r\n"


def lmtp(**kwargs: object) -> SmtpConnection:
    return connect(config(lmtp=True, **kwargs), ehlo=LHLO)


def reject_two(conn: SmtpConnection, event: Event) -> None:
    """Reject the recipient ``two@``, accept everything else."""
    if isinstance(event, RcptTo) and event.address.startswith("two@"):
        conn.reject(event)
    else:
        conn.accept(event)


def holding_complete(conn: SmtpConnection, event: Event) -> None:
    """Accept everything but leave `MessageComplete` pending."""
    if not isinstance(event, MessageComplete):
        conn.accept(event)


def test_lhlo_transcript() -> None:
    lines = transcript(LHLO, config(lmtp=True))
    assert lines == [
        "220 mx.test LMTP ready",
        "250-mx.test greets client.test",
        "250-PIPELINING",
        "250-SIZE 33554432",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250-CHUNKING",
        "250-BINARYMIME",
        "250-DSN",
        "250 HELP",
    ]


def test_lhlo_event_and_facts() -> None:
    conn = connect(config(lmtp=True), ehlo=None)
    events, _ = send(conn, LHLO)
    assert events == [Helo(verb="LHLO", domain="client.test")]
    assert conn.esmtp is True
    assert conn.helo_name == "client.test"


@pytest.mark.parametrize("command", [b"HELO client.test\r\n", b"EHLO client.test\r\n"])
def test_helo_and_ehlo_are_refused(command: bytes) -> None:
    conn = connect(config(lmtp=True), ehlo=None)
    events, lines = send(conn, command)
    assert lines == ["500 5.5.2 This is LMTP: use LHLO"]
    assert not of_type(events, Helo)
    assert conn.state is State.HELO


def test_mail_before_lhlo_is_503() -> None:
    conn = connect(config(lmtp=True), ehlo=None)
    assert send(conn, MAIL)[1] == ["503 5.5.1 Send LHLO first"]


def test_one_reply_per_accepted_recipient_after_data() -> None:
    """RFC 2033 §4.2: after the final ".", one reply for each accepted RCPT, in order."""
    conn = lmtp()
    _, lines = send(conn, MAIL + R1 + R2 + R3 + b"DATA\r\nhello\r\n.\r\n", reject_two)
    assert lines == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "550 5.1.1 Requested action not taken: mailbox unavailable",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
        ACCEPTED,
        ACCEPTED,
    ]
    assert conn.state is State.READY


def test_reply_per_recipient() -> None:
    conn = lmtp()
    events, _lines = send(conn, MAIL + R1 + R2 + b"DATA\r\nhello\r\n.\r\n", holding_complete)
    complete = of_type(events, MessageComplete)[0]
    assert conn.pending is complete
    assert complete.envelope.recipients == ("one@example.net", "two@example.net")
    conn.reply_per_recipient(
        complete,
        [Reply(250, "one@ delivered", "2.1.5"), Reply(452, "two@ mailbox full", "4.2.2")],
    )
    out = conn.data_to_send().decode().splitlines()
    assert out == ["250 2.1.5 one@ delivered", "452 4.2.2 two@ mailbox full"]
    assert conn.pending is None
    assert conn.state is State.READY


def test_reply_per_recipient_with_a_wrong_count_raises() -> None:
    conn = lmtp()
    events, _ = send(conn, MAIL + R1 + R2 + b"DATA\r\nhello\r\n.\r\n", holding_complete)
    complete = of_type(events, MessageComplete)[0]
    with pytest.raises(LocalProtocolError):
        conn.reply_per_recipient(complete, [Reply(250, "only one", "2.0.0")])
    assert conn.pending is complete
    assert conn.data_to_send() == b""
    conn.accept(complete)
    assert conn.data_to_send().decode().splitlines() == [ACCEPTED, ACCEPTED]


def test_reply_per_recipient_in_smtp_raises() -> None:
    conn = connect()
    events, _ = send(conn, MAIL + R1 + b"DATA\r\nhello\r\n.\r\n", holding_complete)
    complete = of_type(events, MessageComplete)[0]
    with pytest.raises(LocalProtocolError):
        conn.reply_per_recipient(complete, [Reply(250, "ok", "2.0.0")])
    assert conn.pending is complete


def test_rejected_message_is_answered_per_recipient() -> None:
    conn = lmtp()

    def decide(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, MessageComplete):
            c.reject(event, Reply(451, "Try again", "4.3.0"))
        else:
            c.accept(event)

    _, lines = send(conn, MAIL + R1 + R2 + b"DATA\r\nhello\r\n.\r\n", decide)
    assert lines[-2:] == ["451 4.3.0 Try again", "451 4.3.0 Try again"]


def test_bdat_last_is_answered_per_recipient() -> None:
    """RFC 2033 §4.3 with RFC 3030: BDAT LAST gets one reply per recipient; others one."""
    conn = lmtp()
    data = MAIL + R1 + R2 + R3 + b"BDAT 3\r\nabcBDAT 2 LAST\r\nde"
    events, lines = send(conn, data, reject_two)
    assert lines[-3:] == ["250 2.0.0 3 octets received", ACCEPTED, ACCEPTED]
    assert of_type(events, MessageComplete)[0].envelope.recipients == (
        "one@example.net",
        "three@example.net",
    )


def test_oversized_message_is_refused_per_recipient() -> None:
    conn = lmtp(max_message_size=10)
    _, lines = send(conn, MAIL + R1 + R2 + b"DATA\r\n" + b"x" * 50 + b"\r\n.\r\n")
    too_big = "552 5.3.4 Message size exceeds fixed maximum message size"
    assert lines[-2:] == [too_big, too_big]
    assert lines[-3].startswith("354")


@pytest.mark.parametrize("command", [b"DATA\r\n", b"BDAT 2 LAST\r\nhi"])
def test_no_valid_recipients_in_lmtp_is_503(command: bytes) -> None:
    """RFC 2033 §4.2: with no successful RCPT, DATA MUST fail with a 503 reply code."""
    conn = lmtp()
    _, lines = send(conn, MAIL + R2 + command + b"NOOP\r\n", reject_two)
    assert lines[-2].startswith("503 5.5.1 "), lines
    assert lines[-1] == "250 2.0.0 OK"
