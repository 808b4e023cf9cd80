"""Drive an `SmtpConnection` by hand in tests: feed bytes, collect events and output."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from smtpcore import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    DataChunk,
    Event,
    Reply,
    SmtpConfig,
    SmtpConnection,
)

Decider = Callable[[SmtpConnection, Event], None]


def accept_all(conn: SmtpConnection, event: Event) -> None:
    """Accept every decision (AUTH included)."""
    conn.accept(event)


def pump(
    conn: SmtpConnection, decide: Decider = accept_all, out: bytearray | None = None
) -> list[Event]:
    """Take events until the core needs data or closes, answering decisions with ``decide``.

    When replies pile up (`SmtpConnection.output_full`) they are moved to ``out``, as a
    transport would write them, and parsing goes on.
    """
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA and conn.output_full:
            if out is None:
                raise AssertionError("replies piled up: pass out= to collect them")
            out += conn.data_to_send()
            continue
        if event is NEED_DATA or event is PAUSED:
            return events
        assert isinstance(event, Event)
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        if event.needs_reply:
            decide(conn, event)


def feed(
    conn: SmtpConnection, chunks: Iterable[bytes], decide: Decider = accept_all
) -> tuple[list[Event], bytes]:
    """Feed each chunk in turn; return every event and every byte written."""
    out = bytearray()
    events = pump(conn, decide, out)
    out += conn.data_to_send()
    for chunk in chunks:
        if conn.closed:
            break
        conn.receive_data(chunk)
        events += pump(conn, decide, out)
        out += conn.data_to_send()
    return events, bytes(out)


def session(
    data: bytes | Iterable[bytes],
    config: SmtpConfig | None = None,
    decide: Decider = accept_all,
    **kwargs: object,
) -> tuple[list[Event], bytes]:
    """A fresh connection fed ``data`` (one chunk or several)."""
    conn = SmtpConnection(config or SmtpConfig(hostname="mx.test"), **kwargs)  # type: ignore[arg-type]
    chunks = [data] if isinstance(data, bytes) else list(data)
    return feed(conn, chunks, decide)


def replies(out: bytes) -> list[str]:
    """The reply lines written, without CRLF."""
    return out.decode("utf-8").split("\r\n")[:-1]


def codes(out: bytes) -> list[int]:
    """The code of each complete reply (last line of multi-line replies)."""
    return [int(line[:3]) for line in replies(out) if line[3:4] != "-"]


def merged(events: list[Event]) -> list[Event]:
    """Events with adjacent DataChunks joined, so chunkings can be compared."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(data=out[-1].data + event.data)
        else:
            out.append(event)
    return out


def content(events: list[Event]) -> bytes:
    """All message content delivered in ``events``."""
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


__all__ = [
    "Reply",
    "accept_all",
    "codes",
    "content",
    "feed",
    "merged",
    "pump",
    "replies",
    "session",
]
