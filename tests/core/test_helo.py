"""HELO and EHLO: greeting replies, the extension list, syntax and refusal (RFC 5321 §4.1.1.1)."""

from __future__ import annotations

from typing import Any

import pytest

from smtpcore import (
    CloseReason,
    ConnectionClosed,
    Helo,
    MailFrom,
    ProtocolViolation,
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
    of_type,
    rejecting,
    send,
    transcript,
)

DEFAULT_EHLO = [
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


def ehlo_lines(**kwargs: Any) -> list[str]:
    """The EHLO reply of a fresh session configured with ``kwargs``."""
    conn = connect(config(**kwargs), ehlo=None)
    return send(conn, EHLO)[1]


def keywords(lines: list[str]) -> list[str]:
    """The EHLO keywords (first word of every line but the greeting line)."""
    return [line[4:].split(" ")[0] for line in lines[1:]]


def test_helo_reply_has_no_extension_list_nor_enhanced_code() -> None:
    conn = connect(ehlo=None)
    events, lines = send(conn, b"HELO client.test\r\n")
    assert lines == ["250 mx.test greets client.test"]
    assert events == [Helo(verb="HELO", domain="client.test")]
    assert conn.helo_name == "client.test"
    assert conn.esmtp is False
    assert conn.state is State.READY


def test_ehlo_reply_lists_every_default_extension() -> None:
    conn = connect(ehlo=None)
    events, lines = send(conn, EHLO)
    assert lines == DEFAULT_EHLO
    assert events == [Helo(verb="EHLO", domain="client.test")]
    assert conn.helo_name == "client.test"
    assert conn.esmtp is True


def test_lowercase_verbs_work() -> None:
    conn = connect(ehlo=None)
    events, lines = send(conn, b"ehlo client.test\r\n")
    assert lines == DEFAULT_EHLO
    assert events == [Helo(verb="EHLO", domain="client.test")]


@pytest.mark.parametrize(
    ("setting", "keyword"),
    [
        ({"pipelining": False}, "PIPELINING"),
        ({"size_extension": False}, "SIZE"),
        ({"eightbitmime": False, "smtputf8": False}, "8BITMIME SMTPUTF8"),
        ({"smtputf8": False}, "SMTPUTF8"),
        ({"enhanced_status_codes": False}, "ENHANCEDSTATUSCODES"),
        ({"binarymime": False}, "BINARYMIME"),
        ({"dsn": False}, "DSN"),
    ],
)
def test_disabled_extension_is_not_advertised(setting: dict[str, bool], keyword: str) -> None:
    lines = ehlo_lines(**setting)
    expected = [k for k in keywords(DEFAULT_EHLO) if k not in keyword.split()]
    assert keywords(lines) == expected


def test_no_chunking_means_no_binarymime() -> None:
    """RFC 3030 §3: BINARYMIME is only defined together with CHUNKING."""
    lines = ehlo_lines(chunking=False)
    assert "CHUNKING" not in keywords(lines)
    assert "BINARYMIME" not in keywords(lines)


def test_size_keyword_carries_the_limit() -> None:
    assert "250-SIZE 1000" in ehlo_lines(max_message_size=1000)


def test_size_keyword_without_limit() -> None:
    """RFC 1870 §4: SIZE with no number means no fixed limit."""
    assert "250-SIZE" in ehlo_lines(max_message_size=None)


def test_smtputf8_is_only_advertised_with_8bitmime() -> None:
    """RFC 6531 §3.1: a server offering SMTPUTF8 MUST also announce 8BITMIME.

    So turning 8BITMIME off must either be refused by the configuration or withdraw SMTPUTF8.
    """
    try:
        lines = ehlo_lines(eightbitmime=False)
    except ValueError:
        return
    words = keywords(lines)
    assert "SMTPUTF8" not in words or "8BITMIME" in words, lines


@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[IPv6:2001:db8::1]", "mail-1.client.example"])
def test_ehlo_accepts_domains_and_address_literals(literal: str) -> None:
    conn = connect(ehlo=None)
    events, lines = send(conn, f"EHLO {literal}\r\n".encode())
    assert lines[0] == f"250-mx.test greets {literal}"
    assert events == [Helo(verb="EHLO", domain=literal)]


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
@pytest.mark.parametrize("argument", ["", " ", " two words"])
def test_missing_or_extra_argument_is_501(verb: str, argument: str) -> None:
    conn = connect(ehlo=None)
    events, lines = send(conn, f"{verb}{argument}\r\n".encode())
    assert lines == [f"501 5.5.4 Syntax: {verb} hostname"]
    assert [type(e) for e in events] == [ProtocolViolation]
    assert conn.state is State.HELO
    assert conn.helo_name is None
    assert send(conn, MAIL)[1] == ["503 5.5.1 Send HELO/EHLO first"]


def test_rejected_helo_leaves_the_session_ungreeted() -> None:
    conn = connect(ehlo=None)
    _, lines = send(conn, EHLO, rejecting(Helo))
    assert lines == ["550 5.7.1 Access denied"]
    assert conn.helo_name is None
    assert conn.state is State.HELO
    _, lines = send(conn, MAIL)
    assert lines == ["503 5.5.1 Send HELO/EHLO first"]


def test_helo_rejected_with_421_closes() -> None:
    bye = Reply(421, "mx.test go away", "4.7.0")
    conn = connect(ehlo=None)
    events, lines = send(conn, EHLO + b"NOOP\r\n", rejecting(Helo, reply=bye))
    assert lines == ["421 4.7.0 mx.test go away"]
    assert events[-1] == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


def test_custom_ehlo_reply() -> None:
    conn = connect(ehlo=None)

    def decide(c: SmtpConnection, event: object) -> None:
        assert isinstance(event, Helo)
        c.accept(event, Reply(250, ("mx.test hi", "PIPELINING")))

    _, lines = send(conn, EHLO, decide)
    assert lines == ["250-mx.test hi", "250 PIPELINING"]


def test_second_ehlo_and_helo_are_allowed() -> None:
    conn = connect()
    _, lines = send(conn, b"EHLO other.test\r\n")
    assert lines[0] == "250-mx.test greets other.test"
    assert conn.helo_name == "other.test"
    assert conn.esmtp is True
    _, lines = send(conn, b"HELO third.test\r\n")
    assert lines == ["250 mx.test greets third.test"]
    assert conn.helo_name == "third.test"
    assert conn.esmtp is False
    _, lines = send(conn, b"EHLO fourth.test\r\n")
    assert conn.esmtp is True


@pytest.mark.parametrize("command", [b"EHLO again.test\r\n", b"HELO again.test\r\n"])
def test_greeting_again_in_a_transaction_resets_it(command: bytes) -> None:
    """RFC 5321 §4.1.4: a later HELO/EHLO resets the state exactly like RSET."""
    conn = connect()
    send(conn, MAIL + RCPT)
    assert conn.in_transaction
    events, lines = send(conn, command)
    assert lines[-1].startswith("250")
    assert of_type(events, Reset) == [Reset()]
    assert conn.envelope.mail_from is None
    assert not conn.in_transaction
    _, lines = send(conn, b"DATA\r\n")
    assert lines == ["503 5.5.1 Need MAIL command"]


def test_greeting_again_outside_a_transaction_emits_no_reset() -> None:
    conn = connect()
    events, _ = send(conn, EHLO)
    assert of_type(events, Reset) == []


def test_lhlo_is_unknown_in_smtp() -> None:
    conn = connect(ehlo=None)
    events, lines = send(conn, b"LHLO client.test\r\n", rejecting(UnknownCommand))
    assert lines == ["500 5.5.2 Command unrecognized"]
    assert events == [UnknownCommand(verb="LHLO", argument="client.test", line=b"LHLO client.test")]
    assert conn.helo_name is None


def test_mail_after_helo_works() -> None:
    conn = connect(ehlo=b"HELO client.test\r\n")
    events, lines = send(conn, MAIL)
    assert lines == ["250 2.1.0 Sender OK"]
    assert of_type(events, MailFrom)[0].address == "sender@example.org"


def test_helo_before_banner_transcript() -> None:
    lines = transcript(b"HELO client.test\r\nQUIT\r\n")
    assert lines == [
        "220 mx.test ESMTP ready",
        "250 mx.test greets client.test",
        "221 2.0.0 Bye",
    ]
