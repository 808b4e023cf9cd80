"""`SmtpConnection(auto_accept=...)`: decisions the core takes by itself with its default reply."""

from __future__ import annotations

import pytest

from smtpcore import (
    Greeting,
    Helo,
    MailFrom,
    MessageComplete,
    MessageStart,
    RcptTo,
    SmtpConnection,
)
from tests.core._support import EHLO, MAIL, RCPT, config, send

ALL = (Greeting, Helo, MailFrom, RcptTo)
SESSION = [EHLO, MAIL, RCPT, b"RCPT TO:<second@example.net>\r\n", b"DATA\r\n", b"Hi\r\n.\r\n"]


def test_same_replies_without_the_events() -> None:
    by_hand = SmtpConnection(config())
    auto = SmtpConnection(config(), auto_accept=ALL)
    hand_events, hand_replies = send(by_hand, SESSION)
    auto_events, auto_replies = send(auto, SESSION)
    assert auto_replies == hand_replies
    assert hand_replies[0] == "220 mx.test ESMTP ready"
    assert hand_replies[-1] == "250 2.0.0 Message accepted"
    assert [type(e) for e in hand_events if isinstance(e, ALL)] == [
        Greeting,
        Helo,
        MailFrom,
        RcptTo,
        RcptTo,
    ]
    assert not [e for e in auto_events if isinstance(e, ALL)]
    assert [type(e) for e in auto_events if e.needs_reply] == [MessageStart, MessageComplete]


def test_the_envelope_still_records_them() -> None:
    conn = SmtpConnection(config(), auto_accept=ALL)
    events, _ = send(conn, SESSION)
    (complete,) = [e for e in events if isinstance(e, MessageComplete)]
    assert complete.envelope.sender == "sender@example.org"
    assert complete.envelope.recipients == ("rcpt@example.net", "second@example.net")
    assert conn.helo_name == "client.test"


def test_refused_commands_are_still_refused() -> None:
    conn = SmtpConnection(config(), auto_accept=ALL)
    events, replies = send(conn, [EHLO, b"RCPT TO:<x@y.z>\r\n", b"MAIL FROM:<bad\r\n"])
    assert replies[-2].startswith("503 5.5.1")
    assert replies[-1].startswith("501 5.1.7")
    assert not [e for e in events if isinstance(e, ALL)]


def test_only_some_kinds() -> None:
    conn = SmtpConnection(config(), auto_accept=[MailFrom])
    events, _ = send(conn, [EHLO, MAIL, RCPT])
    assert [type(e) for e in events if e.needs_reply] == [Greeting, Helo, RcptTo]


@pytest.mark.parametrize("kind", [MessageStart, MessageComplete, str])
def test_other_kinds_are_a_programming_error(kind: type) -> None:
    with pytest.raises(ValueError, match=kind.__name__):
        SmtpConnection(config(), auto_accept=[MailFrom, kind])
