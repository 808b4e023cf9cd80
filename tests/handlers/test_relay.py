"""`RelayHandler` into a second in-process server: the envelope kept, our Received on top,
and every upstream failure reported to the client (451, or upstream's own 5xx)."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from smtpcore import AuthAttempt, AuthMode, MailFrom, RcptTo, SmtpConfig, TlsMode
from tests.integration._support import RawClient
from transports.controller import ServerThread
from transports.errors import Smtp450Error, Smtp550Error, Smtp553Error, Smtp554Error, SmtpError
from transports.handler import Session
from transports.handlers import MemoryHandler, RelayHandler, resolve_handler

from ._support import MESSAGE, run_swaks, send, send_expecting, serve, split_trace

pytestmark = pytest.mark.network

RELAY = SmtpConfig(hostname="relay.test")


class Upstream(MemoryHandler):
    """Keeps what it accepts; refuses the senders and recipients it is told to."""

    def __init__(self, refuse: dict[str, SmtpError] | None = None) -> None:
        super().__init__()
        self.refuse = refuse or {}

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        if address in self.refuse:
            raise self.refuse[address]

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if address in self.refuse:
            raise self.refuse[address]

    def on_message(self, ctx: Session) -> None:
        if "data" in self.refuse:
            raise self.refuse["data"]
        super().on_message(ctx)


@contextmanager
def relay_chain(
    upstream: Upstream, transport: str = "asyncio", config: SmtpConfig = RELAY, **options: object
) -> Iterator[ServerThread]:
    """An upstream server (asyncio) and a relay (``transport``) forwarding to it."""
    with serve(upstream, "asyncio", config=SmtpConfig(hostname="upstream.test")) as up:
        relay = RelayHandler(*up.address, **options)  # type: ignore[arg-type]
        with serve(relay, transport, config=config) as server:
            yield server


@pytest.mark.parametrize("transport", ["asyncio", "threads", "trio"])
def test_envelope_and_content_forwarded(transport: str) -> None:
    upstream = Upstream()
    with relay_chain(upstream, transport) as server:
        refused = send(
            server,
            ["bob@example.org", "carol@example.org"],
            mail_options=["BODY=8BITMIME", "RET=HDRS", "ENVID=env+2B1"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig@example.org"],
        )
        assert refused == {}
        (message,) = upstream.wait_for()
    assert message.sender == "alice@example.org"
    assert message.recipients == ("bob@example.org", "carol@example.org")
    _, rest = split_trace(message.raw, return_path=None, recipient=None, by="relay.test")
    assert rest == MESSAGE
    assert message.raw.count(b"Received:") == 1 and b"Return-Path" not in message.raw
    assert dict(message.mail_params) == {
        "SIZE": str(len(message.raw)),  # recomputed: our Received is part of it now
        "BODY": "8BITMIME",
        "RET": "HDRS",
        "ENVID": "env+2B1",  # still xtext, as the client wrote it
    }
    expected = {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;orig@example.org"}
    assert [dict(p) for p in message.rcpt_params] == [expected, expected]
    assert message.helo == "relay.test"  # our EHLO name upstream is the relay's hostname


def test_swaks_through_the_relay_with_null_sender(tmp_path: Path) -> None:
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE)
    upstream = Upstream()
    with relay_chain(upstream, "threads") as server:
        result = run_swaks(
            server.address, "--from", "<>", "--to", "r@example.org", "--data", f"@{data}"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (message,) = upstream.wait_for()
    assert message.sender == "" and message.recipients == ("r@example.org",)
    _, rest = split_trace(message.raw, return_path=None, recipient="r@example.org", by="relay.test")
    assert rest == MESSAGE + b"\r\n"  # swaks adds a line end before the final dot


def test_smtputf8_relayed_with_the_utf8_keyword() -> None:
    upstream = Upstream()
    with relay_chain(upstream) as server:
        send(server, ["bøb@example.org"], sender="ålice@example.org", mail_options=["SMTPUTF8"])
        (message,) = upstream.wait_for()
    assert message.sender == "ålice@example.org" and message.recipients == ("bøb@example.org",)
    assert "SMTPUTF8" in message.mail_params
    assert b"with UTF8SMTP id" in message.raw


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_upstream_down_gives_451() -> None:
    with serve(RelayHandler("127.0.0.1", free_port()), config=RELAY) as server:
        exc = send_expecting(server, 451)
    assert "4.4.1" in str(exc) and "unreachable" in str(exc)


def test_upstream_silent_gives_451_after_the_timeout() -> None:
    """Upstream accepts the connection (the kernel does) but never greets."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        relay = RelayHandler("127.0.0.1", mute.getsockname()[1], timeout=0.5)
        with serve(relay, config=RELAY) as server:
            exc = send_expecting(server, 451)
    assert "4.4.1" in str(exc)


def test_upstream_permanent_refusal_of_every_recipient_is_passed_through() -> None:
    upstream = Upstream({"bob@example.org": Smtp550Error("No such user here")})
    with relay_chain(upstream) as server:
        exc = send_expecting(server, 550)
    assert "5.1.1" in str(exc) and "No such user here" in str(exc)
    assert upstream.messages == []


def test_upstream_refusing_the_sender_is_passed_through() -> None:
    upstream = Upstream({"alice@example.org": Smtp553Error("Sender not allowed")})
    with relay_chain(upstream) as server:
        exc = send_expecting(server, 553)
    assert "5.1.3" in str(exc) and "Sender not allowed" in str(exc)


def test_upstream_refusing_the_data_is_passed_through() -> None:
    upstream = Upstream({"data": Smtp554Error("Looks like spam")})
    with relay_chain(upstream) as server:
        exc = send_expecting(server, 554)
    assert "Looks like spam" in str(exc)


def test_one_temporary_refusal_fails_the_whole_message_with_451() -> None:
    """The client retries everyone; upstream got nothing, so nobody gets it twice."""
    upstream = Upstream({"carol@example.org": Smtp450Error("Mailbox busy")})
    with relay_chain(upstream) as server:
        exc = send_expecting(server, 451, recipients=["bob@example.org", "carol@example.org"])
    assert "carol@example.org" in str(exc) and "4.4.0" in str(exc)
    assert upstream.messages == []


def test_all_refused_but_one_only_for_now_gives_451() -> None:
    upstream = Upstream(
        {"bob@example.org": Smtp550Error(), "carol@example.org": Smtp450Error("Busy")}
    )
    with relay_chain(upstream) as server:
        send_expecting(server, 451, recipients=["bob@example.org", "carol@example.org"])


def test_permanent_partial_refusal_delivers_to_the_others_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream({"carol@example.org": Smtp550Error("No such user here")})
    with caplog.at_level(logging.WARNING, "smtpcore.handlers.relay"), relay_chain(upstream) as s:
        assert send(s, ["bob@example.org", "carol@example.org"]) == {}
        (message,) = upstream.wait_for()
    assert message.recipients == ("bob@example.org",)
    (record,) = [r for r in caplog.records if r.name == "smtpcore.handlers.relay"]
    assert "refused <carol@example.org> (550 5.1.1 No such user here)" in record.getMessage()


def test_lmtp_answers_each_recipient_with_upstreams_answer() -> None:
    upstream = Upstream(
        {"carol@example.org": Smtp550Error("No such user here"), "dan@example.org": Smtp450Error()}
    )
    with relay_chain(upstream, config=SmtpConfig(hostname="relay.test", lmtp=True)) as server:
        with RawClient(server.address) as client:
            client.expect(220)
            client.command("LHLO client.test", 250)
            client.command("MAIL FROM:<alice@example.org>", 250)
            for rcpt in ("bob", "carol", "dan"):
                client.command(f"RCPT TO:<{rcpt}@example.org>", 250)
            client.command("DATA", 354)
            client.send(MESSAGE + b".\r\n")
            replies = [client.read_reply() for _ in range(3)]
            client.command("QUIT", 221)
        (message,) = upstream.wait_for()
    assert [code for code, _ in replies] == [250, 550, 451]
    assert "No such user here" in replies[1][1][0]
    assert message.recipients == ("bob@example.org",)


def test_binarymime_refused_at_mail_from() -> None:
    with (
        serve(RelayHandler("127.0.0.1", free_port()), config=RELAY) as server,
        RawClient(server.address) as client,
    ):
        client.expect(220)
        client.command("EHLO client.test", 250)
        (text,) = client.command("MAIL FROM:<a@example.org> BODY=BINARYMIME", 555)
    assert text.startswith("5.5.4")


def test_a_looping_message_is_refused() -> None:
    looping = b"".join(
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" for _ in range(99)
    )
    with serve(RelayHandler("127.0.0.1", free_port()), config=RELAY) as server:
        exc = send_expecting(server, 554, message=looping + MESSAGE)
    assert "5.4.6" in str(exc)


def test_spec_and_construction_errors() -> None:
    relay = resolve_handler("relay:smtp.example.org:2525")
    assert isinstance(relay, RelayHandler) and (relay.host, relay.port) == (
        "smtp.example.org",
        2525,
    )
    relay = resolve_handler("relay:[::1]:25")
    assert isinstance(relay, RelayHandler) and (relay.host, relay.port) == ("::1", 25)
    for spec in (
        "relay",
        "relay:",
        "relay:host",
        "relay:host:",
        "relay::25",
        "relay:h:0",
        "relay:h:x",
    ):
        with pytest.raises(ValueError, match="HOST:PORT"):
            resolve_handler(spec)
    with pytest.raises(ValueError, match="username and password"):
        RelayHandler("h", 25, username="u")


class Accounts(Upstream):
    def on_auth(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> None:
        if (authentication_id, password) != ("relay", "s3cret"):
            super().on_auth(ctx, authorization_id, authentication_id, password, attempt)


def unverified_client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the upstream's certificate is self-signed
    return context


@pytest.mark.parametrize(
    ("password", "code"), [("s3cret", 250), ("wrong", 451)], ids=["good", "bad-credentials"]
)
def test_starttls_and_auth_upstream(password: str, code: int) -> None:
    upstream = Accounts()
    config = SmtpConfig(
        hostname="upstream.test", tls_mode=TlsMode.REQUIRED, auth_mode=AuthMode.REQUIRED
    )
    with serve(upstream, config=config, auth_failure_delay=0) as up:
        relay = RelayHandler(
            *up.address,
            starttls=True,
            ssl_context=unverified_client_context(),
            username="relay",
            password=password,
        )
        with serve(relay, config=RELAY) as server:
            if code == 451:
                exc = send_expecting(server, 451)
                assert "4.7.0 Upstream refused our credentials" in str(exc)
                return
            send(server)
            (message,) = upstream.wait_for()
    assert message.tls is not None and message.authentication_id == "relay"
    assert b"with ESMTP id" in message.raw  # our own hop: the client came in clear


def test_starttls_demanded_but_not_offered_gives_451() -> None:
    upstream = Upstream()
    with relay_chain(upstream, starttls=True) as server:
        exc = send_expecting(server, 451)
    assert "no STARTTLS" in str(exc)
    assert upstream.messages == []
