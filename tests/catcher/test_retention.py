"""Retention: ``max_messages`` and ``max_age`` keep a long-running catcher bounded."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from transports.catcher import Catcher
from transports.catcher._store import Store
from transports.handlers.memory import MemoryHandler
from transports.handlers.stored import StoredMessage

from ._support import TIMEOUT, plain, request, running, send

pytestmark = pytest.mark.network

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def stored(message_id: str, received_at: datetime = T0) -> StoredMessage:
    return StoredMessage(
        id=message_id,
        sender="alice@example.org",
        recipients=("bob@example.org",),
        raw=f"Subject: {message_id}\r\n\r\nbody\r\n".encode(),
        received_at=received_at,
    )


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_store_prunes_by_count_and_age_with_a_clock() -> None:
    now = [T0]
    mail = MemoryHandler()
    store = Store(mail, max_messages=3, max_age=60, clock=lambda: now[0])
    for n in range(5):
        mail.add(stored(f"m{n}", T0 + timedelta(seconds=n * 10)))
    assert store.prune() == ["m0", "m1"]  # by count: the oldest first
    assert [m.id for m in mail.messages] == ["m2", "m3", "m4"]
    assert store.next_expiry() == 80.0  # m2 (received at +20 s) expires at +80 s
    now[0] = T0 + timedelta(seconds=85)
    assert store.prune() == ["m2"]  # by age
    now[0] = T0 + timedelta(days=1)
    assert store.snapshot() == []  # every read applies the limits
    assert store.next_expiry() is None


def test_limits_are_checked() -> None:
    mail = MemoryHandler()
    with pytest.raises(ValueError):
        Catcher(mail, max_messages=0)
    for age in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            Catcher(mail, max_age=age)


def test_max_messages_prunes_as_mail_arrives() -> None:
    with running(max_messages=2) as (mail, server, catcher):
        for n in range(4):
            send(server, plain(subject=f"n{n}"))
        # Pruned on insert (the catcher wakes on each delivery), without any API call:
        wait_until(lambda: len(mail.messages) == 2)
        assert [m.subject for m in mail.messages] == ["n2", "n3"]
        listing = request(catcher.url, "GET", "/api/v1/messages").json()
    assert listing["total"] == 2
    assert [m["Subject"] for m in listing["messages"]] == ["n3", "n2"]


def test_max_age_prunes_periodically_and_reports_the_deletion() -> None:
    with running(max_age=0.6, watch_interval=0.1) as (mail, server, catcher):
        send(server, plain(subject="short-lived"))
        (message,) = mail.messages
        subscriber = catcher.hub.subscribe()
        assert subscriber is not None
        wait_until(lambda: not mail.messages, timeout=5)  # no request needed
        pruned_at = datetime.now(UTC)
        frames = b"".join(subscriber.take(TIMEOUT) or [])
        catcher.hub.unsubscribe(subscriber)
    # Not before it was max_age old (an ordering of events, not a speed: any delay passes).
    assert pruned_at - message.received_at >= timedelta(seconds=0.6)
    assert frames == f'event: deleted\ndata: {{"IDs":["{message.id}"]}}\n\n'.encode()


def test_old_messages_are_pruned_at_start_and_before_answers() -> None:
    mail = MemoryHandler()
    mail.add(stored("ancient", datetime.now(UTC) - timedelta(hours=2)))
    mail.add(stored("fresh", datetime.now(UTC)))
    with Catcher(mail, max_age=3600, watch_interval=30) as catcher:
        assert [m.id for m in mail.messages] == ["fresh"]
        mail.add(stored("late-ancient", datetime.now(UTC) - timedelta(hours=3)))
        listing = request(catcher.url, "GET", "/api/v1/messages").json()
    assert [m["ID"] for m in listing["messages"]] == ["fresh"]


def test_removal_never_loses_a_message_arriving_meanwhile() -> None:
    mail = MemoryHandler()
    store = Store(mail)
    doomed = [f"d{n}" for n in range(200)]
    for message_id in doomed:
        mail.add(stored(message_id))
    template = stored("x")

    def deliver() -> None:
        for n in range(300):
            mail.add(dataclasses.replace(template, id=f"k{n}"))

    adder = threading.Thread(target=deliver)
    adder.start()
    for message_id in doomed:  # one by one, interleaved with the deliveries
        store.remove([message_id])
    adder.join(TIMEOUT)
    assert [m.id for m in mail.messages] == [f"k{n}" for n in range(300)]
