"""DATA: framing, dot-unstuffing, SMTP smuggling, CRLF modes, size limit, mid-stream rejection."""

from __future__ import annotations

import pytest

from smtpcore import (
    DataChunk,
    Event,
    HeadersComplete,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageStart,
    ProtocolViolation,
    RcptTo,
    Reply,
    SmtpConfig,
    SmtpConnection,
    State,
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
    start_data,
)
from tests.helpers import content, merged

ACCEPTED = "250 2.0.0 Message accepted"
BARE = "550 5.6.0 Message contains bare CR or LF"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
END = b"\r\n.\r\n"
INJECTED = (
    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nforged\r\n"
)


def message(
    body: bytes | list[bytes], cfg: SmtpConfig | None = None
) -> tuple[SmtpConnection, list[Event], list[str]]:
    """Start DATA on a fresh session and feed ``body`` (one chunk or several)."""
    conn = connect(cfg)
    start_data(conn)
    events, lines = send(conn, body)
    return conn, events, lines


def delivered(body: bytes | list[bytes], cfg: SmtpConfig | None = None) -> bytes:
    """The content of an accepted message."""
    _conn, events, lines = message(body, cfg)
    assert lines == [ACCEPTED]
    return content(events)


def test_plain_message_transcript() -> None:
    conn = connect()
    events, lines = send(conn, MAIL + RCPT + b"DATA\r\nSubject: hi\r\n\r\nHello\r\n.\r\n")
    assert lines == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
        ACCEPTED,
    ]
    assert kinds(merged(events)) == [
        "MailFrom",
        "RcptTo",
        "MessageStart",
        "DataChunk",
        "HeadersComplete",
        "DataChunk",
        "MessageComplete",
    ]
    start = of_type(events, MessageStart)[0]
    assert start.command == "DATA"
    assert start.envelope.recipients == ("rcpt@example.net",)
    complete = of_type(events, MessageComplete)[0]
    assert complete.size == len(b"Subject: hi\r\n\r\nHello\r\n")
    assert complete.envelope.sender == "sender@example.org"
    assert content(events) == b"Subject: hi\r\n\r\nHello\r\n"
    assert conn.state is State.READY
    assert conn.message_size == complete.size


def test_state_while_reading_data() -> None:
    conn = connect()
    start_data(conn)
    assert conn.state is State.DATA
    assert conn.reading_data
    assert conn.in_transaction
    send(conn, b"x" + END)
    assert not conn.reading_data
    assert not conn.in_transaction


def test_empty_message() -> None:
    _conn, events, lines = message(b".\r\n")
    assert lines == [ACCEPTED]
    assert kinds(events) == ["HeadersComplete", "MessageComplete"]
    assert of_type(events, MessageComplete)[0].size == 0


def test_data_with_argument_is_501() -> None:
    conn = connect()
    events, lines = send(conn, MAIL + RCPT + b"DATA now\r\n")
    assert lines[-1] == "501 5.5.4 Syntax: DATA"
    assert not of_type(events, MessageStart)
    assert conn.state is State.RCPT


def test_commands_inside_the_message_are_content() -> None:
    body = b"QUIT\r\nRSET\r\n" + INJECTED
    assert delivered(body + END) == body + b"\r\n"


def test_terminator_followed_by_the_next_command() -> None:
    conn, _events, lines = message(b"hi" + END + b"QUIT\r\n")
    assert lines == [ACCEPTED, "221 2.0.0 Bye"]
    assert conn.closed


def test_custom_354_reply() -> None:
    conn = connect()

    def decide(c: SmtpConnection, event: object) -> None:
        if isinstance(event, MessageStart):
            c.accept(event, Reply(354, "Go ahead, end with <CRLF>.<CRLF>"))
        else:
            c.accept(event)  # type: ignore[arg-type]

    _, lines = send(conn, MAIL + RCPT + b"DATA\r\n", decide)
    assert lines[-1] == "354 Go ahead, end with <CRLF>.<CRLF>"


def test_rejected_data_command_keeps_the_envelope() -> None:
    conn = connect()
    _, lines = send(conn, MAIL + RCPT + b"DATA\r\n", rejecting(MessageStart))
    assert lines[-1] == "554 5.0.0 Transaction failed"
    assert conn.state is State.RCPT
    assert conn.envelope.recipients == ("rcpt@example.net",)
    # not reading content: the next line is a command again
    assert send(conn, b"NOOP\r\n")[1] == ["250 2.0.0 OK"]


@pytest.mark.parametrize(
    ("reply", "line"),
    [
        (None, "554 5.0.0 Transaction failed"),
        (Reply(451, "Try later", "4.3.0"), "451 4.3.0 Try later"),
    ],
)
def test_rejected_message(reply: Reply | None, line: str) -> None:
    conn = connect()
    start_data(conn)
    _, lines = send(conn, b"hi" + END, rejecting(MessageComplete, reply=reply))
    assert lines == [line]
    assert conn.state is State.READY
    assert conn.envelope.mail_from is None


# ---------------------------------------------------------------- dot-unstuffing


@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b"..leading\r\n", b".leading\r\n"),
        (b".x\r\n", b"x\r\n"),
        (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n...\r\n", b"a\r\n..\r\n"),
        (b"a\r\n.. \r\n", b"a\r\n. \r\n"),
        (b"a.b\r\n.\r\n", None),  # terminator right after a line: content "a.b\r\n"
        (b"a\r\n. \r\n", b"a\r\n \r\n"),
    ],
)
def test_dot_unstuffing(body: bytes, result: bytes | None) -> None:
    """RFC 5321 §4.5.2: a leading period is removed, also on the first line."""
    if result is None:
        assert delivered(body) == b"a.b\r\n"
    else:
        assert delivered(body + b".\r\n") == result


@pytest.mark.parametrize("split", range(1, 8))
def test_dot_unstuffing_across_reads(split: int) -> None:
    raw = b"a\r\n..b\r\n" + b".\r\n"
    assert delivered([raw[:split], raw[split:]]) == b"a\r\n.b\r\n"


@pytest.mark.parametrize("split", range(1, 5))
def test_terminator_split_across_reads(split: int) -> None:
    raw = b"line" + END
    _conn, events, lines = message([raw[:split], raw[split:]])
    assert lines == [ACCEPTED]
    assert content(events) == b"line\r\n"


def test_message_fed_one_octet_at_a_time() -> None:
    raw = b"Subject: a\r\n\r\n..dot\r\nbody\r\n\r\nmore\r\n.\r\n"
    _, whole, _ = message(raw)
    _, trickle, lines = message([raw[i : i + 1] for i in range(len(raw))])
    assert lines == [ACCEPTED]
    assert merged(trickle) == merged(whole)
    assert content(trickle) == b"Subject: a\r\n\r\n.dot\r\nbody\r\n\r\nmore\r\n"


# ---------------------------------------------------------------- smuggling


SMUGGLING = [
    (b"\n.\n", b"\n.\n"),
    (b"\n.\r\n", b"\n.\r\n"),
    (b"\r.\r\n", b"\r.\r\n"),
    (b"\r\n.\r", b"\r\n\r"),  # a line ".<CR>MAIL..." is unstuffed like any other
    (b"\r\n.\n", b"\r\n\n"),
    (b"\n.\r", b"\n.\r"),
    (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
    (b"\r\n.\x00\r\n", b"\r\n\x00\r\n"),
    (b"\r\n. \r\n", b"\r\n \r\n"),
]


@pytest.mark.parametrize(("fake", "kept"), SMUGGLING)
@pytest.mark.parametrize("mode", ["leave", "normalize"])
def test_only_crlf_dot_crlf_ends_data(fake: bytes, kept: bytes, mode: str) -> None:
    """RFC 5321 §4.1.1.4: data ends at CRLF.CRLF only; look-alikes are content (smuggling)."""
    body = b"Subject: t\r\n\r\nhello" + fake + INJECTED
    _conn, events, lines = message(body + END + b"NOOP\r\n", config(crlf_mode=mode))
    assert lines == [ACCEPTED, "250 2.0.0 OK"]
    assert not of_type(events, MailFrom)
    assert not of_type(events, RcptTo)
    assert len(of_type(events, MessageComplete)) == 1
    data = content(events)
    assert b"evil@attacker.example" in data
    if mode == "leave":
        assert data == b"Subject: t\r\n\r\nhello" + kept + INJECTED + b"\r\n"


@pytest.mark.parametrize(("fake", "kept"), SMUGGLING[:6])
def test_smuggling_attempt_is_refused_in_strict_mode(fake: bytes, kept: bytes) -> None:
    """Every look-alike holds a bare CR or LF: strict mode refuses it once the data ends."""
    body = b"Subject: t\r\n\r\nhello" + fake + INJECTED
    _conn, events, lines = message(body + END + b"NOOP\r\n", config(crlf_mode="strict"))
    assert lines == [BARE, "250 2.0.0 OK"]
    assert not of_type(events, MailFrom)
    assert not of_type(events, MessageComplete)


@pytest.mark.parametrize("fake", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
@pytest.mark.parametrize("mode", ["strict", "normalize", "leave"])
def test_smuggled_terminator_split_across_reads(fake: bytes, mode: str) -> None:
    """Wherever the reads split, a look-alike never ends the data."""
    raw = b"hello" + fake + INJECTED + END
    expected = [BARE] if mode == "strict" else [ACCEPTED]
    for split in range(1, len(raw)):
        _conn, events, lines = message([raw[:split], raw[split:]], config(crlf_mode=mode))
        assert lines == expected, split
        assert not of_type(events, MailFrom), split


# ---------------------------------------------------------------- CRLF modes


def test_normalize_turns_bare_lf_into_crlf() -> None:
    assert delivered(b"a\nb\r\nc\n\r\n.\r\n") == b"a\r\nb\r\nc\r\n\r\n"


def test_normalize_keeps_bare_cr() -> None:
    assert delivered(b"a\rb" + END) == b"a\rb\r\n"


def test_leave_delivers_exactly_what_was_sent() -> None:
    cfg = config(crlf_mode="leave")
    assert delivered(b"a\nb\rc\r\n\n\r\n.\r\n", cfg) == b"a\nb\rc\r\n\n\r\n"


def test_strict_accepts_clean_messages() -> None:
    assert delivered(b"a\r\nb" + END, config(crlf_mode="strict")) == b"a\r\nb\r\n"


@pytest.mark.parametrize("body", [b"a\nb", b"a\rb", b"a\r\rb", b"a\n", b"\n"])
def test_strict_refuses_bare_cr_or_lf_after_the_data_ends(body: bytes) -> None:
    """The 550 5.6.0 comes after CRLF.CRLF: answering mid-DATA would desynchronise."""
    conn = connect(config(crlf_mode="strict"))
    start_data(conn)
    events, lines = send(conn, body + b"\r\nmore text\r\n")
    assert lines == []
    aborted = of_type(events, MessageAborted)
    assert aborted == [MessageAborted(reason="bare CR or LF", reply=aborted[0].reply)]
    assert aborted[0].reply is not None
    assert aborted[0].reply.code == 550
    assert aborted[0].reply.enhanced == "5.6.0"
    assert conn.state is State.DATA
    events, lines = send(conn, b".\r\n")
    assert lines == [BARE]
    assert not of_type(events, MessageComplete)
    assert conn.state is State.READY
    # still in sync: a new transaction works
    assert send(conn, MAIL)[1] == ["250 2.1.0 Sender OK"]


# ---------------------------------------------------------------- size limit


def test_message_at_the_limit_is_accepted() -> None:
    body = b"x" * 98 + b"\r\n"
    assert delivered(body + b".\r\n", config(max_message_size=100)) == body


def test_oversized_message_is_consumed_then_552() -> None:
    """RFC 1870 §6.2: the whole message is read, then 552 5.3.4; the session stays in sync."""
    conn = connect(config(max_message_size=100))
    start_data(conn)
    events, lines = send(conn, [b"x" * 60, b"y" * 60, b"\r\nMAIL FROM:<a@example.org>\r\n"])
    assert lines == []
    assert of_type(events, MessageAborted) == [
        MessageAborted(reason="message too large", reply=Reply(552, TOO_BIG[10:], "5.3.4"))
    ]
    assert conn.state is State.DATA
    events, lines = send(conn, b"z" * 1000 + END + b"NOOP\r\n")
    assert lines == [TOO_BIG, "250 2.0.0 OK"]
    assert not of_type(events, MessageComplete)
    assert not of_type(events, MailFrom)
    assert conn.state is State.READY


def test_delivered_content_never_exceeds_the_limit() -> None:
    _conn, events, lines = message([b"a" * 80, b"b" * 80 + END], config(max_message_size=100))
    assert lines == [TOO_BIG]
    assert len(content(events)) <= 100


# ---------------------------------------------------------------- application rejects content


def test_rejecting_a_chunk_is_answered_after_the_terminator() -> None:
    conn = connect()
    start_data(conn)
    events, lines = send(conn, b"Subject: spam\r\n\r\nbuy now\r\n")
    assert lines == []
    last = [e for e in events if isinstance(e, DataChunk | HeadersComplete)][-1]
    conn.reject(last, Reply(554, "Spam detected", "5.7.1"))
    assert conn.data_to_send() == b""
    events, lines = send(conn, b"more spam\r\n" * 50)
    assert lines == []
    assert kinds(events) == ["MessageAborted"]
    assert events[0] == MessageAborted(
        reason="rejected by the application", reply=Reply(554, "Spam detected", "5.7.1")
    )
    events, lines = send(conn, b"end" + END + b"NOOP\r\n")
    assert lines == ["554 5.7.1 Spam detected", "250 2.0.0 OK"]
    assert not of_type(events, DataChunk)
    assert not of_type(events, MessageComplete)
    assert conn.state is State.READY


def test_rejecting_a_chunk_default_reply_is_451() -> None:
    conn = connect()
    start_data(conn)

    def hook(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, DataChunk):
            c.reject(event)

    events, lines = drive(conn, [b"first\r\n", b"second" + END], hook)
    assert lines == ["451 4.3.0 Requested action aborted: local error in processing"]
    assert len(of_type(events, DataChunk)) == 1


def test_rejecting_headers_complete() -> None:
    """No content is handed out after the application rejected the message."""
    conn = connect()
    start_data(conn)

    def hook(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, HeadersComplete):
            c.reject(event, Reply(550, "Bad headers", "5.6.0"))

    events, lines = drive(conn, [b"X-Bad: 1\r\n\r\nbody\r\n", b"tail" + END], hook)
    assert lines == ["550 5.6.0 Bad headers"]
    assert kinds(events) == ["DataChunk", "HeadersComplete", "MessageAborted"]


def test_rejecting_the_last_chunk_after_the_data_has_ended() -> None:
    """When the terminator is already parsed, the rejection is the answer to the message."""
    conn = connect()
    start_data(conn)

    def hook(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, DataChunk) and event.data.endswith(b"body\r\n"):
            c.reject(event, Reply(550, "Virus found", "5.7.1"))

    events, lines = drive(conn, b"Subject: x\r\n\r\nbody" + END + b"NOOP\r\n", hook)
    assert lines == ["550 5.7.1 Virus found", "250 2.0.0 OK"]
    assert not of_type(events, MessageComplete)
    assert conn.state is State.READY


def test_rejecting_an_older_chunk_raises() -> None:
    from smtpcore import LocalProtocolError

    conn = connect()
    start_data(conn)
    events, _ = send(conn, b"Subject: x\r\n\r\nbody\r\n")
    first = of_type(events, DataChunk)[0]
    with pytest.raises(LocalProtocolError):
        conn.reject(first)
    assert conn.data_to_send() == b""
    assert send(conn, b".\r\n")[1] == [ACCEPTED]


# ---------------------------------------------------------------- HeadersComplete


def _content_events(events: list[Event]) -> list[Event]:
    return [e for e in merged(events) if isinstance(e, DataChunk | HeadersComplete)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b"Subject: a\r\nTo: b\r\n\r\nbody\r\n\r\nmore\r\n",
            [b"Subject: a\r\nTo: b\r\n", None, b"\r\nbody\r\n\r\nmore\r\n"],
        ),
        (b"Subject: a\r\n", [b"Subject: a\r\n", None]),
        (b"\r\nbody only\r\n", [None, b"\r\nbody only\r\n"]),
        (b"Subject: a\r\n\r\n", [b"Subject: a\r\n", None, b"\r\n"]),
    ],
)
def test_headers_complete_once_at_the_empty_line(body: bytes, expected: list[bytes | None]) -> None:
    """`HeadersComplete` comes once, right before the empty line (or at the end)."""
    _conn, events, lines = message(body + b".\r\n")
    assert lines == [ACCEPTED]
    got = [e.data if isinstance(e, DataChunk) else None for e in _content_events(events)]
    assert got == expected
    assert kinds(events)[-1] == "MessageComplete"


def test_headers_complete_with_bare_lf_in_normalize_mode() -> None:
    _conn, events, lines = message(b"Subject: a\n\nbody\r\n.\r\n")
    assert lines == [ACCEPTED]
    got = [e.data if isinstance(e, DataChunk) else None for e in _content_events(events)]
    assert got == [b"Subject: a\r\n", None, b"\r\nbody\r\n"]


@pytest.mark.parametrize("split", range(1, 16))
def test_headers_complete_placement_does_not_depend_on_reads(split: int) -> None:
    raw = b"Subject: a\r\n\r\nbody\r\n.\r\n"
    _conn, events, lines = message([raw[:split], raw[split:]])
    assert lines == [ACCEPTED]
    got = [e.data if isinstance(e, DataChunk) else None for e in _content_events(events)]
    assert got == [b"Subject: a\r\n", None, b"\r\nbody\r\n"]


# ---------------------------------------------------------------- peer and violations


def test_bare_lf_command_lines_are_refused_in_strict_mode() -> None:
    conn = connect(config(crlf_mode="strict"))
    events, lines = send(conn, b"NOOP\n")
    assert lines == ["500 5.5.2 Command lines must end with CRLF"]
    assert of_type(events, ProtocolViolation)


def test_large_message_in_big_reads() -> None:
    line = b"0123456789" * 7 + b"\r\n"
    body = line * 15000  # about 1 MB
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    _conn, events, lines = message([*chunks, END[2:]])
    assert lines == [ACCEPTED]
    assert content(events) == body
    assert of_type(events, MessageComplete)[0].size == len(body)
