"""What every transport shares besides the driver: session bookkeeping, timeouts, stop policy."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from typing import Any

from smtpcore import Reply
from smtpcore.replies import SERVICE_UNAVAILABLE

from ._driver import SessionDriver
from .handler import Handler, Session
from .options import ServerOptions
from .tls import tls_facts

__all__ = ["TOO_BUSY", "Registry", "Tracked", "check_sync_handler", "new_session"]

TOO_BUSY = Reply(421, "Too many connections, try again later", "4.7.0").to_bytes()
UNAVAILABLE = SERVICE_UNAVAILABLE.to_bytes()


class Tracked:
    """Per-connection facts the timeout sweep and the stop policy need."""

    __slots__ = ("busy", "data_since", "driver", "last_active")

    def __init__(self, driver: SessionDriver, now: float) -> None:
        self.driver = driver
        self.last_active = now
        self.data_since: float | None = None
        self.busy = False

    def expired(self, now: float, options: ServerOptions) -> bool:
        """True if the idle timeout or the total DATA timeout has passed."""
        conn = self.driver.conn
        if conn.reading_data:
            if self.data_since is None:
                self.data_since = now
            elif options.data_timeout is not None and now - self.data_since > options.data_timeout:
                return True
        else:
            self.data_since = None
        idle = options.idle_timeout
        return idle is not None and not self.busy and now - self.last_active > idle

    def read_deadline(self, now: float, options: ServerOptions) -> float:
        """When a read starting ``now`` must give up, for transports that wait with a deadline
        rather than sweep with `expired`: the idle timeout from now, capped by what is left of
        the DATA timeout (counted from the first read of the message content)."""
        deadline = math.inf if options.idle_timeout is None else now + options.idle_timeout
        if not self.driver.conn.reading_data:
            self.data_since = None
        elif options.data_timeout is not None:
            self.data_since = now if self.data_since is None else self.data_since
            deadline = min(deadline, self.data_since + options.data_timeout)
        return deadline


class Registry:
    """The live sessions of one server, and whether it is stopping."""

    __slots__ = ("options", "sessions", "stopping")

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.sessions: set[Any] = set()
        self.stopping = False

    def full(self) -> bool:
        limit = self.options.max_connections
        return self.stopping or (limit is not None and len(self.sessions) >= limit)

    def expired(self, now: float) -> Iterator[Any]:
        options = self.options
        for session in list(self.sessions):
            if session.tracked is not None and session.tracked.expired(now, options):
                yield session

    def idle(self) -> Iterator[Any]:
        """Sessions a graceful stop may close at once: no transaction, nothing running."""
        for session in list(self.sessions):
            tracked = session.tracked
            if tracked is not None and not tracked.busy and not tracked.driver.conn.in_transaction:
                yield session


def new_session(
    handler: Handler,
    options: ServerOptions,
    sockname: Any,
    peername: Any,
    *,
    sleep: Any,
    ssl_object: Any = None,
) -> SessionDriver:
    """A driver with its session context filled from the socket's addresses."""
    ctx = Session(
        local_ip=str(sockname[0]),
        local_port=int(sockname[1]),
        remote_ip=str(peername[0]),
        remote_port=int(peername[1]),
    )
    if ssl_object is not None:
        ctx.tls = tls_facts(ssl_object)
    return SessionDriver(
        handler,
        options.config,
        ctx,
        sleep=sleep,
        auth_failure_delay=options.auth_failure_delay,
        tls_active=ssl_object is not None,
        logger=options.logger,
    )


def reverse_names(ctx: Session) -> None:
    """Fill ``local_host``/``remote_host`` by reverse DNS (blocking; run it off the loop)."""
    for attr, ip in (("local_host", ctx.local_ip), ("remote_host", ctx.remote_ip)):
        try:
            name = socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)[0]
        except OSError:
            name = ip
        setattr(ctx, attr, name)


def check_sync_handler(handler: Handler) -> None:
    """The threads transport cannot await: refuse ``async def`` hooks at start-up."""
    import inspect

    for name in dir(handler):
        if name.startswith("on_") and inspect.iscoroutinefunction(getattr(handler, name)):
            raise TypeError(f"{type(handler).__name__}.{name} is async; use an async transport")
