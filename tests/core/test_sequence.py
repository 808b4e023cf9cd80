"""Command order (RFC 5321 §4.1.4, §4.3.2): 503s, resets, recipient limits, error limit."""

from __future__ import annotations

import pytest

from smtpcore import (
    CloseReason,
    ConnectionClosed,
    MailFrom,
    MessageComplete,
    ProtocolViolation,
    RcptTo,
    Reply,
    Reset,
    SmtpConnection,
    State,
    UnknownCommand,
)
from tests.core._support import (
    EHLO,
    MAIL,
    RCPT,
    config,
    connect,
    kinds,
    of_type,
    rejecting,
    send,
    transcript,
)

SEND_HELO = "503 5.5.1 Send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Need MAIL command"
NEED_RCPT = "503 5.5.1 Need RCPT command"
NESTED = "503 5.5.1 Nested MAIL command"
OK = "250 2.0.0 OK"
AUTH = b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"


def after(setup: bytes, cfg_auth: bool = False) -> SmtpConnection:
    """A connection past the banner that has run ``setup`` (all accepted)."""
    cfg = config(auth_mode="optional", allow_insecure_auth=True) if cfg_auth else config()
    conn = connect(cfg, ehlo=None)
    if setup:
        send(conn, setup)
    return conn


@pytest.mark.parametrize(
    ("setup", "command", "reply"),
    [
        (b"", MAIL, SEND_HELO),
        (b"", RCPT, SEND_HELO),
        (b"", b"DATA\r\n", SEND_HELO),
        (b"", b"BDAT 3 LAST\r\nabc", SEND_HELO),
        (EHLO, RCPT, NEED_MAIL),
        (EHLO, b"DATA\r\n", NEED_MAIL),
        (EHLO, b"BDAT 3 LAST\r\nabc", NEED_MAIL),
        (EHLO + MAIL, b"DATA\r\n", NEED_RCPT),
        (EHLO + MAIL, b"BDAT 3 LAST\r\nabc", NEED_RCPT),
        (EHLO + MAIL, MAIL, NESTED),
        (EHLO + MAIL + RCPT, MAIL, NESTED),
    ],
)
def test_out_of_order_command_is_503_5_5_1(setup: bytes, command: bytes, reply: str) -> None:
    """RFC 5321 §4.1.4 and §4.3.2: commands out of sequence get 503 and change nothing."""
    conn = after(setup)
    state, envelope = conn.state, conn.envelope
    events, lines = send(conn, command)
    assert lines == [reply]
    violations = of_type(events, ProtocolViolation)
    assert [str(v.reply.code) + " " + (v.reply.enhanced or "") for v in violations] == ["503 5.5.1"]
    assert not of_type(events, MailFrom) and not of_type(events, RcptTo)
    assert conn.state is state
    assert conn.envelope == envelope
    assert conn.error_count == 1
    assert send(conn, b"NOOP\r\n")[1] == [OK]


def test_violation_event_carries_the_line() -> None:
    conn = after(EHLO)
    events, _ = send(conn, b"RCPT TO:<r@example.net>\r\n")
    reply = Reply(503, "Need MAIL command", "5.5.1")
    assert events == [ProtocolViolation(reply=reply, line=b"RCPT TO:<r@example.net>")]


def test_auth_before_ehlo_is_503() -> None:
    conn = after(b"", cfg_auth=True)
    assert send(conn, AUTH)[1] == [SEND_HELO]


def test_rset_drops_the_transaction() -> None:
    """RFC 5321 §4.1.1.5: RSET clears sender, recipients and data."""
    conn = after(EHLO + MAIL + RCPT)
    assert conn.in_transaction
    events, lines = send(conn, b"RSET\r\n")
    assert lines == [OK]
    assert events == [Reset()]
    assert conn.envelope.mail_from is None
    assert conn.envelope.rcpt_tos == ()
    assert conn.state is State.READY
    assert not conn.in_transaction
    assert send(conn, b"DATA\r\n")[1] == [NEED_MAIL]


def test_rset_after_mail_only_also_resets() -> None:
    conn = after(EHLO + MAIL)
    events, lines = send(conn, b"RSET\r\n")
    assert lines == [OK]
    assert events == [Reset()]


def test_rset_without_transaction_emits_no_reset() -> None:
    conn = after(EHLO)
    events, lines = send(conn, b"RSET\r\n")
    assert lines == [OK]
    assert events == []
    assert conn.state is State.READY


def test_rset_before_helo_keeps_the_session_ungreeted() -> None:
    conn = after(b"")
    assert send(conn, b"RSET\r\n")[1] == [OK]
    assert conn.state is State.HELO
    assert send(conn, MAIL)[1] == [SEND_HELO]


def test_rset_with_argument_is_501() -> None:
    conn = after(EHLO + MAIL)
    events, lines = send(conn, b"RSET now\r\n")
    assert lines == ["501 5.5.4 Syntax: RSET"]
    assert conn.state is State.MAIL
    assert of_type(events, Reset) == []


@pytest.mark.parametrize("greeting", [EHLO, b"HELO client.test\r\n"])
def test_new_greeting_resets_the_transaction(greeting: bytes) -> None:
    conn = after(EHLO + MAIL + RCPT)
    events, lines = send(conn, greeting)
    assert lines[-1].startswith("250 ")
    assert kinds(events) == ["Helo", "Reset"]
    assert conn.envelope.mail_from is None
    assert send(conn, RCPT)[1] == [NEED_MAIL]


def test_second_greetings_are_allowed() -> None:
    lines = transcript(EHLO + b"HELO client.test\r\n" + EHLO + MAIL)
    assert [line[:4] for line in lines if line[3] == " "] == [
        "220 ",
        "250 ",
        "250 ",
        "250 ",
        "250 ",
    ]


def test_a_new_transaction_after_a_message() -> None:
    conn = after(EHLO)
    _, lines = send(conn, MAIL + RCPT + b"DATA\r\nhi\r\n.\r\n")
    assert lines[-1] == "250 2.0.0 Message accepted"
    assert conn.state is State.READY
    assert conn.envelope.mail_from is None
    assert send(conn, RCPT)[1] == [NEED_MAIL]
    _, lines = send(conn, b"MAIL FROM:<next@example.org>\r\n")
    assert lines == ["250 2.1.0 Sender OK"]
    assert conn.envelope.sender == "next@example.org"
    assert conn.envelope.rcpt_tos == ()


def test_a_rejected_message_also_ends_the_transaction() -> None:
    conn = after(EHLO)
    _, lines = send(conn, MAIL + RCPT + b"DATA\r\nhi\r\n.\r\n", rejecting(MessageComplete))
    assert lines[-1] == "554 5.0.0 Transaction failed"
    assert conn.state is State.READY
    assert send(conn, b"DATA\r\n")[1] == [NEED_MAIL]


# ---------------------------------------------------------------- recipients


def test_recipient_limit_gives_452_4_5_3() -> None:
    """RFC 5321 §4.5.3.1.10: past the recipient limit, 452 and the client goes on."""
    conn = connect(config(max_recipients=2))
    rcpts = b"".join(f"RCPT TO:<r{i}@example.net>\r\n".encode() for i in range(4))
    events, lines = send(conn, MAIL + rcpts + b"DATA\r\nhi\r\n.\r\n")
    assert lines == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
        "452 4.5.3 Too many recipients",
        "452 4.5.3 Too many recipients",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Message accepted",
    ]
    assert len(of_type(events, RcptTo)) == 2
    complete = of_type(events, MessageComplete)[0]
    assert complete.envelope.recipients == ("r0@example.net", "r1@example.net")
    assert conn.error_count == 0


@pytest.mark.parametrize("command", [b"DATA\r\n", b"BDAT 2 LAST\r\nhi"])
def test_no_valid_recipients_is_554(command: bytes) -> None:
    """RFC 5321 §3.3: when every RCPT was rejected, DATA may get 554 "no valid recipients"."""
    conn = after(EHLO)
    _, lines = send(conn, MAIL + RCPT + RCPT + command, rejecting(RcptTo))
    assert lines == [
        "250 2.1.0 Sender OK",
        "550 5.1.1 Requested action not taken: mailbox unavailable",
        "550 5.1.1 Requested action not taken: mailbox unavailable",
        "554 5.5.1 No valid recipients",
    ]
    assert conn.state is State.MAIL
    assert send(conn, b"NOOP\r\n")[1] == [OK]


def test_one_valid_recipient_is_enough() -> None:
    conn = after(EHLO)
    decided: list[str] = []

    def decide(c: SmtpConnection, event: object) -> None:
        if isinstance(event, RcptTo) and not decided:
            decided.append(event.address)
            c.reject(event)
        else:
            c.accept(event)  # type: ignore[arg-type]

    _, lines = send(conn, MAIL + RCPT + b"RCPT TO:<ok@example.net>\r\nDATA\r\n", decide)
    assert lines[-1] == "354 End data with <CR><LF>.<CR><LF>"
    assert conn.envelope.recipients == ("ok@example.net",)


# ---------------------------------------------------------------- error limit


def test_hard_error_limit_closes_with_421() -> None:
    """Postfix-style hard limit: the error that reaches it is answered, then 421 and close."""
    conn = connect(config(max_errors=3))
    events, lines = send(conn, RCPT + b"DATA\r\nFOO\r\nNOOP\r\n", rejecting(UnknownCommand))
    assert lines == [
        NEED_MAIL,
        NEED_MAIL,
        "500 5.5.2 Command unrecognized",
        "421 4.7.0 Too many errors, closing transmission channel",
    ]
    assert events[-1] == ConnectionClosed(reason=CloseReason.TOO_MANY_ERRORS)
    assert conn.closed
    assert conn.error_count == 3


def test_errors_below_the_limit_are_counted() -> None:
    conn = connect(config(max_errors=5))
    send(conn, RCPT + b"MAIL\r\nVRFY\r\n")
    assert conn.error_count == 3
    assert not conn.closed


def test_successful_commands_do_not_reset_the_error_count() -> None:
    conn = connect(config(max_errors=2))
    send(conn, RCPT + b"NOOP\r\n")
    assert not conn.closed
    _, lines = send(conn, RCPT)
    assert lines[-1] == "421 4.7.0 Too many errors, closing transmission channel"
    assert conn.closed
