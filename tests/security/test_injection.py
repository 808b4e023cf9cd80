"""Command injection around STARTTLS (RFC 3207 §5, CVE-2011-0411 family) and inside AUTH.

* Commands written in the same packet as STARTTLS are plaintext an attacker in the middle could
  have added: they must be dropped, never run before or after the handshake.
* Lines pipelined inside an AUTH exchange are SASL responses: they are decoded as such (and
  refused when they are not base64), never run as commands, and never with credentials.
* Commands legitimately pipelined on either side of the TLS boundary are all answered in order.
"""

from __future__ import annotations

import ssl
from base64 import b64encode

import pytest

from smtpcore import AuthMode, SmtpConfig, TlsMode

from . import figures
from ._support import EHLO, RCPT, Client, Recorder, wait_until

TLS_CONFIG = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
INJECTED = (
    b"MAIL FROM:<attacker@evil.example>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"Subject: injected\r\n\r\nhello\r\n.\r\n"
)
BODY = b"From: a@example.org\r\nSubject: after TLS\r\n\r\n..a dot line\r\n"


def ehlo_keywords(client: Client) -> list[str]:
    client.send(EHLO)
    reply = client.expect(250)
    return [line.split(" ")[0] for line in reply.lines[1:]]


def clean_transaction(client: Client) -> None:
    """After TLS: a full transaction in one pipelined write, replies in order."""
    client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
    assert client.codes(3) == [250, 250, 354]
    client.send(BODY + b".\r\nQUIT\r\n")
    assert client.codes(2) == [250, 221]


def assert_not_injected(handler: Recorder) -> None:
    with handler.cond:
        assert all(addr != "attacker@evil.example" for addr, _ in handler.mail_froms)
        assert "victim@example.net" not in handler.rcpts
        assert all(b"injected" not in m.data for m in handler.messages)


# ---------------------------------------------------------------- STARTTLS


def test_starttls_drops_commands_in_the_same_write(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler, config=TLS_CONFIG) as server, Client(server.address) as client:
        client.greet()
        client.send(b"STARTTLS\r\n" + INJECTED)
        client.expect(220)
        client.starttls()  # asserts no plaintext reply to an injected command came first
        assert "STARTTLS" not in ehlo_keywords(client)
        clean_transaction(client)
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert handler.messages[0].data == BODY.replace(b"\r\n..", b"\r\n.")
        assert_not_injected(handler)
        figures.count("attacks.starttls_injection")


def test_starttls_injection_in_a_later_packet_never_runs(transport: str, serve) -> None:
    """Injected bytes that arrive after the server read STARTTLS reach the TLS layer as a
    garbage record: the handshake fails and the connection ends; or, if they arrived with
    STARTTLS, they are dropped. Either way nothing runs and the server goes on serving."""
    handler = Recorder()
    with serve(handler, config=TLS_CONFIG) as server:
        for _ in range(3):
            with Client(server.address) as client:
                client.greet()
                client.send(b"STARTTLS\r\n")
                client.send(INJECTED)
                client.expect(220)
                try:
                    client.starttls()
                    client.send(EHLO)
                    client.expect(250)
                except (ssl.SSLError, OSError, EOFError):
                    pass  # the garbage broke the handshake: the session is over
            figures.count("attacks.starttls_injection")
        with Client(server.address) as client:
            client.greet()
            client.send(b"STARTTLS\r\n")
            client.expect(220)
            client.starttls()
            ehlo_keywords(client)
            clean_transaction(client)
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert_not_injected(handler)


def test_pipelining_across_the_tls_boundary(transport: str, serve) -> None:
    handler = Recorder()
    with serve(handler, config=TLS_CONFIG) as server, Client(server.address) as client:
        client.expect(220)
        client.send(EHLO + b"NOOP\r\nHELP\r\nSTARTTLS\r\n")
        assert client.codes(4) == [250, 250, 214, 220]
        client.starttls()
        client.send(EHLO + b"MAIL FROM:<a@example.org>\r\n" + RCPT + RCPT + b"DATA\r\n")
        assert client.codes(5) == [250, 250, 250, 250, 354]
        client.send(BODY + b".\r\nNOOP\r\nSTARTTLS\r\nQUIT\r\n")
        assert client.codes(4) == [250, 250, 503, 221]
        assert handler.wait_for(lambda: len(handler.messages) == 1)


def test_commands_right_after_the_handshake_are_served(
    transport: str, serve, request: pytest.FixtureRequest
) -> None:
    """Every client writes EHLO as soon as its side of the handshake is done; with TLS 1.3
    that record often arrives together with the client's Finished message."""
    handler = Recorder()
    with serve(handler, config=TLS_CONFIG) as server:
        for _ in range(10):
            with Client(server.address) as client:
                client.expect(220)
                client.send(EHLO + b"STARTTLS\r\n")
                assert client.codes(2) == [250, 220]
                client.starttls(settle=0)
                client.send(EHLO + b"NOOP\r\nQUIT\r\n")
                replies, end = client.rest()
                assert ([r.code for r in replies], end) == ([250, 250, 221], "eof")


def test_tls_required_refuses_mail_before_starttls(transport: str, serve) -> None:
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.REQUIRED)
    with serve(handler, config=config) as server, Client(server.address) as client:
        client.greet()
        client.send(INJECTED)
        replies = [client.reply() for _ in range(3)]
        assert [(r.code, r.enhanced) for r in replies] == [(530, "5.7.0")] * 3
        assert handler.mail_froms == []
        figures.count("attacks.starttls_injection")


# ---------------------------------------------------------------- AUTH

AUTH_CONFIG = SmtpConfig(hostname="mx.test", auth_mode=AuthMode.REQUIRED, allow_insecure_auth=True)
GOOD = b64encode(b"\0user\0secret")
COMMANDS = b"MAIL FROM:<attacker@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
BAD = b64encode(b"\0user\0wrong")


def auth_server(serve, **options):  # type: ignore[no-untyped-def]
    options.setdefault("config", AUTH_CONFIG)
    options.setdefault("auth_failure_delay", 0.01)
    return serve(Recorder(), **options)


def test_commands_inside_an_auth_exchange_are_sasl_responses(transport: str, serve) -> None:
    with auth_server(serve) as server:
        handler = server.server.handler
        cases = [
            # (what is written after EHLO in one packet, the expected codes)
            (b"AUTH LOGIN\r\n" + COMMANDS, [334, 501, 530, 530]),
            (b"AUTH PLAIN\r\n" + COMMANDS, [334, 501, 530, 530]),
            (b"AUTH LOGIN " + b64encode(b"user") + b"\r\n" + COMMANDS, [334, 501, 530, 530]),
            (b"AUTH LOGIN\r\n*\r\n" + COMMANDS, [334, 501, 530, 530, 530]),
            (b"AUTH PLAIN\r\n" + BAD + b"\r\n" + COMMANDS, [334, 535, 530, 530, 530]),
            (b"AUTH PLAIN " + BAD + b"\r\n" + COMMANDS, [535, 530, 530, 530]),
            (b"AUTH CRAM-MD5\r\n" + COMMANDS, [504, 530, 530, 530]),
            # commands hidden in base64: credentials, never commands
            (b"AUTH PLAIN " + b64encode(b"\0user\0x\r\n" + INJECTED) + b"\r\n", [535]),
            (b"AUTH LOGIN\r\n" + b64encode(INJECTED) + b"\r\n" + BAD + b"\r\n", [334, 334, 535]),
            (
                b"AUTH LOGIN\r\n" + b64encode(b"user") + b"\r\n" + COMMANDS,
                [334, 334, 501, 530, 530],
            ),
        ]
        for data, expected in cases:
            with Client(server.address) as client:
                client.greet()
                client.send(data + b"QUIT\r\n")
                replies, end = client.rest()
                got = [r.code for r in replies]
                assert (got, end) == ([*expected, 221], "eof"), data
            figures.count("attacks.auth_injection")
        with handler.cond:
            assert handler.mail_froms == []
            assert handler.messages == []
            assert all(password != "secret" for _, password in handler.auths)


def test_commands_after_a_successful_auth_run_with_those_credentials(transport: str, serve) -> None:
    with auth_server(serve) as server, Client(server.address) as client:
        handler = server.server.handler
        client.greet()
        client.send(b"AUTH PLAIN " + GOOD + b"\r\nMAIL FROM:<a@example.org>\r\n" + RCPT)
        assert client.codes(3) == [235, 250, 250]
        client.send(b"DATA\r\n")
        client.expect(354)
        client.send(BODY + b".\r\n")
        client.expect(250)
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert handler.mail_froms == [("a@example.org", "user")]
        assert handler.messages[0].authenticated == "user"


def test_auth_needs_tls_and_is_not_offered_in_clear(transport: str, serve) -> None:
    """Default ``allow_insecure_auth=False``: no AUTH in clear, credentials never read."""
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL, auth_mode=AuthMode.REQUIRED)
    with auth_server(serve, config=config) as server, Client(server.address) as client:
        handler = server.server.handler
        client.expect(220)
        keywords = ehlo_keywords(client)
        assert "AUTH" not in keywords and "STARTTLS" in keywords
        client.send(b"AUTH PLAIN " + GOOD + b"\r\n")
        reply = client.reply()
        assert (reply.code, reply.enhanced) == (538, "5.7.11")
        client.send(b"STARTTLS\r\n")
        client.expect(220)
        client.starttls()
        assert "AUTH" in ehlo_keywords(client)
        client.send(b"AUTH PLAIN " + GOOD + b"\r\n")
        client.expect(235)
        assert handler.auths == [("user", "secret")]
        figures.count("attacks.auth_injection")


def test_auth_state_is_forgotten_after_starttls(transport: str, serve) -> None:
    """RFC 3207 §4.2: everything learnt before TLS is discarded, AUTH included."""
    config = SmtpConfig(
        hostname="mx.test",
        tls_mode=TlsMode.OPTIONAL,
        auth_mode=AuthMode.REQUIRED,
        allow_insecure_auth=True,
    )
    with auth_server(serve, config=config) as server, Client(server.address) as client:
        handler = server.server.handler
        client.greet()
        client.send(b"AUTH PLAIN " + GOOD + b"\r\nSTARTTLS\r\n")
        assert client.codes(2) == [235, 220]
        client.starttls()
        ehlo_keywords(client)
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        reply = client.reply()
        assert (reply.code, reply.enhanced) == (530, "5.7.0")
        assert wait_until(lambda: True)
        assert handler.mail_froms == []
