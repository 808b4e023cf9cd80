"""Exceptions raised by hooks become replies; the session goes on unless the reply is 421."""

from __future__ import annotations

import smtplib

import pytest

from smtpcore import MailFrom, RcptTo
from transports.errors import Smtp421Error, Smtp550Error
from transports.handler import Session

from ._support import RawClient, Recorder, make_message, smtp_client
from .conftest import Serve, Styled

pytestmark = pytest.mark.network


class Picky(Recorder):
    """nobody@ is refused with 550, crash@ breaks the hook (451), evil@ ends the session."""

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        if address.startswith("crash@"):
            raise RuntimeError("sender check broke")

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if address.startswith("nobody@"):
            raise Smtp550Error("No such user here")
        if address.startswith("evil@"):
            raise Smtp421Error("You again? Bye")


def test_smtp_error_on_rcpt_is_the_reply(serve: Serve, styled: Styled[Picky]) -> None:
    rec = styled(Picky)()
    with serve(rec) as server, smtp_client(server.address) as client:
        client.ehlo()
        assert client.mail("x@y.z")[0] == 250
        assert client.rcpt("nobody@b.c") == (550, b"5.1.1 No such user here")
        assert client.rcpt("a@b.c")[0] == 250
        assert client.data(make_message("one refused"))[0] == 250
        # smtplib's sendmail reports the refused recipient and delivers to the others
        refused = client.sendmail("x@y.z", ["nobody@b.c", "d@e.f"], make_message("again"))
        assert refused == {"nobody@b.c": (550, b"5.1.1 No such user here")}
    assert [d.recipients for d in rec.deliveries] == [("a@b.c",), ("d@e.f",)]


def test_generic_exception_is_451_and_session_goes_on(serve: Serve, styled: Styled[Picky]) -> None:
    rec = styled(Picky)()
    with serve(rec) as server, smtp_client(server.address) as client:
        client.ehlo()
        assert client.mail("crash@y.z") == (
            451,
            b"4.3.0 Requested action aborted: local error in processing",
        )
        client.sendmail("x@y.z", ["a@b.c"], make_message("second transaction"))
    assert rec.subjects() == ["second transaction"]
    errors = [line for line in rec.logs if isinstance(line.exc, RuntimeError)]
    assert errors, rec.logs


def test_smtp421_from_a_hook_closes(serve: Serve, styled: Styled[Picky]) -> None:
    rec = styled(Picky)()
    with serve(rec) as server:
        with RawClient(server.address) as client:
            client.expect(220)
            client.command("EHLO client.test", 250)
            client.command("MAIL FROM:<x@y.z>", 250)
            client.command("RCPT TO:<a@b.c>", 250)
            client.send(b"RCPT TO:<evil@b.c>\r\n")
            assert client.read_reply() == (421, ["4.3.2 You again? Bye"])
            assert client.wait_closed()
        rec.wait_disconnects(1)
        with smtp_client(server.address) as client:  # the server serves the next client
            client.sendmail("x@y.z", ["a@b.c"], make_message("next client"))
    assert rec.subjects() == ["next client"]


def test_smtp421_with_smtplib(serve: Serve, styled: Styled[Picky]) -> None:
    rec = styled(Picky)()
    refused = (smtplib.SMTPRecipientsRefused, smtplib.SMTPServerDisconnected)
    with serve(rec) as server, smtp_client(server.address) as client, pytest.raises(refused):
        client.sendmail("x@y.z", ["evil@b.c"], make_message("never"))
    assert rec.deliveries == []
