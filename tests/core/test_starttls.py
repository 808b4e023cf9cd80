"""STARTTLS (RFC 3207): modes, the upgrade, command injection, and the fresh session after it."""

from __future__ import annotations

from typing import Any

import pytest

from smtpcore import (
    PAUSED,
    AuthInfo,
    CloseReason,
    ConnectionClosed,
    LocalProtocolError,
    MailFrom,
    Reply,
    SmtpConfig,
    SmtpConnection,
    StartTls,
    State,
    TlsUpgrade,
)
from tests.core._support import EHLO, MAIL, RCPT, config, connect, of_type, rejecting, send

READY_TLS = "220 2.0.0 Ready to start TLS"
TLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
OPTIONAL: dict[str, Any] = {"tls_mode": "optional"}
REQUIRED: dict[str, Any] = {"tls_mode": "required"}


def keywords(conn: SmtpConnection) -> list[str]:
    return [x[4:] for x in send(conn, EHLO)[1][1:]]


def upgrade(conn: SmtpConnection, extra: bytes = b"") -> TlsUpgrade:
    """Send STARTTLS (plus ``extra`` in the same write) and return the `TlsUpgrade`."""
    events, lines = send(conn, b"STARTTLS\r\n" + extra)
    assert lines == [READY_TLS]
    assert [type(e) for e in events] == [StartTls, TlsUpgrade]
    assert conn.state is State.TLS_HANDSHAKE
    assert conn.next_event() is PAUSED
    return of_type(events, TlsUpgrade)[0]


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_starttls_is_advertised_when_enabled(mode: str) -> None:
    conn = connect(config(tls_mode=mode), ehlo=None)
    assert "STARTTLS" in keywords(conn)


def test_starttls_is_not_advertised_when_forbidden() -> None:
    conn = connect(ehlo=None)
    assert "STARTTLS" not in keywords(conn)


def test_forbidden_mode_answers_502() -> None:
    _, lines = send(connect(), b"STARTTLS\r\n")
    assert lines == ["502 5.5.1 STARTTLS not available"]


def test_upgrade_and_fresh_session() -> None:
    """RFC 3207 §4.2: after the handshake the client must EHLO again; nothing is kept."""
    conn = connect(config(**OPTIONAL))
    assert upgrade(conn) == TlsUpgrade(discarded=0)
    assert conn.data_to_send() == b""
    conn.tls_established()
    assert conn.tls_active
    assert conn.state is State.HELO
    assert conn.helo_name is None
    assert conn.esmtp is False
    _, lines = send(conn, MAIL)
    assert lines == ["503 5.5.1 Send HELO/EHLO first"]
    words = keywords(conn)
    assert "STARTTLS" not in words
    assert conn.helo_name == "client.test"
    _, lines = send(conn, MAIL)
    assert lines == ["250 2.1.0 Sender OK"]


def test_receive_data_during_the_handshake_raises() -> None:
    conn = connect(config(**OPTIONAL))
    upgrade(conn)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\x16\x03\x01\x00\x05hello")
    assert conn.state is State.TLS_HANDSHAKE
    conn.tls_established()
    assert conn.state is State.HELO


def test_pipelined_command_after_starttls_is_discarded() -> None:
    """RFC 3207 §5 / CVE-2011-0411: plaintext sent after STARTTLS must not be executed."""
    conn = connect(config(**OPTIONAL))
    injected = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\n"
    event = upgrade(conn, injected)
    assert event == TlsUpgrade(discarded=len(injected))
    conn.tls_established()
    events, lines = send(conn, EHLO + b"RCPT TO:<a@example.net>\r\n")
    assert not of_type(events, MailFrom)
    assert lines[-1] == "503 5.5.1 Need MAIL command"
    assert conn.envelope.mail_from is None


def test_injection_arriving_before_the_decision_is_discarded() -> None:
    """Bytes read while STARTTLS is pending are dropped too, whatever the read boundaries."""
    conn = connect(config(**OPTIONAL))
    conn.receive_data(b"STARTTLS\r\n")
    event = conn.next_event()
    assert isinstance(event, StartTls)
    conn.receive_data(b"MAIL FROM:<evil@attacker.example>\r\n")
    conn.accept(event)
    upgrade_event = conn.next_event()
    assert upgrade_event == TlsUpgrade(discarded=35)
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"


def test_rejected_starttls_keeps_the_plain_session() -> None:
    """RFC 3207 §4: 454 TLS not available due to temporary reason."""
    conn = connect(config(**OPTIONAL))
    events, lines = send(conn, b"STARTTLS\r\n" + MAIL, rejecting(StartTls))
    assert lines == ["454 4.7.0 TLS not available due to temporary reason", "250 2.1.0 Sender OK"]
    assert not of_type(events, TlsUpgrade)
    assert not conn.tls_active
    assert conn.helo_name == "client.test"


def test_starttls_with_argument_is_501() -> None:
    _, lines = send(connect(config(**OPTIONAL)), b"STARTTLS now\r\n")
    assert lines == ["501 5.5.4 Syntax: STARTTLS"]


def test_starttls_in_a_transaction_is_503() -> None:
    conn = connect(config(**OPTIONAL))
    send(conn, MAIL + RCPT)
    _, lines = send(conn, b"STARTTLS\r\n")
    assert lines == ["503 5.5.1 STARTTLS not allowed in a transaction"]
    assert conn.state is State.RCPT


def test_starttls_before_ehlo_is_allowed() -> None:
    conn = connect(config(**OPTIONAL), ehlo=None)
    upgrade(conn)
    conn.tls_established()
    assert conn.tls_active


def test_starttls_twice_is_refused() -> None:
    """RFC 3207 §4.2: STARTTLS is not offered, nor served, once TLS is active."""
    conn = connect(config(**OPTIONAL))
    upgrade(conn)
    conn.tls_established()
    send(conn, EHLO)
    _, lines = send(conn, b"STARTTLS\r\n")
    assert lines == ["503 5.5.1 TLS already active"]


def test_tls_resets_helo_and_auth() -> None:
    """RFC 3207 §4.2: discard knowledge obtained before TLS (EHLO argument, AUTH)."""
    cfg = config(auth_mode="optional", allow_insecure_auth=True, **OPTIONAL)
    conn = connect(cfg)
    send(conn, b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
    assert conn.auth == AuthInfo("PLAIN", "user", "user")
    upgrade(conn)
    conn.tls_established()
    assert conn.auth is None
    assert conn.helo_name is None
    assert conn.envelope.mail_from is None
    assert any(k.startswith("AUTH ") for k in keywords(conn))


def test_tls_failed_closes_silently() -> None:
    conn = connect(config(**OPTIONAL))
    upgrade(conn)
    conn.tls_failed()
    assert conn.closed
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.TLS_FAILED)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("call", ["tls_established", "tls_failed"])
def test_tls_signals_without_starttls_raise(call: str) -> None:
    conn = connect(config(**OPTIONAL))
    with pytest.raises(LocalProtocolError):
        getattr(conn, call)()
    assert conn.state is State.READY
    assert not conn.tls_active


def test_close_during_the_handshake_sends_nothing() -> None:
    conn = connect(config(**OPTIONAL))
    upgrade(conn)
    conn.close()
    assert conn.data_to_send() == b""
    assert conn.next_event() == ConnectionClosed(reason=CloseReason.SERVER_CLOSED)


# ---------------------------------------------------------------- required mode


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (EHLO, "250 HELP"),
        (b"HELO client.test\r\n", "250 mx.test greets client.test"),
        (b"NOOP\r\n", "250 2.0.0 OK"),
        (b"RSET\r\n", "250 2.0.0 OK"),
        (b"QUIT\r\n", "221 2.0.0 Bye"),
        (b"STARTTLS\r\n", READY_TLS),
    ],
)
def test_required_mode_allows_only_a_few_commands_before_tls(command: bytes, reply: str) -> None:
    conn = connect(config(**REQUIRED))
    assert send(conn, command)[1][-1] == reply


@pytest.mark.parametrize(
    "command",
    [
        MAIL,
        RCPT,
        b"DATA\r\n",
        b"BDAT 0 LAST\r\n",
        b"VRFY user\r\n",
        b"EXPN list\r\n",
        b"HELP\r\n",
        b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n",
        b"XCLIENT ADDR=1.2.3.4\r\n",
    ],
)
def test_required_mode_refuses_the_rest_with_530(command: bytes) -> None:
    """RFC 3207 §4: 530 5.7.0 Must issue a STARTTLS command first."""
    conn = connect(config(**REQUIRED))
    events, lines = send(conn, command)
    assert lines == [TLS_FIRST]
    assert not of_type(events, MailFrom)


def test_required_mode_serves_mail_after_tls() -> None:
    conn = connect(config(**REQUIRED))
    upgrade(conn)
    conn.tls_established()
    _, lines = send(conn, EHLO + MAIL)
    assert lines[-1] == "250 2.1.0 Sender OK"


# ---------------------------------------------------------------- implicit TLS


def test_implicit_tls() -> None:
    """RFC 8314: a connection that starts under TLS never offers STARTTLS."""
    cfg: SmtpConfig = config(**REQUIRED)
    conn = SmtpConnection(cfg, tls_active=True)
    assert conn.tls_active
    conn = connect(cfg, ehlo=None, tls_active=True)
    assert "STARTTLS" not in keywords(conn)
    _, lines = send(conn, MAIL)
    assert lines == ["250 2.1.0 Sender OK"]


def test_implicit_tls_refuses_starttls() -> None:
    conn = connect(config(**OPTIONAL), tls_active=True)
    _, lines = send(conn, b"STARTTLS\r\n")
    assert lines == ["503 5.5.1 TLS already active"]


def test_accept_starttls_with_custom_reply() -> None:
    conn = connect(config(**OPTIONAL))

    def decide(c: SmtpConnection, event: object) -> None:
        assert isinstance(event, StartTls)
        c.accept(event, Reply(220, "Go ahead", "2.0.0"))

    _, lines = send(conn, b"STARTTLS\r\n", decide)
    assert lines == ["220 2.0.0 Go ahead"]
