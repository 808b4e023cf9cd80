"""The catcher's view of a `MemoryHandler`: look-ups, removal of some messages, retention.

`MemoryHandler` is the one store: tests (``wait_for``), the pytest plugin and the catcher all
see the same messages. Its public API has no "remove these" and no change notification, so
this adapter, and only it, reaches into the handler's lock (``_changed``, a `Condition` over
an `RLock`, notified on every ``add``) and its deque (``_messages``). Removal happens under that
lock, so a message that arrives meanwhile is never lost.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from transports.handlers.memory import MemoryHandler
from transports.handlers.stored import StoredMessage

__all__ = ["Store"]


class Store:
    """Thread-safe access to a `MemoryHandler`'s messages, with retention limits.

    Args:
        handler: the handler whose messages are shown.
        max_messages: keep at most this many (oldest dropped first); None: no limit here (the
            handler's own ``max_messages`` still applies).
        max_age: drop messages received more than this many seconds ago; None: keep them.
    """

    def __init__(
        self,
        handler: MemoryHandler,
        *,
        max_messages: int | None = None,
        max_age: float | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be at least 1 or None")
        if max_age is not None and not max_age > 0:
            raise ValueError("max_age must be positive or None")
        self.handler = handler
        self.max_messages = max_messages
        self.max_age = max_age
        self._clock = clock or (lambda: datetime.now(UTC))
        self.changed: threading.Condition = handler._changed
        self._messages: deque[StoredMessage] = handler._messages

    def snapshot(self) -> list[StoredMessage]:
        """The messages kept, oldest first, after applying the retention limits."""
        with self.changed:
            self.prune()
            return list(self._messages)

    def held(self) -> list[StoredMessage]:
        """The messages as they are, no retention applied (for the watcher; hold `changed`)."""
        return list(self._messages)

    def get(self, message_id: str) -> StoredMessage | None:
        """The message with this id; ``latest`` names the newest (as in Mailpit)."""
        messages = self.snapshot()
        if message_id == "latest":
            return messages[-1] if messages else None
        for message in messages:
            if message.id == message_id:
                return message
        return None

    def remove(self, ids: Collection[str] | None = None) -> list[str]:
        """Drop the messages with these ids (every message when ``ids`` is None); returns the
        ids dropped, in arrival order."""
        with self.changed:
            if ids is None:
                dropped = [m.id for m in self._messages]
                self._messages.clear()
            else:
                wanted = set(ids)
                dropped = self._drop(lambda m: m.id in wanted)
            if dropped:
                self.changed.notify_all()  # the catcher's watcher reports the deletion
            return dropped

    def prune(self) -> list[str]:
        """Apply ``max_age`` and ``max_messages`` now; returns the ids dropped."""
        dropped: list[str] = []
        with self.changed:
            if self.max_age is not None:
                oldest_kept = self._clock() - timedelta(seconds=self.max_age)
                dropped += self._drop(lambda m: m.received_at < oldest_kept)
            if self.max_messages is not None:
                while len(self._messages) > self.max_messages:
                    dropped.append(self._messages.popleft().id)
            if dropped:
                self.changed.notify_all()
        return dropped

    def next_expiry(self) -> float | None:
        """Seconds until the oldest message outlives ``max_age`` (None without ``max_age`` or
        messages), so the watcher can wake just then."""
        if self.max_age is None:
            return None
        with self.changed:
            if not self._messages:
                return None
            oldest = min(m.received_at for m in self._messages)
        expires = oldest + timedelta(seconds=self.max_age)
        return max(0.0, (expires - self._clock()).total_seconds())

    def _drop(self, doomed: Callable[[StoredMessage], bool]) -> list[str]:
        """Remove the matching messages in place (the deque keeps its ``maxlen``); hold the lock."""
        kept: list[StoredMessage] = []
        dropped: list[str] = []
        for message in self._messages:
            if doomed(message):
                dropped.append(message.id)
            else:
                kept.append(message)
        if not dropped:
            return []
        self._messages.clear()
        self._messages.extend(kept)
        return dropped
