"""Line and buffer limits, timeouts and server-side close (RFC 5321 §4.5.3, §3.8)."""

from __future__ import annotations

import pytest

from smtpcore import (
    CloseReason,
    ConnectionClosed,
    LocalProtocolError,
    MessageAborted,
    MessageComplete,
    ProtocolViolation,
    Reply,
    SmtpConnection,
    State,
)
from tests.core._support import MAIL, RCPT, config, connect, of_type, send, start_data

TOO_LONG = "500 5.5.6 Line too long"
OVERFLOW = "421 4.7.0 Line too long, closing transmission channel"
TIMEOUT = "421 4.4.2 Timeout exceeded, closing transmission channel"
SHUTDOWN = "421 4.3.2 Service shutting down, closing transmission channel"
OK = "250 2.0.0 OK"


def noop_of_length(total: int) -> bytes:
    """A NOOP command line of exactly ``total`` octets, CRLF included."""
    return b"NOOP " + b"x" * (total - 7) + b"\r\n"


def test_line_at_the_limit_is_accepted() -> None:
    """RFC 5321 §4.5.3.1.4: the limit counts the CRLF (default 2048 octets here)."""
    conn = connect()
    assert send(conn, noop_of_length(2048))[1] == [OK]
    assert conn.error_count == 0


def test_line_over_the_limit_is_500_5_5_6() -> None:
    conn = connect()
    _, lines = send(conn, noop_of_length(2049))
    assert lines == [TOO_LONG]
    assert conn.error_count == 1
    assert not conn.closed


def test_line_too_long_emits_a_violation() -> None:
    conn = connect()
    events, _ = send(conn, noop_of_length(3000))
    assert [type(e) for e in events] == [ProtocolViolation]


def test_session_stays_in_sync_after_a_long_line() -> None:
    """Only the long line is refused; the command pipelined after it is answered too."""
    conn = connect()
    long_mail = b"MAIL FROM:<" + b"a" * 3000 + b"@example.org>\r\n"
    _, lines = send(conn, long_mail + b"NOOP\r\n")
    assert lines == [TOO_LONG, OK]
    assert conn.state is State.READY


@pytest.mark.parametrize("piece", [100, 700, 1500, 4000])
def test_long_line_arriving_in_pieces(piece: int) -> None:
    conn = connect()
    raw = b"MAIL FROM:<" + b"a" * 5000 + b"@example.org>\r\nNOOP\r\n"
    _, lines = send(conn, [raw[i : i + piece] for i in range(0, len(raw), piece)])
    assert lines == [TOO_LONG, OK]
    assert conn.envelope.mail_from is None


def test_long_line_then_next_command_in_a_later_read() -> None:
    conn = connect()
    _, lines = send(conn, [noop_of_length(3000), b"NOOP\r\n"])
    assert lines == [TOO_LONG, OK]


def test_unterminated_input_beyond_the_buffer_limit_closes() -> None:
    cfg = config(max_line_length=512, max_auth_line_length=512, max_buffer_size=1024)
    conn = connect(cfg)
    events, lines = send(conn, [b"A" * 400] * 5)
    assert lines == [OVERFLOW]
    assert events[-1] == ConnectionClosed(reason=CloseReason.BUFFER_OVERFLOW)
    assert conn.closed


def test_unterminated_input_in_one_read_closes() -> None:
    cfg = config(max_line_length=512, max_auth_line_length=512, max_buffer_size=1024)
    conn = connect(cfg)
    events, lines = send(conn, b"A" * 5000)
    assert lines == [OVERFLOW]
    assert events[-1] == ConnectionClosed(reason=CloseReason.BUFFER_OVERFLOW)


def test_long_unterminated_input_below_the_buffer_limit_waits() -> None:
    cfg = config(max_line_length=512, max_auth_line_length=512, max_buffer_size=4096)
    conn = connect(cfg)
    _, lines = send(conn, [b"A" * 1000, b"A" * 1000])
    assert lines == []
    assert not conn.closed
    _, lines = send(conn, b"\r\nNOOP\r\n")
    assert lines == [TOO_LONG, OK]


def test_message_content_is_not_bound_by_the_line_limits() -> None:
    cfg = config(max_line_length=512, max_auth_line_length=512, max_buffer_size=1024)
    conn = connect(cfg)
    start_data(conn)
    events, lines = send(conn, [b"x" * 3000, b"y" * 3000, b"\r\n.\r\n"])
    assert lines == ["250 2.0.0 Message accepted"]
    assert of_type(events, MessageComplete)[0].size == 6002


# ---------------------------------------------------------------- timeouts and close


def test_timed_out_sends_421_4_4_2() -> None:
    """RFC 5321 §4.5.3.2: on a timeout the server closes, with 421 if it can."""
    conn = connect()
    conn.timed_out()
    assert conn.data_to_send().decode() == TIMEOUT + "\r\n"
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.TIMEOUT)
    assert conn.closed


def test_timed_out_during_data_aborts_the_message() -> None:
    conn = connect()
    start_data(conn)
    send(conn, b"partial")
    conn.timed_out()
    assert conn.next_event() == MessageAborted(
        reason="timeout", reply=Reply(421, TIMEOUT[10:], "4.4.2")
    )
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.TIMEOUT)


def test_close_sends_421_4_3_2() -> None:
    conn = connect()
    conn.close()
    assert conn.data_to_send().decode() == SHUTDOWN + "\r\n"
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


def test_close_aborts_a_message_in_progress() -> None:
    conn = connect()
    start_data(conn)
    send(conn, b"Subject: x\r\n\r\nhalf a message")
    conn.close()
    aborted = conn.next_event()
    assert isinstance(aborted, MessageAborted)
    assert aborted.reason == "server closed"
    assert aborted.reply is not None and aborted.reply.code == 421
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)
    assert conn.data_to_send().decode() == SHUTDOWN + "\r\n"


def test_close_aborts_a_message_between_chunks() -> None:
    conn = connect()
    send(conn, MAIL + RCPT + b"BDAT 3\r\nabc")
    conn.close()
    assert isinstance(conn.next_event(), MessageAborted)


def test_close_while_the_message_decision_is_pending() -> None:
    conn = connect()
    start_data(conn)
    conn.receive_data(b"hi\r\n.\r\n")
    while not isinstance(conn.next_event(), MessageComplete):
        pass
    conn.close()
    assert conn.pending is None
    assert isinstance(conn.next_event(), MessageAborted)
    assert isinstance(conn.next_event(), ConnectionClosed)  # the message is aborted once
    assert conn.data_to_send().decode() == SHUTDOWN + "\r\n"


def test_close_outside_a_message_emits_no_abort() -> None:
    conn = connect()
    send(conn, MAIL)
    conn.close()
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


def test_close_with_a_custom_or_no_reply() -> None:
    conn = connect()
    conn.close(Reply(421, "mx.test maintenance", "4.3.2"))
    assert conn.data_to_send() == b"421 4.3.2 mx.test maintenance\r\n"
    conn = connect()
    conn.close(None)
    assert conn.data_to_send() == b""
    assert conn.closed


def test_close_twice_does_nothing() -> None:
    conn = connect()
    conn.close()
    conn.data_to_send()
    conn.close()
    conn.timed_out()
    assert conn.data_to_send() == b""
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


def test_input_after_close_is_ignored() -> None:
    conn = connect()
    conn.close()
    conn.data_to_send()
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)
    assert conn.data_to_send() == b""


def test_receive_after_eof_raises() -> None:
    conn: SmtpConnection = connect()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"NOOP\r\n")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"")
