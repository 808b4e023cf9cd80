"""Every handler hook over a real connection, per transport, with sync and async handlers."""

from __future__ import annotations

import logging
import smtplib

import anyio
import pytest

from smtpcore import AuthAttempt, AuthMode, MailFrom, RcptTo, SmtpConfig
from transports.errors import Smtp421Error, Smtp535Error, Smtp552Error, Smtp554Error, SmtpError
from transports.handler import Session

from ._support import RawClient, Recorder, make_message, smtp_client
from .conftest import Serve, Styled

pytestmark = pytest.mark.network

AUTH_CONFIG = SmtpConfig(hostname="mx.test", auth_mode=AuthMode.OPTIONAL, allow_insecure_auth=True)


def test_plain_delivery(serve: Serve, styled: Styled[Recorder]) -> None:
    """on_message sees the envelope, the bytes and the parsed message."""
    rec = styled(Recorder)()
    message = make_message("plain delivery")
    with serve(rec) as server, smtp_client(server.address) as client:
        refused = client.sendmail("x@y.z", ["a@b.c", "d@e.f"], message)
        assert refused == {}
    (delivery,) = rec.deliveries
    assert delivery.sender == "x@y.z"
    assert delivery.recipients == ("a@b.c", "d@e.f")
    assert delivery.data == message
    assert delivery.subject == "plain delivery"
    assert delivery.helo == "client.test"
    assert "SIZE" in {key.upper() for key in delivery.mail_params}


# ---------------------------------------------------------------- on_connect / on_disconnect


class RefuseConnect554(Recorder):
    def on_connect(self, ctx: Session) -> None:
        raise Smtp554Error("No mail from you")


class RefuseConnect421(Recorder):
    def on_connect(self, ctx: Session) -> None:
        raise Smtp421Error("Too busy right now")


class CrashConnect(Recorder):
    def on_connect(self, ctx: Session) -> None:
        raise RuntimeError("database down")


def test_on_connect_554_refuses_service(serve: Serve, styled: Styled[Recorder]) -> None:
    """A 554 greeting: the session stays open for QUIT only (RFC 5321 §3.1)."""
    rec = styled(RefuseConnect554)()
    with serve(rec) as server, RawClient(server.address) as client:
        code, lines = client.read_reply()
        assert (code, lines) == (554, ["5.0.0 No mail from you"])
        assert client.command("EHLO client.test", 503)
        client.command("QUIT", 221)
        assert client.wait_closed()
        assert rec.wait_disconnects(1) == [client.sock.getsockname()[1]]
    assert rec.deliveries == []


def test_on_connect_554_with_smtplib(serve: Serve, styled: Styled[Recorder]) -> None:
    rec = styled(RefuseConnect554)()
    with serve(rec) as server, pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP(*server.address, local_hostname="client.test", timeout=10)
    assert info.value.smtp_code == 554


def test_on_connect_421_closes(serve: Serve, styled: Styled[Recorder]) -> None:
    rec = styled(RefuseConnect421)()
    with serve(rec) as server, RawClient(server.address) as client:
        assert client.read_reply() == (421, ["4.3.2 Too busy right now"])
        assert client.wait_closed()
        assert len(rec.wait_disconnects(1)) == 1


def test_on_connect_crash_is_421(serve: Serve, styled: Styled[Recorder]) -> None:
    """A generic exception before the banner cannot be a 451: the client gets 421."""
    rec = styled(CrashConnect)()
    with serve(rec) as server, RawClient(server.address) as client:
        code, _ = client.read_reply()
        assert code == 421
        assert client.wait_closed()
        rec.wait_disconnects(1)
    errors = [line for line in rec.logs if line.level >= logging.ERROR]
    assert errors and isinstance(errors[0].exc, RuntimeError)


@pytest.mark.parametrize("ending", ["quit", "close", "reset"])
def test_on_disconnect_called_once(serve: Serve, styled: Styled[Recorder], ending: str) -> None:
    rec = styled(Recorder)()
    with serve(rec) as server:
        with RawClient(server.address) as client:
            client.expect(220)
            client.command("EHLO client.test", 250)
            port = client.sock.getsockname()[1]
            if ending == "quit":
                client.command("QUIT", 221)
                assert client.wait_closed()
            elif ending == "reset":
                client.abort()
        assert rec.wait_disconnects(1) == [port]


class SlowGoodbye(Recorder):
    async def on_disconnect(self, ctx: Session) -> None:  # type: ignore[override]
        await anyio.sleep(0.2)  # e.g. flushing a session log somewhere
        with self.cond:
            self.disconnects.append(ctx.remote_port)
            self.cond.notify_all()


@pytest.mark.async_hooks
def test_async_on_disconnect_survives_a_stop(serve: Serve, transport: str) -> None:
    """The client QUITs, the server is stopped at once: the async on_disconnect still runs
    to its end (a graceful stop should not cancel it halfway)."""
    rec = SlowGoodbye()
    with serve(rec) as server, smtp_client(server.address) as client:
        assert client.noop()[0] == 250
    assert len(rec.wait_disconnects(1)) == 1


# ---------------------------------------------------------------- on_helo


class RefuseHelo(Recorder):
    def on_helo(self, ctx: Session, domain: str) -> None:
        if domain.startswith("bad."):
            raise SmtpError(550, "Go away, " + domain, "5.7.1")


def test_on_helo_refuses(serve: Serve, styled: Styled[Recorder]) -> None:
    rec = styled(RefuseHelo)()
    with serve(rec) as server, smtp_client(server.address) as client:
        assert client.docmd("EHLO", "bad.example") == (550, b"5.7.1 Go away, bad.example")
        assert client.docmd("HELO", "bad.example") == (550, b"5.7.1 Go away, bad.example")
        code, _ = client.docmd("MAIL", "FROM:<x@y.z>")
        assert code == 503  # no greeting accepted yet
        assert client.docmd("NOOP")[0] == 250
        assert client.ehlo("good.example")[0] == 250
        client.sendmail("x@y.z", ["a@b.c"], make_message("after helo"))
    assert [d.helo for d in rec.deliveries] == ["good.example"]


# ---------------------------------------------------------------- on_mail_from / on_rcpt_to


class Rewriter(Recorder):
    """Rewrites the sender to a fixed address and aliases recipients; records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> str | None:
        self.seen.append(f"mail {address} {event.address}")
        return "bounces+" + address.replace("@", "=") + "@mx.test"

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> str | None:
        self.seen.append(f"rcpt {address} sender={ctx.sender}")
        return {"postmaster@b.c": "admin@mx.test"}.get(address.lower())


def test_mail_and_rcpt_rewriting(serve: Serve, styled: Styled[Rewriter]) -> None:
    rec = styled(Rewriter)()
    with serve(rec) as server, smtp_client(server.address) as client:
        client.sendmail("x@y.z", ["Postmaster@b.c", "a@b.c"], make_message("rewritten"))
    (delivery,) = rec.deliveries
    assert delivery.sender == "bounces+x=y.z@mx.test"
    assert delivery.recipients == ("admin@mx.test", "a@b.c")
    assert rec.seen == [
        "mail x@y.z x@y.z",
        "rcpt Postmaster@b.c sender=bounces+x=y.z@mx.test",
        "rcpt a@b.c sender=bounces+x=y.z@mx.test",
    ]


# ---------------------------------------------------------------- on_auth


class Authenticator(Recorder):
    def on_auth(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> str:
        if (authentication_id, password) != ("alice", "s3cret"):
            raise Smtp535Error()
        return f"authz:{authentication_id}:{attempt.mechanism}"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_on_auth_sets_authorization_id(
    serve: Serve, styled: Styled[Authenticator], mechanism: str
) -> None:
    rec = styled(Authenticator)()
    config = SmtpConfig(
        hostname="mx.test",
        auth_mode=AuthMode.OPTIONAL,
        allow_insecure_auth=True,
        auth_mechanisms=(mechanism,),
    )
    with serve(rec, config=config) as server, smtp_client(server.address) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].split() == [mechanism]
        code, _ = client.login("alice", "s3cret")
        assert code == 235
        client.sendmail("x@y.z", ["a@b.c"], make_message("authenticated"))
    (delivery,) = rec.deliveries
    assert delivery.authorization_id == f"authz:alice:{mechanism}"
    assert delivery.authentication_id == "alice"


def test_on_auth_refuses_bad_password(serve: Serve, styled: Styled[Authenticator]) -> None:
    rec = styled(Authenticator)()
    with (
        serve(rec, config=AUTH_CONFIG, auth_failure_delay=0.01) as server,
        smtp_client(server.address) as client,
    ):
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("alice", "wrong")
        assert info.value.smtp_code == 535
        assert client.login("alice", "s3cret")[0] == 235  # the session goes on


def test_default_on_auth_denies(serve: Serve) -> None:
    rec = Recorder()  # on_auth not overridden: every attempt is refused
    with (
        serve(rec, config=AUTH_CONFIG, auth_failure_delay=0.01) as server,
        smtp_client(server.address) as client,
    ):
        client.ehlo()
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")  # \0alice\0s3cret
        assert (code, text) == (535, b"5.7.8 Authentication credentials invalid")


# ---------------------------------------------------------------- message hooks


class Stamper(Recorder):
    def on_message_start(self, ctx: Session) -> None:
        ctx.message.add_header("Received", f"from {ctx.helo} by mx.test")

    def on_message_headers(self, ctx: Session) -> None:
        ctx.message.add_header("X-Scanned", "clean")


def test_message_start_and_headers_add_headers(serve: Serve, styled: Styled[Stamper]) -> None:
    rec = styled(Stamper)()
    message = make_message("stamped", "Body line.\r\n\r\nSecond paragraph.\r\n")
    with serve(rec) as server, smtp_client(server.address) as client:
        client.sendmail("x@y.z", ["a@b.c"], message)
    (delivery,) = rec.deliveries
    header_block, body = message.split(b"\r\n\r\n", 1)
    assert delivery.data == (
        b"Received: from client.test by mx.test\r\n"
        + header_block
        + b"\r\nX-Scanned: clean\r\n\r\n"
        + body
    )
    assert delivery.subject == "stamped"


def test_headers_hook_on_message_without_body(serve: Serve, styled: Styled[Stamper]) -> None:
    """No empty line at all: the header block ends with the data, the header goes last."""
    rec = styled(Stamper)()
    with serve(rec) as server, smtp_client(server.address) as client:
        client.sendmail("x@y.z", ["a@b.c"], b"Subject: headers only\r\n")
    assert rec.deliveries[0].data == (
        b"Received: from client.test by mx.test\r\nSubject: headers only\r\nX-Scanned: clean\r\n"
    )


class Streamer(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def on_message_data(self, ctx: Session, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if sum(map(len, self.chunks)) > 400_000:
            raise Smtp552Error("Too big for me")

    def on_message_start(self, ctx: Session) -> None:
        self.chunks.clear()


def test_on_message_data_streams_the_content(serve: Serve, styled: Styled[Streamer]) -> None:
    rec = styled(Streamer)()
    body = "".join(f"line {i:06d} {'.' * 60}\r\n" for i in range(4000))  # ~290 kB
    message = make_message("streamed", body)
    with serve(rec) as server, smtp_client(server.address) as client:
        client.sendmail("x@y.z", ["a@b.c"], message)
    (delivery,) = rec.deliveries
    assert delivery.data == message
    assert b"".join(rec.chunks) == message


def test_on_message_data_refusal_answers_after_the_data(
    serve: Serve, styled: Styled[Streamer]
) -> None:
    rec = styled(Streamer)()
    big = make_message("too big", "x" * 70 + "\r\n") * 8000  # ~600 kB
    with serve(rec) as server, smtp_client(server.address) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("x@y.z", ["a@b.c"], big)
        assert (info.value.smtp_code, info.value.smtp_error) == (552, b"5.3.4 Too big for me")
        client.sendmail("x@y.z", ["a@b.c"], make_message("small"))  # the session goes on
    assert rec.subjects() == ["small"]


# ---------------------------------------------------------------- on_unknown_command


class Xyzzy(Recorder):
    def on_unknown_command(self, ctx: Session, verb: str, argument: str) -> str:
        if verb != "XYZZY":
            raise SmtpError(502, f"{verb} not here", "5.5.1")
        return f"Nothing happens ({argument})"


def test_on_unknown_command(serve: Serve, styled: Styled[Xyzzy]) -> None:
    rec = styled(Xyzzy)()
    with serve(rec) as server, smtp_client(server.address) as client:
        client.ehlo()
        assert client.docmd("xyzzy", "plugh") == (250, b"2.0.0 Nothing happens (plugh)")
        assert client.docmd("FROB") == (502, b"5.5.1 FROB not here")
        assert client.noop()[0] == 250


def test_default_unknown_command_is_500(serve: Serve) -> None:
    with serve(Recorder()) as server, smtp_client(server.address) as client:
        client.ehlo()
        assert client.docmd("XYZZY", "plugh") == (500, b"5.5.2 Command unrecognized")
        assert client.noop()[0] == 250


# ---------------------------------------------------------------- on_logging


class CrashHelo(Recorder):
    def on_helo(self, ctx: Session, domain: str) -> None:
        raise ValueError("broken helo check")


def test_on_logging_receives_lines(serve: Serve, styled: Styled[CrashHelo]) -> None:
    rec = styled(CrashHelo)()
    with serve(rec) as server:
        with smtp_client(server.address) as client:
            assert client.sock is not None
            port = client.sock.getsockname()[1]
            assert client.docmd("EHLO", "client.test")[0] == 451
        rec.wait_disconnects(1)
    with rec.cond:
        logs = list(rec.logs)
    ours = [line for line in logs if f"127.0.0.1:{port}" in line.message]
    assert ours, logs
    assert any(line.level == logging.DEBUG for line in ours)
    errors = [line for line in ours if line.level >= logging.ERROR]
    assert errors and isinstance(errors[0].exc, ValueError)
