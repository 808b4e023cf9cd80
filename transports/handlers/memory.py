"""`MemoryHandler`: keeps every message in memory, for tests, fixtures and mail catchers.

A test sends mail through the code under test and then waits for it::

    mail = MemoryHandler()
    with ServerThread("asyncio", mail, port=0) as server:
        app.send_welcome(smtp_port=server.address[1])
        (message,) = mail.wait_for(recipient="new@example.org", subject="Welcome")

`wait_for` blocks on a condition the delivering thread signals, so it returns the moment the
message is in, without polling, whichever transport (and thread) delivered it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from transports.handler import Handler, Session

from .stored import StoredMessage

__all__ = ["MemoryHandler"]


class MemoryHandler(Handler):
    """Accepts every message and keeps it as a `StoredMessage`, in arrival order.

    Args:
        max_messages: keep at most this many, dropping the oldest first (a long-running
            catcher then uses bounded memory); None keeps everything.

    Safe to use from any thread: hooks append under a lock while tests read and wait.
    """

    def __init__(self, max_messages: int | None = None) -> None:
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be at least 1 or None")
        self.max_messages = max_messages
        self._messages: deque[StoredMessage] = deque(maxlen=max_messages)
        self._changed = threading.Condition()

    def on_message(self, ctx: Session) -> None:
        self.add(StoredMessage.from_session(ctx))

    def add(self, message: StoredMessage) -> None:
        """Keep ``message`` and wake the waiters (also for messages made by hand in tests)."""
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    @property
    def messages(self) -> list[StoredMessage]:
        """A snapshot of the messages kept, oldest first."""
        with self._changed:
            return list(self._messages)

    def clear(self) -> None:
        """Forget every message (between tests, say)."""
        with self._changed:
            self._messages.clear()

    def wait_for(
        self,
        count: int = 1,
        timeout: float = 5.0,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        subject: str | None = None,
    ) -> list[StoredMessage]:
        """Wait until at least ``count`` kept messages match, and return all that match.

        Args:
            count: how many matching messages to wait for.
            timeout: seconds to wait at most.
            sender: the envelope sender must be this (``""`` for ``<>``).
            recipient: this address must be among the envelope recipients.
            subject: this text must occur in the decoded Subject.

        Raises:
            TimeoutError: if fewer than ``count`` match in time; the message lists what was
                received, which is what one needs to see when a test fails here.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        match = _matcher(sender, recipient, subject)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in self._messages if match(m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [_describe(m) for m in self._messages]
                    raise TimeoutError(
                        f"{len(found)} of {count} messages matching "
                        f"{_describe_filters(sender, recipient, subject)} after {timeout} s; "
                        f"received {len(seen)}: {seen}"
                    )
                self._changed.wait(left)


def _matcher(
    sender: str | None, recipient: str | None, subject: str | None
) -> Callable[[StoredMessage], bool]:
    def match(message: StoredMessage) -> bool:
        if sender is not None and message.sender != sender:
            return False
        if recipient is not None and recipient not in message.recipients:
            return False
        return subject is None or subject in (message.subject or "")

    return match


def _describe(message: StoredMessage) -> str:
    return f"<{message.sender}> -> {list(message.recipients)} {message.subject!r}"


def _describe_filters(sender: str | None, recipient: str | None, subject: str | None) -> str:
    given = {"sender": sender, "recipient": recipient, "subject": subject}
    shown = ", ".join(f"{key}={value!r}" for key, value in given.items() if value is not None)
    return f"({shown})" if shown else "(any)"
