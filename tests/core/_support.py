"""Transcript helpers shared by the tests in ``tests/core`` (built on ``tests.helpers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from smtpcore import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Event,
    Reply,
    SmtpConfig,
    SmtpConnection,
)
from tests.helpers import Decider, accept_all, feed, replies, session

E = TypeVar("E", bound=Event)

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<sender@example.org>\r\n"
RCPT = b"RCPT TO:<rcpt@example.net>\r\n"
BANNER = "220 mx.test ESMTP ready"


def config(**kwargs: Any) -> SmtpConfig:
    """An `SmtpConfig` for host ``mx.test`` (unless overridden) with the given overrides."""
    return SmtpConfig(**{"hostname": "mx.test", **kwargs})


def transcript(
    data: bytes | Iterable[bytes],
    cfg: SmtpConfig | None = None,
    decide: Decider = accept_all,
    **kwargs: object,
) -> list[str]:
    """Every reply line a fresh session writes for ``data`` (banner included)."""
    return replies(session(data, cfg or config(), decide, **kwargs)[1])


def connect(
    cfg: SmtpConfig | None = None,
    *,
    ehlo: bytes | None = EHLO,
    tls_active: bool = False,
    decide: Decider = accept_all,
) -> SmtpConnection:
    """A connection past the banner (and ``ehlo`` unless None), its output drained."""
    conn = SmtpConnection(cfg or config(), tls_active=tls_active)
    feed(conn, [ehlo] if ehlo else [], decide)
    conn.data_to_send()
    return conn


def send(
    conn: SmtpConnection, data: bytes | Iterable[bytes], decide: Decider = accept_all
) -> tuple[list[Event], list[str]]:
    """Feed ``data`` (one chunk or several); return the events and the reply lines."""
    chunks = [data] if isinstance(data, bytes) else list(data)
    events, out = feed(conn, chunks, decide)
    return events, replies(out)


def drive(
    conn: SmtpConnection,
    data: bytes | Iterable[bytes],
    hook: Callable[[SmtpConnection, Event], None],
) -> tuple[list[Event], list[str]]:
    """Like `send`, but ``hook`` sees every event; decisions it leaves open are accepted."""
    chunks = [data] if isinstance(data, bytes) else list(data)
    events: list[Event] = []
    out = bytearray(conn.data_to_send())
    for chunk in chunks:
        if conn.closed:
            break
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            assert isinstance(event, Event)
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            hook(conn, event)
            if event.needs_reply and conn.pending is event:
                conn.accept(event)
        out += conn.data_to_send()
    return events, replies(bytes(out))


def rejecting(*kinds: type[Event], reply: Reply | None = None) -> Decider:
    """A decider that rejects events of ``kinds`` (with ``reply``) and accepts the rest."""

    def decide(conn: SmtpConnection, event: Event) -> None:
        if isinstance(event, kinds):
            conn.reject(event, reply)
        else:
            conn.accept(event)

    return decide


def of_type(events: Iterable[Event], kind: type[E]) -> list[E]:
    """The events of one type, in order."""
    return [e for e in events if isinstance(e, kind)]


def kinds(events: Iterable[Event]) -> list[str]:
    """Event class names, for order assertions."""
    return [type(e).__name__ for e in events]


def start_data(conn: SmtpConnection, *, mail: bytes = MAIL, rcpt: bytes = RCPT) -> None:
    """Run MAIL, RCPT and DATA on ``conn`` and check the 250/250/354 replies."""
    _, lines = send(conn, mail + rcpt + b"DATA\r\n")
    assert [line[:3] for line in lines] == ["250", "250", "354"], lines
