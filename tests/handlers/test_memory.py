"""`MemoryHandler` and the `StoredMessage` records it keeps."""

from __future__ import annotations

import dataclasses
import smtplib
import ssl
import threading
import time

import pytest

from smtpcore import AuthAttempt, AuthMode, SmtpConfig, TlsMode
from transports.handler import Session
from transports.handlers import MemoryHandler, StoredMessage, resolve_handler
from transports.handlers.trace import protocol_keyword, received_value

from ._support import CLIENT_NAME, MESSAGE, TIMEOUT, send, serve

pytestmark = pytest.mark.network


def subject_message(subject: str) -> bytes:
    return MESSAGE.replace(b"Quarterly numbers", subject.encode())


def test_records_hold_envelope_session_and_exact_content() -> None:
    memory = MemoryHandler()
    with serve(memory) as server:
        send(
            server,
            ["bob@example.org", "carol@example.org"],
            mail_options=["BODY=8BITMIME", "ENVID=abc"],
            rcpt_options=["NOTIFY=SUCCESS"],
        )
    (message,) = memory.messages
    assert message.sender == "alice@example.org"
    assert message.recipients == ("bob@example.org", "carol@example.org")
    assert message.raw == MESSAGE  # no trace fields, no envelope smuggled into headers
    assert dict(message.mail_params) == {
        "SIZE": str(len(MESSAGE)),
        "BODY": "8BITMIME",
        "ENVID": "abc",
    }
    assert [dict(p) for p in message.rcpt_params] == [{"NOTIFY": "SUCCESS"}] * 2
    assert (message.remote_ip, message.helo, message.hostname) == (
        "127.0.0.1",
        CLIENT_NAME,
        "mx.test",
    )
    assert message.esmtp and not message.lmtp and message.tls is None
    assert message.authentication_id is None and not message.authenticated
    assert message.received_at.tzinfo is not None
    # The parsed message: lazily, once, policy.default (so headers are decoded objects).
    assert message.email is message.email
    assert (
        message.email["Subject"] == "Quarterly numbers" and message.subject == "Quarterly numbers"
    )
    assert message.email.get_content().startswith("Hello Bob,")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.sender = "mallory@example.org"  # type: ignore[misc]


def test_wait_for_wakes_on_delivery_and_filters() -> None:
    memory = MemoryHandler()
    with serve(memory) as server:

        def later() -> None:
            time.sleep(0.3)
            send(server, ["bob@example.org"], subject_message("Welcome aboard"))
            send(server, ["carol@example.org"], subject_message("Your invoice"), sender="")
            send(server, ["bob@example.org"], subject_message("Your invoice, again"))

        sender = threading.Thread(target=later)
        started = time.monotonic()
        sender.start()
        (welcome,) = memory.wait_for(subject="Welcome", timeout=TIMEOUT)
        waited = time.monotonic() - started
        assert 0.25 < waited < 2  # woken by the delivery, not by a poll tick or the timeout
        invoices = memory.wait_for(2, subject="invoice")
        sender.join()
        assert [m.recipients for m in invoices] == [("carol@example.org",), ("bob@example.org",)]
        assert [m.subject for m in memory.wait_for(sender="")] == ["Your invoice"]
        bob = memory.wait_for(2, recipient="bob@example.org", sender="alice@example.org")
        assert [m.subject for m in bob] == ["Welcome aboard", "Your invoice, again"]
        assert welcome is bob[0]
        with pytest.raises(TimeoutError) as timed_out:
            memory.wait_for(recipient="dan@example.org", timeout=0.2)
        assert "0 of 1 messages matching (recipient='dan@example.org')" in str(timed_out.value)
        assert "received 3" in str(timed_out.value) and "'Welcome aboard'" in str(timed_out.value)
        memory.clear()
        assert memory.messages == []
        with pytest.raises(TimeoutError):
            memory.wait_for(timeout=0.05)


def test_concurrent_sessions_under_threads() -> None:
    memory = MemoryHandler()
    count = 10
    with serve(memory, "threads") as server:
        threads = [
            threading.Thread(target=send, args=(server, [f"r{n}@example.org"]))
            for n in range(count)
        ]
        for thread in threads:
            thread.start()
        found = memory.wait_for(count)
        for thread in threads:
            thread.join()
    assert sorted(m.recipients[0] for m in found) == sorted(
        f"r{n}@example.org" for n in range(count)
    )
    assert len({m.id for m in found}) == count


def test_max_messages_keeps_the_newest() -> None:
    memory = MemoryHandler(max_messages=2)
    with serve(memory) as server:
        for subject in ("one", "two", "three"):
            send(server, message=subject_message(subject))
    assert [m.subject for m in memory.messages] == ["two", "three"]
    with pytest.raises(ValueError):
        MemoryHandler(max_messages=0)


class AuthMemory(MemoryHandler):
    def on_auth(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> None:
        if password != "secret":
            super().on_auth(ctx, authorization_id, authentication_id, password, attempt)


def test_tls_and_auth_facts_and_the_esmtpsa_keyword() -> None:
    memory = AuthMemory()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL, auth_mode=AuthMode.OPTIONAL)
    client_tls = ssl.create_default_context()
    client_tls.check_hostname = False
    client_tls.verify_mode = ssl.CERT_NONE
    with (
        serve(memory, config=config) as server,
        smtplib.SMTP(*server.address, local_hostname=CLIENT_NAME, timeout=TIMEOUT) as smtp,
    ):
        smtp.starttls(context=client_tls)
        smtp.login("alice", "secret")
        smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    (message,) = memory.messages
    assert message.tls is not None and message.tls.version in ("TLSv1.2", "TLSv1.3")
    assert message.authentication_id == "alice" and message.authenticated
    assert protocol_keyword(message) == "ESMTPSA"
    value = received_value(message)
    assert f"(using {message.tls.version} with cipher {message.tls.cipher}" in value
    assert "with ESMTPSA id" in value


def test_spec() -> None:
    assert isinstance(resolve_handler("memory"), MemoryHandler)
    with pytest.raises(ValueError, match="takes no argument"):
        resolve_handler("memory:100")
    assert StoredMessage.__dataclass_params__.frozen  # type: ignore[attr-defined]
