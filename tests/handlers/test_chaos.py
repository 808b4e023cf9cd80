"""`ChaosHandler`: seeded failure rates, `fail_next`, spec parsing, and faithful delegation
(sync, async, and sync hooks that return awaitables)."""

from __future__ import annotations

import inspect
import logging
import random
import smtplib
from pathlib import Path

import pytest

from smtpcore import AuthAttempt, AuthMode, SmtpConfig
from transports.controller import ServerThread
from transports.handler import Handler, Session
from transports.handlers import (
    ChaosHandler,
    ChaosRule,
    MaildirHandler,
    MemoryHandler,
    Sink,
    parse_chaos,
)

from ._support import CLIENT_NAME, MESSAGE, TIMEOUT, send, send_expecting, serve

pytestmark = pytest.mark.network


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("rcpt=451:0.2", ChaosRule("RCPT", 451, 0.2)),
        ("MAIL=421", ChaosRule("MAIL", 421, 1.0)),
        ("message=554:1", ChaosRule("DATA", 554, 1.0)),
        ("data=452:0", ChaosRule("DATA", 452, 0.0)),
        (" auth=454:0.5 ", ChaosRule("AUTH", 454, 0.5)),
    ],
)
def test_parse_chaos(spec: str, rule: ChaosRule) -> None:
    assert parse_chaos(spec) == rule
    assert parse_chaos(str(rule)) == rule  # the text form round-trips


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("rcpt", "VERB=CODE[:RATE]"),
        ("helo=451", "VERB=CODE[:RATE]"),
        ("=451", "VERB=CODE[:RATE]"),
        ("rcpt=abc", "CODE must be a number"),
        ("rcpt=451:often", "RATE a fraction"),
        ("rcpt=250", "4xx or 5xx"),
        ("rcpt=600", "4xx or 5xx"),
        ("rcpt=451:1.5", "from 0 to 1"),
        ("rcpt=451:-0.1", "from 0 to 1"),
    ],
)
def test_parse_chaos_refuses_clearly(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=f"chaos spec '{spec}'.*{complaint}".replace("[", r"\[")):
        parse_chaos(spec)


def rcpt_outcomes(seed: int) -> tuple[set[str], MemoryHandler]:
    memory = MemoryHandler()
    chaos = ChaosHandler(memory, ["rcpt=451:0.3"], seed=seed)
    recipients = [f"r{n}@example.org" for n in range(30)]
    with serve(chaos) as server:
        refused = send(server, recipients)
    assert all(code == 451 for code, _ in refused.values())
    assert chaos.injected == ({"RCPT": len(refused)} if refused else {})
    return set(refused), memory


def test_seeded_rate_is_deterministic() -> None:
    refused, memory = rcpt_outcomes(seed=7)
    draws = random.Random(7)
    expected = {f"r{n}@example.org" for n in range(30) if draws.random() < 0.3}
    assert refused == expected and 0 < len(refused) < 30
    assert rcpt_outcomes(seed=7)[0] == refused  # the same run again
    (message,) = memory.messages  # the rest got the message, once
    assert set(message.recipients) == {f"r{n}@example.org" for n in range(30)} - refused


def test_fail_next_and_nothing_stored_for_a_failed_message() -> None:
    memory = MemoryHandler()
    chaos = ChaosHandler(memory, seed=1)
    chaos.fail_next("DATA", 452, count=2)
    chaos.fail_next("mail", 421)
    with serve(chaos, "threads") as server:
        exc = send_expecting(server, 421)  # MAIL first: 421, and the session ends
        assert "4.3.2" in str(exc)
        for _ in range(2):
            exc = send_expecting(server, 452)
            assert "4.3.1 Injected DATA failure (chaos)" in str(exc)
        assert memory.messages == []
        send(server)  # the queue is used up
    assert len(memory.messages) == 1
    assert chaos.injected == {"MAIL": 1, "DATA": 2}
    with pytest.raises(ValueError, match="chaos verb"):
        chaos.fail_next("HELO", 451)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        chaos.fail_next("RCPT", 250)


class Accounts(MemoryHandler):
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


def test_auth_failure_then_success() -> None:
    chaos = ChaosHandler(Accounts())
    chaos.fail_next("AUTH", 454)
    config = SmtpConfig(hostname="mx.test", auth_mode=AuthMode.OPTIONAL, allow_insecure_auth=True)
    with (
        serve(chaos, config=config, auth_failure_delay=0) as server,
        smtplib.SMTP(*server.address, local_hostname=CLIENT_NAME, timeout=TIMEOUT) as smtp,
    ):
        smtp.ehlo()
        smtp.user, smtp.password = "alice", "secret"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("PLAIN", smtp.auth_plain)  # login() would quietly try LOGIN next
        assert refused.value.smtp_code == 454
        smtp.auth("PLAIN", smtp.auth_plain)
        smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    assert chaos.handler.messages[0].authentication_id == "alice"  # type: ignore[attr-defined]


class AsyncMemory(MemoryHandler):
    async def on_message(self, ctx: Session) -> None:  # type: ignore[override]
        super().on_message(ctx)

    def on_logging(
        self, ctx: Session | None, level: int, message: str, exc: BaseException | None = None
    ) -> None:
        self.lines = [*getattr(self, "lines", []), message]


def test_async_hooks_stay_async_and_the_threads_transport_still_refuses_them() -> None:
    inner = AsyncMemory()
    chaos = ChaosHandler(inner, ["data=451:0"])
    assert inspect.iscoroutinefunction(chaos.on_message)
    assert not inspect.iscoroutinefunction(chaos.on_rcpt_to)
    chaos.fail_next("DATA", 451)
    with serve(chaos, "trio") as server:
        send_expecting(server, 451)
        send(server)
    assert len(inner.messages) == 1
    assert any("listening" in line or "connected" in line for line in inner.lines)
    with pytest.raises(TypeError, match="is async"):
        ServerThread("threads", chaos, host="127.0.0.1", port=0)


def test_a_sync_hook_returning_an_awaitable_is_passed_through(tmp_path: Path) -> None:
    """MaildirHandler returns an awaitable under asyncio (its disk work runs in a thread)."""
    chaos = ChaosHandler(MaildirHandler(tmp_path / "md"), seed=3)
    chaos.fail_next("DATA", 451)
    with serve(chaos, "asyncio") as server:
        send_expecting(server, 451)
        send(server)
    assert len(list((tmp_path / "md" / "new").iterdir())) == 1


def test_hooks_the_wrapped_handler_leaves_alone_stay_absent() -> None:
    """The driver skips hooks left at their defaults; wrapping must not cost calls."""
    chaos = ChaosHandler(Sink())
    cls = type(chaos)
    for name in ("on_connect", "on_helo", "on_message_data", "on_message_headers", "on_logging"):
        assert getattr(cls, name) is getattr(Handler, name), name
    for name in ("on_mail_from", "on_rcpt_to", "on_message", "on_auth"):
        assert getattr(cls, name) is not getattr(Handler, name), name
    assert cls is type(ChaosHandler(Sink()))  # one wrapper class per wrapped class
    with serve(chaos) as server:
        assert send(server) == {}


def test_rates_zero_and_one(caplog: pytest.LogCaptureFixture) -> None:
    memory = MemoryHandler()
    chaos = ChaosHandler(memory, [ChaosRule("MAIL", 450, 0.0), ChaosRule("RCPT", 550, 1.0)])
    with caplog.at_level(logging.INFO), serve(chaos) as server:
        send_expecting(server, 550)
    assert chaos.injected == {"RCPT": 1}
    assert memory.messages == []
