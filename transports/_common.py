"""What every transport shares besides the driver: session bookkeeping, timeouts, stop policy."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smtpcore import Event, Reply, SmtpConnection
from smtpcore.proxy import ProxyInfo, ProxyProtocolError, trusted
from smtpcore.replies import SERVICE_UNAVAILABLE

from ._driver import _NO_OP_HOOKS, OnResult, SessionDriver
from .handler import Handler, Session
from .options import ServerOptions
from .tls import tls_facts

if TYPE_CHECKING:
    from .ops import Observer

__all__ = [
    "TOO_BUSY",
    "Proxied",
    "Registry",
    "Tracked",
    "check_sync_handler",
    "new_session",
    "proxy_hook",
    "proxy_peer_trusted",
    "refuse_connection",
]

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


@dataclass(frozen=True, slots=True)
class Proxied:
    """``Session.proxy`` on a ``proxy_protocol`` listener: what the PROXY header said, and the
    socket's real peer (the proxy that sent it)."""

    info: ProxyInfo
    peer_ip: str
    peer_port: int


def new_session(
    handler: Handler,
    options: ServerOptions,
    sockname: Any,
    peername: Any,
    *,
    sleep: Any,
    ssl_object: Any = None,
    proxy: ProxyInfo | None = None,
) -> SessionDriver:
    """A driver with its session context filled from the socket's addresses, or from the
    PROXY header ``proxy`` when it names the client (``ctx.proxy`` then keeps the socket's
    peer). With an observer in the options the driver reports to it."""
    local = (sockname[0], sockname[1])
    remote = (peername[0], peername[1])
    proxied = None
    if proxy is not None:
        proxied = Proxied(proxy, str(peername[0]), int(peername[1]))
        if proxy.addresses_known:
            remote = (proxy.source_address, proxy.source_port)
            local = (proxy.destination_address, proxy.destination_port)
    ctx = Session(
        local_ip=str(local[0]),
        local_port=int(local[1]),
        remote_ip=str(remote[0]),
        remote_port=int(remote[1]),
        proxy=proxied,
    )
    if ssl_object is not None:
        ctx.tls = tls_facts(ssl_object)
    observer = options.observer
    kind = SessionDriver if observer is None else ObservedDriver
    driver = kind(
        handler,
        options.config,
        ctx,
        sleep=sleep,
        auth_failure_delay=options.auth_failure_delay,
        tls_active=ssl_object is not None,
        logger=options.logger,
    )
    if observer is not None:
        assert isinstance(driver, ObservedDriver)
        driver.observe(observer)
        if ssl_object is not None:
            observer.tls_handshake(True)
    return driver


# ---------------------------------------------------- observing (ServerOptions.observer)


class _ObservedConnection(SmtpConnection):
    """The core, reporting each message's final reply: every one goes through
    ``_send_per_recipient`` (accepted, refused by a hook, or refused while the content
    streamed: too large, bare LF, a content hook)."""

    __slots__ = ("observer",)

    observer: Observer

    def _send_per_recipient(self, replies: Sequence[Reply]) -> None:
        super()._send_per_recipient(replies)
        answered = self.observer.message_answered
        for reply in replies if self.config.lmtp else replies[:1]:
            answered(reply.code)


class ObservedDriver(SessionDriver):
    """A `SessionDriver` that tells an `Observer` about its session: start and end, bytes,
    TLS handshakes, hook latency and (through its core) message replies. `new_session` uses it
    only when an observer is set, so unobserved servers pay nothing."""

    __slots__ = ("_hook_end", "_started", "observer")

    connection_class = _ObservedConnection
    observer: Observer

    def observe(self, observer: Observer) -> None:
        """Start reporting to ``observer`` (right after construction, before any event)."""
        self.observer = observer
        self._started = False
        self._hook_end: float | None = None
        assert isinstance(self.conn, _ObservedConnection)
        self.conn.observer = observer

    def feed(self, data: bytes) -> None:
        if data:
            self.observer.bytes_received(len(data))
        super().feed(data)

    def pump(self) -> Any:
        if not self._started:
            self._started = True
            self.observer.session_started()
        return super().pump()

    def disconnected(self) -> Any:
        if self._started:
            self._started = False
            self.observer.session_ended()
        return super().disconnected()

    def tls_started(self, facts: Any) -> None:
        self.observer.tls_handshake(True)
        super().tls_started(facts)

    def tls_failed(self, exc: BaseException) -> None:
        self.observer.tls_handshake(False)
        super().tls_failed(exc)

    def _call(
        self, event: Event, name: str, args: tuple[Any, ...], then: OnResult | None
    ) -> Awaitable[None] | None:
        if name in _NO_OP_HOOKS and name not in self.live:  # not called: nothing to time
            return super()._call(event, name, args, then)
        self._hook_end = None
        start = time.perf_counter()
        pending = super()._call(event, name, args, then)
        if pending is None:
            self.observer.hook_finished(name, (self._hook_end or time.perf_counter()) - start)
            return None
        return self._timed(pending, name, start)

    async def _timed(self, pending: Awaitable[None], name: str, start: float) -> None:
        try:
            await pending
        finally:
            self.observer.hook_finished(name, (self._hook_end or time.perf_counter()) - start)

    def _failed(self, event: Event, exc: Exception) -> Awaitable[None] | None:
        # The hook ended here: what follows (the pause after a failed AUTH) is not its time.
        self._hook_end = time.perf_counter()
        return super()._failed(event, exc)


# ---------------------------------------------------------------- PROXY protocol


def proxy_header_failure(exc: ProxyProtocolError, data: bytes) -> tuple[str, str]:
    """(reason, detail) for refusing a bad PROXY header: malformed, or the peer closed
    (``data`` empty) before it ended."""
    if data:
        return "proxy-malformed", f"bad PROXY header: {exc}"
    return "proxy-incomplete", "closed before its PROXY header ended"


def proxy_peer_trusted(options: ServerOptions, peername: Any) -> bool:
    """Whether the socket's peer is one of ``options.trusted_proxies``."""
    return trusted(str(peername[0]), options.trusted_proxies)


def refuse_connection(
    handler: Handler, options: ServerOptions, peername: Any, reason: str, detail: str
) -> None:
    """Log (through ``handler.on_logging``, as sessionless lines are) and count a connection
    closed before its session, without a reply."""
    where = f"[{peername[0]}:{peername[1]}]" if peername else "[?]"
    try:
        handler.on_logging(None, logging.WARNING, f"{where} {detail}; closed without a reply")
    except Exception as exc:  # a logging hook must not keep the connection open
        options.logger.error("on_logging failed: %r", exc, exc_info=exc)
    if options.observer is not None:
        options.observer.connection_refused(reason)


def proxy_hook(handler: Handler, driver: SessionDriver, info: ProxyInfo) -> Any:
    """Call `Handler.on_proxy` if the handler's class overrides it (None otherwise); its
    result may need awaiting. It raises to refuse the connection."""
    if type(handler).on_proxy is Handler.on_proxy:
        return None
    return handler.on_proxy(driver.ctx, info)


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
