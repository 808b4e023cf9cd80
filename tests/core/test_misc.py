"""NOOP, HELP, VRFY, EXPN, QUIT, unknown commands, reply rendering, API misuse, session facts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtpcore import (
    AuthInfo,
    CloseReason,
    ConnectionClosed,
    DataChunk,
    Envelope,
    Event,
    Greeting,
    Helo,
    LocalProtocolError,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageStart,
    ProtocolViolation,
    RcptTo,
    Reply,
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
    drive,
    kinds,
    of_type,
    rejecting,
    send,
    start_data,
    transcript,
)

OK = "250 2.0.0 OK"
HELP = "214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT"
CANNOT_VRFY = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"NOOP\r\n", OK),
        (b"NOOP with a string\r\n", OK),
        (b"HELP\r\n", HELP),
        (b"HELP MAIL\r\n", HELP),
        (b"VRFY user@example.org\r\n", CANNOT_VRFY),
        (b"VRFY\r\n", "501 5.5.4 Syntax: VRFY address"),
        (b"EXPN staff\r\n", "502 5.5.1 EXPN not available"),
    ],
)
def test_simple_commands(command: bytes, reply: str) -> None:
    """RFC 5321 §4.1.1.6-9, §3.5.3 (252 for VRFY), §7.3 (EXPN may be disabled)."""
    conn = connect()
    _, lines = send(conn, command)
    assert lines == [reply]
    assert conn.state is State.READY


@pytest.mark.parametrize("command", [b"NOOP\r\n", b"HELP\r\n", b"VRFY user\r\n"])
def test_simple_commands_work_before_helo_and_in_a_transaction(command: bytes) -> None:
    conn = connect(ehlo=None)
    assert send(conn, command)[1][0][:3] in {"250", "214", "252"}
    assert conn.state is State.HELO
    conn = connect()
    send(conn, MAIL + RCPT)
    assert send(conn, command)[1][0][:3] in {"250", "214", "252"}
    assert conn.envelope.recipients == ("rcpt@example.net",)


def test_quit() -> None:
    """RFC 5321 §4.1.1.10: 221, then the server closes."""
    conn = connect()
    events, lines = send(conn, b"QUIT\r\n")
    assert lines == ["221 2.0.0 Bye"]
    assert events == [ConnectionClosed(reason=CloseReason.QUIT)]
    assert conn.closed
    assert conn.state is State.CLOSED


def test_quit_in_a_transaction_drops_it() -> None:
    conn = connect()
    send(conn, MAIL + RCPT)
    events, lines = send(conn, b"QUIT\r\n")
    assert lines == ["221 2.0.0 Bye"]
    assert events[-1] == ConnectionClosed(reason=CloseReason.QUIT)


@pytest.mark.parametrize("verb", [b"NOOP", b"noop", b"NoOp", b"nOOP"])
def test_verbs_are_case_insensitive(verb: bytes) -> None:
    assert send(connect(), verb + b"\r\n")[1] == [OK]


def test_full_transcript_case_insensitive() -> None:
    data = b"ehlo c.test\r\nmail from:<a@example.org>\r\nrcpt to:<b@example.net>\r\n"
    data += b"data\r\nhi\r\n.\r\nquit\r\n"
    lines = transcript(data)
    finals = [line[:3] for line in lines if line[3] == " "]
    assert finals == ["220", "250", "250", "250", "354", "250", "221"]


# ---------------------------------------------------------------- unknown commands


def test_unknown_command_reaches_the_application() -> None:
    conn = connect()
    events, lines = send(conn, b"XYZZY magic words\r\n", rejecting(UnknownCommand))
    assert events == [
        UnknownCommand(verb="XYZZY", argument="magic words", line=b"XYZZY magic words")
    ]
    assert lines == ["500 5.5.2 Command unrecognized"]
    assert conn.error_count == 1


def test_unknown_command_verb_is_upper_cased() -> None:
    conn = connect()
    events, _ = send(conn, b"xclient ADDR=192.0.2.1\r\n", rejecting(UnknownCommand))
    assert of_type(events, UnknownCommand)[0].verb == "XCLIENT"


def test_custom_command_answered_by_accept() -> None:
    def decide(conn: SmtpConnection, event: Event) -> None:
        if isinstance(event, UnknownCommand) and event.verb == "XCLIENT":
            conn.accept(event, Reply(250, "XCLIENT accepted", "2.0.0"))
        else:
            conn.accept(event)

    conn = connect()
    _, lines = send(conn, b"XCLIENT ADDR=192.0.2.1\r\nNOOP\r\n", decide)
    assert lines == ["250 2.0.0 XCLIENT accepted", OK]
    assert conn.error_count == 0


def test_custom_command_accepted_with_default_reply() -> None:
    _, lines = send(connect(), b"XFOO\r\n")
    assert lines == [OK]


def test_rejected_unknown_commands_count_towards_the_error_limit() -> None:
    conn = connect(config(max_errors=2))
    events, lines = send(conn, b"FOO\r\nBAR\r\nNOOP\r\n", rejecting(UnknownCommand))
    assert lines == [
        "500 5.5.2 Command unrecognized",
        "500 5.5.2 Command unrecognized",
        "421 4.7.0 Too many errors, closing transmission channel",
    ]
    assert events[-1] == ConnectionClosed(reason=CloseReason.TOO_MANY_ERRORS)


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        (b"\r\n", "500 5.5.2 Syntax error"),
        (b"   \r\n", "500 5.5.2 Syntax error"),
        (b"NOOP\x00\r\n", "500 5.5.2 Invalid character in command"),
        (b"NO\rOP\r\n", "500 5.5.2 Invalid character in command"),
        (b"MAIL FROM:<\xff@example.org>\r\n", "500 5.5.2 Invalid UTF-8 in command"),
    ],
)
def test_garbage_lines_are_500(raw: bytes, reply: str) -> None:
    conn = connect()
    events, lines = send(conn, raw + b"NOOP\r\n")
    assert lines == [reply, OK]
    assert of_type(events, ProtocolViolation)[0].reply.code == 500


def test_bare_lf_command_lines_are_accepted_by_default() -> None:
    assert send(connect(), b"NOOP\nNOOP\r\n")[1] == [OK, OK]


def test_bare_lf_command_refused_in_strict_mode_keeps_sync() -> None:
    conn = connect(config(crlf_mode="strict"))
    events, lines = send(conn, b"NOOP\nNOOP\r\n")
    assert lines == ["500 5.5.2 Command lines must end with CRLF", OK]
    assert kinds(events) == ["ProtocolViolation"]


BYE = Reply(421, "mx.test closing", "4.3.2")


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (MailFrom, MAIL),
        (RcptTo, MAIL + RCPT),
        (MessageStart, MAIL + RCPT + b"DATA\r\n"),
        (MessageComplete, MAIL + RCPT + b"DATA\r\nhi\r\n.\r\n"),
        (UnknownCommand, b"XFOO\r\n"),
        (Helo, EHLO),
    ],
)
def test_rejecting_with_421_sends_it_and_closes(kind: type[Event], data: bytes) -> None:
    """RFC 5321 §3.8: the server sends 421 and closes; later input is not answered."""
    conn = connect()
    events, lines = send(conn, data + b"NOOP\r\n", rejecting(kind, reply=BYE))
    assert lines[-1] == "421 4.3.2 mx.test closing"
    assert events[-1] == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


def test_rejecting_a_data_chunk_with_421_closes_after_the_data() -> None:
    conn = connect()
    start_data(conn)

    def hook(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, DataChunk):
            c.reject(event, BYE)

    events, lines = drive(conn, [b"abc\r\n", b"def\r\n.\r\nNOOP\r\n"], hook)
    assert lines == ["421 4.3.2 mx.test closing"]
    assert events[-1] == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


# ---------------------------------------------------------------- enhanced status codes


def test_enhanced_codes_present_by_default() -> None:
    conn = connect()
    _, lines = send(conn, b"NOOP\r\n" + RCPT + MAIL)
    assert lines == [OK, "503 5.5.1 Need MAIL command", "250 2.1.0 Sender OK"]


def test_enhanced_codes_absent_when_disabled() -> None:
    """RFC 2034: without ENHANCEDSTATUSCODES no reply carries the codes."""
    conn = connect(config(enhanced_status_codes=False))
    data = b"NOOP\r\n" + RCPT + MAIL + RCPT + b"DATA\r\nx\r\n.\r\nFOO\r\n"
    _, lines = send(conn, data, rejecting(UnknownCommand))
    assert lines == [
        "250 OK",
        "503 Need MAIL command",
        "250 Sender OK",
        "250 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 Message accepted",
        "500 Command unrecognized",
    ]


# ---------------------------------------------------------------- Reply


@pytest.mark.parametrize("code", [0, 199, 600, 1000, -250])
def test_reply_code_out_of_range(code: int) -> None:
    with pytest.raises(ValueError):
        Reply(code, "x")


@pytest.mark.parametrize("text", ["a\r\nb", "a\nb", "a\rb", ("ok", "b\r\n250 injected")])
def test_reply_text_with_cr_or_lf(text: str | tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Reply(250, text)


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(250, "5.0.0"), (550, "2.0.0"), (451, "5.3.0"), (550, "4.0.0"), (250, "2.0"), (250, "3.0.0")],
)
def test_reply_enhanced_code_mismatch_or_malformed(code: int, enhanced: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, "x", enhanced)


def test_reply_rendering() -> None:
    assert Reply(250, "OK", "2.0.0").to_bytes() == b"250 2.0.0 OK\r\n"
    assert Reply(250, "OK", "2.0.0").to_bytes(False) == b"250 OK\r\n"
    assert Reply(250, ("first", "second"), "2.0.0").to_bytes() == (
        b"250-2.0.0 first\r\n250 2.0.0 second\r\n"
    )
    assert Reply(550, "caf\u00e9", "5.1.1").to_bytes() == "550 5.1.1 caf\u00e9\r\n".encode()


def test_reply_helpers() -> None:
    reply = Reply(421, "bye", "4.3.2")
    assert reply.closes
    assert not reply.is_positive
    assert Reply(354, "go").is_positive
    assert reply.with_text("later") == Reply(421, "later", "4.3.2")


# ---------------------------------------------------------------- API misuse


def _pending_mail() -> tuple[SmtpConnection, MailFrom]:
    conn = connect()
    conn.receive_data(MAIL)
    event = conn.next_event()
    assert isinstance(event, MailFrom)
    return conn, event


def _snapshot(conn: SmtpConnection) -> tuple[object, ...]:
    return (conn.state, conn.pending, conn.envelope, conn.error_count, conn.helo_name)


MISUSES: list[tuple[str, Callable[[SmtpConnection, MailFrom], None]]] = [
    ("accept a non-pending event", lambda c, e: c.accept(Greeting())),
    ("accept an equal copy", lambda c, e: c.accept(MailFrom(address=e.address))),
    ("reject a non-pending event", lambda c, e: c.reject(Helo(verb="EHLO", domain="x"))),
    ("accept with 5xx", lambda c, e: c.accept(e, Reply(550, "no", "5.0.0"))),
    ("accept with 4xx", lambda c, e: c.accept(e, Reply(451, "later", "4.0.0"))),
    ("reject with 2xx", lambda c, e: c.reject(e, Reply(250, "yes", "2.0.0"))),
    ("reject with 3xx", lambda c, e: c.reject(e, Reply(354, "go"))),
    ("reply_per_recipient in SMTP", lambda c, e: c.reply_per_recipient(e, [])),  # type: ignore[arg-type]
    ("tls_established without STARTTLS", lambda c, e: c.tls_established()),
]


@pytest.mark.parametrize(("what", "misuse"), MISUSES, ids=[m[0] for m in MISUSES])
def test_api_misuse_raises_and_changes_nothing(
    what: str, misuse: Callable[[SmtpConnection, MailFrom], None]
) -> None:
    conn, event = _pending_mail()
    before = _snapshot(conn)
    with pytest.raises(LocalProtocolError):
        misuse(conn, event)
    assert _snapshot(conn) == before
    assert conn.data_to_send() == b""
    conn.accept(event)
    assert conn.data_to_send() == b"250 2.1.0 Sender OK\r\n"


def test_answering_twice_raises() -> None:
    conn, event = _pending_mail()
    conn.accept(event)
    before = _snapshot(conn)
    out = conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.accept(event)
    with pytest.raises(LocalProtocolError):
        conn.reject(event)
    assert _snapshot(conn) == before
    assert out == b"250 2.1.0 Sender OK\r\n"
    assert conn.data_to_send() == b""


def test_rewrite_on_an_event_without_meaning_raises() -> None:
    conn = connect(ehlo=None)
    conn.receive_data(EHLO)
    event = conn.next_event()
    assert isinstance(event, Helo)
    with pytest.raises(LocalProtocolError):
        conn.accept(event, rewrite="other.test")
    assert conn.pending is event
    assert conn.helo_name is None
    assert conn.data_to_send() == b""


def test_receive_data_after_eof_raises() -> None:
    conn = connect()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.PEER_CLOSED)


# ---------------------------------------------------------------- peer EOF


def test_peer_eof_when_idle() -> None:
    conn = connect()
    events, lines = send(conn, [b"NOOP\r\n", b""])
    assert lines == [OK]
    assert events == [ConnectionClosed(reason=CloseReason.PEER_CLOSED)]


def test_peer_eof_mid_data() -> None:
    conn = connect()
    start_data(conn)
    events, lines = send(conn, [b"Subject: x\r\n\r\nhalf", b""])
    assert lines == []
    assert events[-2:] == [
        MessageAborted(reason="peer closed", reply=None),
        ConnectionClosed(reason=CloseReason.PEER_CLOSED),
    ]
    assert not of_type(events, MessageComplete)


def test_peer_eof_after_complete_commands_answers_them_first() -> None:
    conn = connect()
    events, lines = send(conn, [MAIL + b"NOOP\r\n", b""])
    assert lines == ["250 2.1.0 Sender OK", OK]
    assert events[-1] == ConnectionClosed(reason=CloseReason.PEER_CLOSED)


def test_peer_eof_with_a_partial_command_line() -> None:
    conn = connect()
    events, lines = send(conn, [b"NOO", b""])
    assert lines == []
    assert events == [ConnectionClosed(reason=CloseReason.PEER_CLOSED)]


# ---------------------------------------------------------------- session facts


def test_session_facts_through_a_session() -> None:
    cfg = config(auth_mode="optional", allow_insecure_auth=True)
    conn = connect(cfg, ehlo=None)
    assert (conn.helo_name, conn.esmtp, conn.tls_active, conn.auth) == (None, False, False, None)
    assert conn.envelope == Envelope()
    assert conn.message_size == 0
    assert conn.error_count == 0
    send(conn, EHLO + b"AUTH PLAIN AHVzZXIAcGFzcw==\r\nRCPT TO:<x@example.net>\r\n")
    assert conn.helo_name == "client.test"
    assert conn.esmtp is True
    assert conn.auth == AuthInfo("PLAIN", "user", "user")
    assert conn.error_count == 1
    send(conn, MAIL + RCPT)
    assert conn.in_transaction
    assert conn.envelope.sender == "sender@example.org"
    assert conn.envelope.recipients == ("rcpt@example.net",)
    send(conn, b"DATA\r\n")
    events, _ = send(conn, b"12345")
    assert conn.reading_data
    assert conn.message_size == len(content_of(events))
    send(conn, b"67890\r\n.\r\n")
    assert conn.message_size == 12
    assert not conn.in_transaction
    assert conn.envelope == Envelope()
    assert conn.auth is not None  # authentication outlives the transaction


def content_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


def test_tls_active_fact_for_implicit_tls() -> None:
    assert SmtpConnection(config(), tls_active=True).tls_active
    assert not SmtpConnection(config()).tls_active


def test_state_and_closed_facts() -> None:
    conn = SmtpConnection(config())
    assert conn.state is State.GREETING
    assert not conn.closed
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.accept(event)
    assert conn.state is State.HELO
    send(conn, b"QUIT\r\n")
    assert conn.closed
