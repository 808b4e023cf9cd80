"""Change notification: a watcher thread that turns the store's changes into events, and the
hub that fans them out to the server-sent-event streams (``GET /api/v1/events``).

The watcher compares what the handler holds with what it saw last, so every change is
reported whoever made it: SMTP deliveries, the API's deletions, retention, or a test calling
``handler.clear()``. It waits on the handler's condition (notified on each delivery), with a
timeout for changes that do not notify (``clear``) and for ``max_age``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from transports.handlers.stored import StoredMessage

from ._store import Store

__all__ = ["EventHub", "Subscriber", "Watcher", "sse_frame"]

_LOG = logging.getLogger("smtpcore.catcher")

RESET = "reset"
"""Sent to a subscriber that fell too far behind: its queue was dropped, reload everything."""


def sse_frame(event: str, data: Any) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscriber:
    """One event stream's queue of frames, bounded: one that overflows is replaced by a
    ``reset`` event rather than growing without end behind a client that does not read."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._frames: deque[bytes] = deque()
        self._ready = threading.Condition()
        self.closed = False

    def push(self, frame: bytes) -> None:
        with self._ready:
            if len(self._frames) >= self._limit:
                self._frames.clear()
                frame = sse_frame(RESET, {})
            self._frames.append(frame)
            self._ready.notify_all()

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def take(self, timeout: float) -> list[bytes] | None:
        """The frames queued (waiting up to ``timeout`` for one; ``[]`` if none came), or None
        once closed."""
        with self._ready:
            if not self._frames and not self.closed:
                self._ready.wait(timeout)
            if self.closed:
                return None
            frames = list(self._frames)
            self._frames.clear()
            return frames


class EventHub:
    """Fans each event out to every open stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._closed = False

    def subscribe(self) -> Subscriber | None:
        """A new stream's queue, or None once the hub is closed."""
        with self._lock:
            if self._closed:
                return None
            subscriber = Subscriber()
            self._subscribers.add(subscriber)
            return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)
        subscriber.close()

    def publish(self, event: str, data: Any) -> None:
        frame = sse_frame(event, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.push(frame)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """End every stream (the catcher is stopping)."""
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for subscriber in subscribers:
            subscriber.close()


class Watcher:
    """A daemon thread: applies retention as messages arrive and periodically, and publishes
    ``new`` (a message summary) and ``deleted`` (``{"IDs": [...]}``) events."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        summarize: Callable[[StoredMessage], dict[str, Any]],
        *,
        interval: float = 0.5,
    ) -> None:
        self._store = store
        self._hub = hub
        self._summarize = summarize
        self._interval = interval
        self._stopping = False
        self._known: dict[str, StoredMessage] = {m.id: m for m in store.snapshot()}
        self._thread = threading.Thread(
            target=self._run, name="smtpcore-catcher-watch", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._store.changed:
            self._stopping = True
            self._store.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            current = self._wait_for_change()
            if current is None:
                return
            try:
                self._report(current)
            except Exception:  # a summary that cannot be made must not end the watcher
                _LOG.exception("catcher: cannot report a change")

    def _wait_for_change(self) -> list[StoredMessage] | None:
        """Wait until the messages differ from the ones known (or a message expires); returns
        them, retention applied, or None when stopping. Holds the handler's lock only while
        looking, so deliveries never wait for the summaries."""
        changed = self._store.changed
        with changed:
            while not self._stopping:
                self._store.prune()
                current = self._store.held()
                if [m.id for m in current] != list(self._known):
                    return current
                expiry = self._store.next_expiry()
                changed.wait(self._interval if expiry is None else min(self._interval, expiry))
            return None

    def _report(self, current: list[StoredMessage]) -> None:
        now = {m.id: m for m in current}
        deleted = [message_id for message_id in self._known if message_id not in now]
        arrived = [m for m in current if m.id not in self._known]
        self._known = now
        if not self._hub.count:
            return  # nobody listens: spare the summaries
        if deleted:
            self._hub.publish("deleted", {"IDs": deleted})
        for message in arrived:
            self._hub.publish("new", self._summarize(message))
