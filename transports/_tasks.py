"""The trio transport's sessions and server: one task per connection, driving the core with
plain awaits.

A session reads only when the driver asks for it, so replies stay in order and bytes sent after
STARTTLS are never read as plaintext. Every library call goes through a `Backend`, which
`transports.trio` supplies with trio's own calls (subclassing `TaskServer` as its `Server`);
tests swap it on one server to intercept reads.

On a ``proxy_protocol`` listener the connection's task first reads the PROXY header (within
``proxy_timeout``) and creates the session only then, with the addresses it names.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, suppress
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, TypeVarTuple, cast

from smtpcore import CloseReason
from smtpcore.proxy import ProxyHeaderParser, ProxyInfo, ProxyProtocolError

from ._common import (
    TOO_BUSY,
    Registry,
    Tracked,
    new_session,
    proxy_header_failure,
    proxy_hook,
    proxy_peer_trusted,
    refuse_connection,
    reverse_names,
)
from ._driver import Action
from .handler import Handler
from .options import Listener, ServerOptions
from .tls import tls_facts

__all__ = ["Backend", "TaskServer"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_FLUSH = 0.5
"""Seconds for last words: a forced stop's 421 (then the session task is cancelled), the
421 to a client past ``max_connections``, a TLS close_notify."""


class Resource(Protocol):
    """A stream or a listener: something to close."""

    async def aclose(self) -> None: ...


class Scope(Protocol):
    """A cancel scope (`trio.CancelScope`)."""

    def cancel(self) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> bool: ...


class Event(Protocol):
    def set(self) -> None: ...

    async def wait(self) -> None: ...


class TaskGroup(Protocol):
    """A `trio.Nursery`."""

    @property
    def cancel_scope(self) -> Scope: ...

    def start_soon(
        self, fn: Callable[[*Ts], Coroutine[Any, Any, object]], /, *args: *Ts
    ) -> object: ...


StreamT = TypeVar("StreamT", bound=Resource)
ListenerT = TypeVar("ListenerT", bound=Resource)


class Backend(ABC, Generic[StreamT, ListenerT]):
    """Every call the session and server logic makes into the library. ``StreamT`` is the
    library's byte stream (plain or TLS), ``ListenerT`` its listening socket; both are closed
    with their own ``aclose()``."""

    name: str
    """For the log: ``smtpcore (<name>) listening on ...``."""
    gone: tuple[type[Exception], ...]
    """What a read, a write or a handshake raises when the peer is gone or TLS broke; its
    ``__cause__`` is the `OSError` that says why, if there was one."""

    @abstractmethod
    def current_time(self) -> float: ...

    @abstractmethod
    async def sleep(self, seconds: float) -> None: ...

    @abstractmethod
    def cancel_scope(self, *, shield: bool = False) -> Scope: ...

    @abstractmethod
    def move_on_after(self, seconds: float) -> Scope: ...

    @abstractmethod
    def event(self) -> Event: ...

    @abstractmethod
    def task_group(self) -> AbstractAsyncContextManager[TaskGroup]: ...

    @abstractmethod
    def run_in_thread(self, fn: Callable[[*Ts], T], *args: *Ts) -> Awaitable[T]:
        """Run blocking ``fn`` in a worker thread, abandoned (left to finish) if cancelled."""

    @abstractmethod
    async def listen(self, host: str, port: int) -> list[ListenerT]:
        """Bind every address ``host`` resolves to."""

    async def adopt(self, sock: socket.socket) -> ListenerT:
        """A listener on ``sock``, already bound and listening (it takes ``sock`` over).

        trio's, written here; a backend may override it."""
        import trio

        return cast(ListenerT, trio.SocketListener(trio.socket.from_stdlib_socket(sock)))

    @abstractmethod
    def local_address(self, listener: ListenerT) -> Any: ...

    @abstractmethod
    async def accept(self, listener: ListenerT) -> StreamT: ...

    @abstractmethod
    def addresses(self, stream: StreamT) -> tuple[Any, Any]:
        """(sockname, peername) of an accepted stream; `OSError` if the client is gone."""

    @abstractmethod
    def receiver(self, stream: StreamT) -> Callable[[int], Awaitable[bytes]]:
        """Read up to so many bytes; ``b""`` (or one of `gone`) at EOF. Each read must be a
        checkpoint: a session that is never kept waiting yields nowhere else."""

    @abstractmethod
    def sender(self, stream: StreamT) -> Callable[[bytes], Awaitable[None]]:
        """Send all of it."""

    @abstractmethod
    async def aclose_forcefully(self, stream: StreamT) -> None: ...

    @abstractmethod
    async def start_tls(self, stream: StreamT, context: ssl.SSLContext) -> StreamT:
        """Wrap ``stream`` in server-side TLS and run the handshake (no timeout of its own)."""

    @abstractmethod
    def ssl_object(self, tls: StreamT) -> ssl.SSLObject:
        """The `ssl.SSLObject` of a stream `start_tls` returned, for `tls_facts`."""


async def _handshake(
    backend: Backend[StreamT, Any], stream: StreamT, options: ServerOptions
) -> StreamT:
    """Server-side TLS on ``stream`` within the handshake timeout; failures raise an `OSError`
    that says what went wrong (the `ssl.SSLError`, not the library's bare wrapper), for the log."""
    assert options.tls_context is not None  # ServerOptions sets one whenever TLS is on
    timeout = options.tls_handshake_timeout
    try:
        with backend.move_on_after(timeout):
            return await backend.start_tls(stream, options.tls_context)
    except backend.gone as exc:
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise ConnectionError("connection lost during the handshake") from exc
    raise TimeoutError(f"no handshake in {timeout} s")


_READ, _SEND = "read", "send"
"""What a session waits for (`_Session.waiting`)."""


class _Session(Generic[StreamT]):
    """One connection's task. `shutdown` (from `TaskServer.stop`) interrupts a pending read
    only, so the session itself writes the 421 and a running hook is not cut short (until a
    forced stop cancels the task after `_FLUSH`).

    Timeouts cost a clock reading per read: a read or send has a `deadline` (the sweep sets a
    send's), and the server's `TaskServer._sweep` interrupts it once that has passed. To
    interrupt is to cancel `scope`, the session's one cancel scope (a new one after each
    interruption it survives): a cancel scope with a deadline per read and per send (trio's
    deadline heap, asyncio timers) cost more than all the rest the transport does per message."""

    __slots__ = (
        "closing",
        "deadline",
        "end",
        "interrupted",
        "receive",
        "scope",
        "send",
        "server",
        "stream",
        "tracked",
        "waiting",
        "woken",
    )

    def __init__(self, server: TaskServer[StreamT, Any], stream: StreamT, tracked: Tracked):
        self.server = server
        self.tracked = tracked
        self.closing = False
        self.woken = False
        self.end = CloseReason.SERVER_CLOSED  # if the core did not end the session itself
        self.waiting: str | None = None
        """`_READ` or `_SEND` while the session awaits one, else None."""
        self.deadline = math.inf
        """When the pending read or send gives up (`math.inf`: none, or none yet)."""
        self.interrupted = False
        self.scope = server.backend.cancel_scope()
        self._use(stream)

    def _use(self, stream: StreamT) -> None:
        """Talk over ``stream`` (the TLS one after STARTTLS), through its own bound methods."""
        self.stream = stream
        self.receive = self.server.backend.receiver(stream)
        self.send = self.server.backend.sender(stream)

    def shutdown(self, force: bool = True) -> None:
        """Close with 421 (``force``), or only wake a pending read so that a session which is
        still idle when it wakes closes: one that meanwhile started a transaction finishes it."""
        if force:
            self.closing = True
        else:
            self.woken = True
        if self.waiting is _READ:
            self.interrupt()

    def interrupt(self) -> None:
        """Cancel the pending read or send, for a timeout or a stop (see `_interrupted`)."""
        self.interrupted = True
        self.scope.cancel()

    async def run(self) -> None:
        driver, backend = self.tracked.driver, self.server.backend
        try:
            if self.server.options.dns_reverse_lookup:
                await self._busy(backend.run_in_thread(reverse_names, driver.ctx))
            while True:
                with self.scope:
                    await self._serve()
                    return
                if not self._interrupted():
                    return
                self.scope, self.interrupted = backend.cancel_scope(), False
        except Exception as exc:
            driver.log(logging.ERROR, f"session failed: {exc!r}", exc)
        finally:
            with backend.cancel_scope(shield=True):
                await self._finish()

    def _interrupted(self) -> bool:
        """After `scope` caught an interruption; False if the session ends. An interrupted read
        makes the core answer 421 (4.4.2 after a timeout, 4.3.2 for a stop; a woken session in
        a transaction goes on); an interrupted send means that the peer has read nothing for the
        idle timeout: it is dropped. Nothing pending: the interruption came as a read returned
        (see `_serve`), with nothing lost."""
        waiting, driver = self.waiting, self.tracked.driver
        self.waiting, self.deadline = None, math.inf
        if waiting is _SEND:
            self.end = CloseReason.TIMEOUT
            return False
        if waiting is _READ:
            if self.closing:
                driver.shutdown()
            elif self.woken:
                self.woken = False
                if not driver.conn.in_transaction:
                    driver.shutdown()
            else:
                driver.timed_out()
        return True

    async def _serve(self) -> None:
        """Pump the driver, write its replies and read when it asks, until it closes."""
        tracked, registry, backend = self.tracked, self.server.registry, self.server.backend
        driver, options, gone = tracked.driver, self.server.options, backend.gone
        read, read_size, never = Action.READ, options.read_size, math.inf  # the loop's constants
        while True:
            step = driver.pump()
            action = step if isinstance(step, Action) else await self._busy(step)
            data = driver.output()
            if data:
                self.waiting = _SEND  # its deadline comes from `TaskServer._sweep`
                try:
                    await self.send(data)
                except gone:
                    self.end = CloseReason.PEER_CLOSED
                    return
                self.waiting, self.deadline = None, never
                if self.interrupted:  # the deadline passed as the last bytes went out
                    self.end = CloseReason.TIMEOUT
                    return
            if action is not read:
                if action is Action.CLOSE:
                    return
                if action is Action.START_TLS:
                    await self._busy(self._start_tls())
                # else FLUSH: the replies are written, go on parsing what is buffered
            elif self.closing or (registry.stopping and not driver.conn.in_transaction):
                driver.shutdown()
            else:  # the idle timeout from now, capped by what is left of the DATA timeout
                self.waiting = _READ
                self.deadline = tracked.read_deadline(backend.current_time(), options)
                try:
                    data = await self.receive(read_size)
                except gone:
                    data = b""
                self.waiting, self.deadline = None, never
                driver.feed(data)
                if self.interrupted:  # as the read returned: leave the cancelled scope now,
                    await backend.sleep(never)  # not at a hook's first checkpoint

    async def _busy(self, step: Awaitable[T]) -> T:
        """Await a hook (or lookup, or handshake): a graceful stop must not close us meanwhile."""
        self.tracked.busy = True
        try:
            return await step
        finally:
            self.tracked.busy = False

    async def _start_tls(self) -> None:
        driver, backend = self.tracked.driver, self.server.backend
        try:
            tls = await _handshake(backend, self.stream, self.server.options)
        except OSError as exc:
            driver.tls_failed(exc)
            return
        self._use(tls)
        driver.tls_started(tls_facts(backend.ssl_object(tls)))

    async def _finish(self) -> None:
        """Close, report an aborted message and call ``on_disconnect``, however we ended."""
        registry, driver = self.server.registry, self.tracked.driver
        registry.sessions.discard(self)
        with self.server.backend.move_on_after(_FLUSH):
            await self.stream.aclose()  # closes even if cancelled; see start_tls on close_notify
        try:
            if not driver.conn.closed:  # unlike feed(b""), close() works in every core state
                driver.conn.close(None, self.end)
                step = driver.pump()  # reports the aborted message; nothing can be written now
                if not isinstance(step, Action):
                    await step
        except Exception as exc:
            driver.log(logging.ERROR, f"session cleanup failed: {exc!r}", exc)
        try:
            result = driver.disconnected()
            if isinstance(result, Awaitable):
                await result
        except Exception as exc:
            driver.log(logging.ERROR, f"on_disconnect failed: {exc!r}", exc)
        driver.log(logging.DEBUG, "disconnected")
        drained = self.server._drained
        if registry.stopping and not registry.sessions and drained is not None:
            drained.set()


class TaskServer(Generic[StreamT, ListenerT]):
    """The server of `transports.trio` (which `transports.anyio` runs on trio): a subclass
    sets `backend` and gives `_serve` a public ``serve`` with its library's ``task_status``."""

    backend: Backend[StreamT, ListenerT]

    def __init__(
        self, handler: Handler, options: ServerOptions | None = None, **kwargs: Any
    ) -> None:
        self.handler = handler
        self.options = ServerOptions.build(options, **kwargs)
        self.registry = Registry(self.options)
        self._drained: Event | None = None  # made by serve, in the run
        self._addresses: list[tuple[str, int]] = []
        self._listeners: list[tuple[ListenerT, Listener]] = []
        self._accepting: Scope | None = None
        self._sessions: TaskGroup | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        return list(self._addresses)

    async def _serve(self, started: Callable[[], object]) -> None:
        """Bind every listener, report readiness (``started()``), serve until `stop` has
        finished."""
        backend = self.backend
        try:
            for listener in self.options.listeners:
                if listener.fd is not None:  # bound by a supervisor: adopt it
                    bound = [await backend.adopt(socket.socket(fileno=listener.fd))]
                else:
                    bound = await backend.listen(listener.host, listener.port)
                self._listeners += [(sock, listener) for sock in bound]
            self._drained, self._accepting = backend.event(), backend.cancel_scope()
            if self.registry.stopping:  # stop ran before there was a scope to cancel
                self._accepting.cancel()
            names = [backend.local_address(sock) for sock, _ in self._listeners]
            self._addresses = [(str(name[0]), int(name[1])) for name in names]
            self.options.logger.info("smtpcore (%s) listening on %s", backend.name, self.addresses)
            started()
            async with backend.task_group() as sessions:
                self._sessions = sessions
                sessions.start_soon(self._sweep)
                with self._accepting:
                    async with backend.task_group() as accepting:
                        for sock, listener in self._listeners:
                            accepting.start_soon(self._accept, sock, listener)
        finally:  # _accept closes its listener; this covers failures and early cancellation
            with backend.cancel_scope(shield=True):
                for sock, _ in self._listeners:
                    await sock.aclose()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle sessions with 421 at once, let transactions finish for
        ``grace`` seconds, then send 421 to the rest (``grace=0``: immediately)."""
        registry, backend = self.registry, self.backend
        registry.stopping = True
        if self.options.observer is not None:
            self.options.observer.stopping()
        if self._accepting is not None:
            self._accepting.cancel()
        for session in registry.idle():
            session.shutdown(force=False)
        with backend.move_on_after(grace):
            await self._drain()
        for session in list(registry.sessions):
            session.shutdown()
        with backend.move_on_after(_FLUSH):
            await self._drain()
        if self._sessions is not None:
            self._sessions.cancel_scope.cancel()

    async def _sweep(self) -> None:
        """Every ``options.tick`` seconds, interrupt the sessions whose read or send has waited
        past its deadline. A read sets its own; a send's is set here, the idle timeout from the
        first sweep that sees it pending: that saves a clock reading per send, and a send that
        ended while the loop was blocked (its task not run yet) is not taken for a stalled one.
        Ends once a stop has left no session: `stop` cancels the task group at its end, unless
        it came before there was one."""
        backend, options, registry = self.backend, self.options, self.registry
        sessions, idle = registry.sessions, options.idle_timeout
        if idle is None and options.data_timeout is None:
            return
        while sessions or not registry.stopping:
            await backend.sleep(options.tick)
            now = backend.current_time()
            for session in list(sessions):
                if session.deadline <= now:
                    session.interrupt()
                elif idle is not None and session.waiting is _SEND and session.deadline == math.inf:
                    session.deadline = now + idle

    async def _drain(self) -> None:
        """Return once every session has ended (their last task sets `_drained`)."""
        if self.registry.sessions and self._drained is not None:
            await self._drained.wait()

    async def _accept(self, sock: ListenerT, listener: Listener) -> None:
        """Accept until cancelled; out of file descriptors or memory, wait instead of crashing.
        The listener is closed as soon as a stop cancels accepting: clients are refused."""
        assert self._sessions is not None
        try:
            while True:
                try:
                    stream = await self.backend.accept(sock)
                except OSError as exc:
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    self.options.logger.error("accept failed: %s; retrying", exc)
                    await self.backend.sleep(0.1)
                else:
                    self._sessions.start_soon(self._connection, stream, listener)
        finally:
            await sock.aclose()

    async def _connection(self, stream: StreamT, listener: Listener) -> None:
        """Read the PROXY header (PROXY listeners), handshake (SMTPS), refuse past
        ``max_connections``, else run a session; the socket is closed however this ends
        (cancellation included)."""
        backend, options, observer = self.backend, self.options, self.options.observer
        session: _Session[StreamT] | None = None
        try:
            try:
                sockname, peername = backend.addresses(stream)
            except OSError:  # the client is already gone
                return
            info, remainder = None, b""
            if listener.proxy_protocol:
                header = await self._proxy_header(stream, peername)
                if header is None:
                    return
                info, remainder = header
            client, ssl_object = stream, None
            if listener.implicit_tls:
                try:
                    client = await _handshake(backend, stream, options)
                except OSError as exc:
                    options.logger.debug("SMTPS handshake with %s failed: %r", peername, exc)
                    if observer is not None:
                        observer.tls_handshake(False)
                    return
                ssl_object = backend.ssl_object(client)
            driver = new_session(
                self.handler,
                options,
                sockname,
                peername,
                sleep=backend.sleep,
                ssl_object=ssl_object,
                proxy=info,
            )
            if info is not None:
                try:
                    result = proxy_hook(self.handler, driver, info)
                    if isinstance(result, Awaitable):
                        await result
                except Exception as exc:
                    detail = f"on_proxy refused the client: {exc!r}"
                    refuse_connection(self.handler, options, peername, "proxy-refused", detail)
                    return
            if self.registry.full():
                with backend.move_on_after(_FLUSH), suppress(*backend.gone):
                    await backend.sender(client)(TOO_BUSY)
                if observer is not None:
                    observer.connection_refused("too-busy")
                return
            if remainder:  # what followed the PROXY header is SMTP
                driver.feed(remainder)
            session = _Session(self, client, Tracked(driver, backend.current_time()))
            self.registry.sessions.add(session)
            await session.run()
        finally:
            if session is None:  # else `_Session._finish` has closed it (and any TLS on it)
                await backend.aclose_forcefully(stream)

    async def _proxy_header(self, stream: StreamT, peername: Any) -> tuple[ProxyInfo, bytes] | None:
        """The PROXY header and the bytes after it; None (logged) if the peer may not send
        one, sends a bad one, or none within ``proxy_timeout``."""
        backend, options = self.backend, self.options
        if not proxy_peer_trusted(options, peername):
            reason, detail = (
                "proxy-untrusted",
                "connection to a PROXY listener from an untrusted peer",
            )
        else:
            parser = ProxyHeaderParser()
            reason, detail = "proxy-timeout", f"no PROXY header in {options.proxy_timeout} s"
            receive = backend.receiver(stream)
            with backend.move_on_after(options.proxy_timeout):
                while True:
                    try:
                        data = await receive(options.read_size)
                    except backend.gone:
                        data = b""
                    try:
                        info = parser.feed(data)
                    except ProxyProtocolError as exc:
                        reason, detail = proxy_header_failure(exc, data)
                        break
                    if info is not None:
                        return info, parser.remainder
        refuse_connection(self.handler, options, peername, reason, detail)
        return None
