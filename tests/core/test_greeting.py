"""The 220 banner, and refusing the session at connect time (RFC 5321 §3.1, §4.3.1)."""

from __future__ import annotations

import pytest

from smtpcore import (
    NEED_DATA,
    PAUSED,
    CloseReason,
    ConnectionClosed,
    Greeting,
    Helo,
    LocalProtocolError,
    ProtocolViolation,
    Reply,
    SmtpConnection,
    State,
)
from tests.core._support import BANNER, EHLO, config, send, transcript
from tests.helpers import feed, replies


def test_greeting_is_the_first_decision_and_nothing_is_sent_before_it() -> None:
    """The banner is only written once the application accepts `Greeting`."""
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    assert conn.pending is event
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert conn.state is State.GREETING
    conn.accept(event)
    assert conn.data_to_send() == b"220 mx.test ESMTP ready\r\n"
    assert conn.state is State.HELO
    assert conn.pending is None
    assert conn.next_event() is NEED_DATA


def test_default_banner() -> None:
    assert transcript([]) == [BANNER]


def test_banner_uses_configured_hostname_and_text() -> None:
    cfg = config(hostname="mail.example.org", greeting="Service ready, no UCE")
    assert transcript([], cfg) == ["220 mail.example.org Service ready, no UCE"]


def test_lmtp_banner() -> None:
    assert transcript([], config(lmtp=True)) == ["220 mx.test LMTP ready"]


def test_banner_carries_no_enhanced_code() -> None:
    """RFC 2034 §3: enhanced codes are not used in the initial greeting."""
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.accept(event, Reply(220, "mx.test custom banner", "2.0.0"))
    assert conn.data_to_send() == b"220 mx.test custom banner\r\n"


def test_multiline_custom_banner() -> None:
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.accept(event, Reply(220, ("mx.test ESMTP", "no UCE")))
    assert replies(conn.data_to_send()) == ["220-mx.test ESMTP", "220 no UCE"]


def test_input_before_the_banner_is_answered_after_it() -> None:
    """Bytes the client sends early are not parsed until the greeting is decided."""
    conn = SmtpConnection(config())
    greeting = conn.next_event()
    assert isinstance(greeting, Greeting)
    conn.receive_data(EHLO)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.accept(greeting)
    events, out = feed(conn, [])
    assert [type(e) for e in events] == [Helo]
    lines = replies(out)
    assert lines[0] == BANNER
    assert lines[1] == "250-mx.test greets client.test"


def _refuse(reply: Reply | None = None) -> SmtpConnection:
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.reject(event, reply)
    return conn


def test_refused_with_554_by_default() -> None:
    conn = _refuse()
    assert conn.data_to_send() == b"554 5.3.2 No SMTP service here\r\n"
    assert conn.state is State.REFUSED
    assert not conn.closed


@pytest.mark.parametrize(
    "command",
    [EHLO, b"HELO client.test\r\n", b"MAIL FROM:<a@example.org>\r\n", b"NOOP\r\n", b"RSET\r\n"],
)
def test_refused_session_answers_503_to_all_but_quit(command: bytes) -> None:
    """RFC 5321 §3.1: after 554 the server waits for QUIT and answers others with 503."""
    conn = _refuse()
    conn.data_to_send()
    events, lines = send(conn, command)
    assert lines == ["503 5.5.1 No service here, send QUIT"]
    assert [type(e) for e in events] == [ProtocolViolation]
    assert conn.state is State.REFUSED


def test_refused_session_serves_quit() -> None:
    conn = _refuse()
    conn.data_to_send()
    events, lines = send(conn, b"QUIT\r\n")
    assert lines == ["221 2.0.0 Bye"]
    assert events == [ConnectionClosed(reason=CloseReason.QUIT)]
    assert conn.closed


def test_refused_session_hits_the_error_limit() -> None:
    conn = SmtpConnection(config(max_errors=2))
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.reject(event)
    conn.data_to_send()
    events, lines = send(conn, b"NOOP\r\nNOOP\r\nNOOP\r\n")
    assert lines == [
        "503 5.5.1 No service here, send QUIT",
        "503 5.5.1 No service here, send QUIT",
        "421 4.7.0 Too many errors, closing transmission channel",
    ]
    assert events[-1] == ConnectionClosed(reason=CloseReason.TOO_MANY_ERRORS)


def test_refused_with_421_closes_at_once() -> None:
    conn = _refuse(Reply(421, "mx.test Service not available", "4.3.2"))
    assert conn.data_to_send() == b"421 4.3.2 mx.test Service not available\r\n"
    assert conn.closed
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.REFUSED)
    conn.receive_data(EHLO)  # ignored: the session is over
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.REFUSED)
    assert conn.data_to_send() == b""


def test_refusal_without_enhanced_codes() -> None:
    conn = SmtpConnection(config(enhanced_status_codes=False))
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.reject(event)
    assert conn.data_to_send() == b"554 No SMTP service here\r\n"


def test_greeting_rejected_with_positive_reply_raises() -> None:
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    with pytest.raises(LocalProtocolError):
        conn.reject(event, Reply(220, "hello"))
    assert conn.pending is event
    assert conn.state is State.GREETING
    assert conn.data_to_send() == b""


def test_greeting_accepted_with_negative_reply_raises() -> None:
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    with pytest.raises(LocalProtocolError):
        conn.accept(event, Reply(554, "no"))
    assert conn.pending is event
    assert conn.data_to_send() == b""


def test_peer_closing_before_the_banner_decision() -> None:
    """EOF while the greeting is pending: the core waits for the decision, then closes."""
    conn = SmtpConnection(config())
    event = conn.next_event()
    assert isinstance(event, Greeting)
    conn.receive_data(b"")
    assert conn.next_event() is PAUSED
    conn.accept(event)
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.PEER_CLOSED)
    assert replies(conn.data_to_send()) == [BANNER]
