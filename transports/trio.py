"""trio transport: one task per connection, driving the core with plain awaits.

A session reads only when the driver asks for it, so replies stay in order and bytes sent after
STARTTLS are never read as plaintext. `transports.anyio` mirrors this file section by section.
"""

from __future__ import annotations

import errno
import logging
import math
import ssl
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, TypeVar, cast

import trio

from smtpcore import CloseReason

from ._common import TOO_BUSY, Registry, Tracked, new_session, reverse_names
from ._driver import Action
from .handler import Handler
from .options import ServerOptions
from .tls import tls_facts

__all__ = ["Server"]

T = TypeVar("T")

_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_FLUSH = 0.5
"""Seconds for last words: a forced stop's 421 (then the session task is cancelled), the
421 to a client past ``max_connections``, a TLS close_notify."""


async def _handshake(stream: trio.abc.Stream, options: ServerOptions) -> trio.SSLStream[Any]:
    """Server-side TLS on ``stream`` within the handshake timeout; failures raise an `OSError`
    that says what went wrong (the `ssl.SSLError`, not trio's bare wrapper), for the log."""
    assert options.tls_context is not None  # ServerOptions sets one whenever TLS is on
    tls = trio.SSLStream(stream, options.tls_context, server_side=True)
    try:
        with trio.fail_after(options.tls_handshake_timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        raise TimeoutError(f"no handshake in {options.tls_handshake_timeout} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise ConnectionError("connection lost during the handshake") from exc
    return tls


def _ssl_object(stream: trio.SSLStream[Any]) -> ssl.SSLObject:
    """The stream's own `ssl.SSLObject`: the SNI callback files the client's server name under
    it, so `SSLStream`'s documented forwarding (``version()``...) would lose ``server_name``."""
    inner = getattr(stream, "_ssl_object", None)
    return inner if isinstance(inner, ssl.SSLObject) else cast(ssl.SSLObject, stream)


class _Session:
    """One connection's task. `shutdown` (from `Server.stop`) cancels a pending read only, so
    the session itself writes the 421 and a running hook is not cut short (until a forced stop
    cancels the task after `_FLUSH`)."""

    __slots__ = ("closing", "end", "reading", "server", "stream", "tracked")

    def __init__(self, server: Server, stream: trio.abc.Stream, tracked: Tracked) -> None:
        self.server = server
        self.stream = stream
        self.tracked = tracked
        self.closing = False
        self.end = CloseReason.SERVER_CLOSED  # if the core did not end the session itself
        self.reading: trio.CancelScope | None = None

    def shutdown(self) -> None:
        self.closing = True
        if self.reading is not None:
            self.reading.cancel()

    async def run(self) -> None:
        driver, registry = self.tracked.driver, self.server.registry
        try:
            if self.server.options.dns_reverse_lookup:
                await self._busy(
                    trio.to_thread.run_sync(reverse_names, driver.ctx, abandon_on_cancel=True)
                )
            while True:
                step = driver.pump()
                action = step if isinstance(step, Action) else await self._busy(step)
                if not await self._send(driver.output()) or action is Action.CLOSE:
                    return
                if action is Action.START_TLS:
                    await self._busy(self._start_tls())
                elif self.closing or (registry.stopping and not driver.conn.in_transaction):
                    driver.shutdown()
                else:
                    await self._read()
        except Exception as exc:
            driver.log(logging.ERROR, f"session failed: {exc!r}", exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _busy(self, step: Awaitable[T]) -> T:
        """Await a hook (or lookup, or handshake): a graceful stop must not close us meanwhile."""
        self.tracked.busy = True
        try:
            return await step
        finally:
            self.tracked.busy = False

    async def _read(self) -> None:
        """Feed the next bytes (``b""`` at EOF); after a timeout or `shutdown`, close with 421."""
        driver = self.tracked.driver
        scope = self.reading = trio.CancelScope(deadline=self._deadline())
        with scope:
            try:
                data = await self.stream.receive_some(self.server.options.read_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        self.reading = None
        if not scope.cancelled_caught:
            self.tracked.last_active = trio.current_time()
            driver.feed(data if isinstance(data, bytes) else bytes(data))
        elif self.closing:
            driver.shutdown()
        else:
            driver.timed_out()

    def _deadline(self) -> float:
        """The idle timeout from now, capped by what is left of the DATA timeout."""
        options, tracked, now = self.server.options, self.tracked, trio.current_time()
        deadline = math.inf if options.idle_timeout is None else now + options.idle_timeout
        if not tracked.driver.conn.reading_data:
            tracked.data_since = None
        elif options.data_timeout is not None:
            tracked.data_since = now if tracked.data_since is None else tracked.data_since
            deadline = min(deadline, tracked.data_since + options.data_timeout)
        return deadline

    async def _send(self, data: bytes) -> bool:
        """False if the peer is gone, or read nothing for the idle timeout (it is dead)."""
        if not data:
            return True
        with trio.move_on_after(self.server.options.idle_timeout or math.inf):
            try:
                await self.stream.send_all(data)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.end = CloseReason.PEER_CLOSED
                return False
        self.end = CloseReason.TIMEOUT
        return False

    async def _start_tls(self) -> None:
        driver = self.tracked.driver
        try:
            tls = await _handshake(self.stream, self.server.options)
        except OSError as exc:
            driver.tls_failed(exc)
            return
        self.stream = tls
        self.tracked.last_active = trio.current_time()
        driver.tls_started(tls_facts(_ssl_object(tls)))

    async def _finish(self) -> None:
        """Close, report an aborted message and call ``on_disconnect``, however we ended."""
        registry, driver = self.server.registry, self.tracked.driver
        registry.sessions.discard(self)
        with trio.move_on_after(_FLUSH):
            await self.stream.aclose()  # sends TLS close_notify; closes even if cancelled
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
        if registry.stopping and not registry.sessions:
            self.server._drained.set()


class Server:
    """An SMTP server on trio.

    Args:
        handler: the `Handler` serving every session.
        options: a `ServerOptions`; or give its fields (and ``host``/``port``) as keywords.

    Run ``await nursery.start(server.serve)``; `stop` (from another task) makes `serve` return.
    """

    def __init__(
        self, handler: Handler, options: ServerOptions | None = None, **kwargs: Any
    ) -> None:
        self.handler = handler
        self.options = ServerOptions.build(options, **kwargs)
        self.registry = Registry(self.options)
        self._drained = trio.Event()
        self._addresses: list[tuple[str, int]] = []
        self._listeners: list[tuple[trio.SocketListener, bool]] = []
        self._accepting = trio.CancelScope()
        self._sessions: trio.Nursery | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        return list(self._addresses)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report readiness, serve until `stop` has finished."""
        try:
            for listener in self.options.listeners:
                bound = await trio.open_tcp_listeners(
                    listener.port, host=listener.host, backlog=1024
                )
                self._listeners += [(sock, listener.implicit_tls) for sock in bound]
            names = [sock.socket.getsockname() for sock, _ in self._listeners]
            self._addresses = [(str(name[0]), int(name[1])) for name in names]
            self.options.logger.info("smtpcore (trio) listening on %s", self.addresses)
            task_status.started()
            async with trio.open_nursery() as sessions:
                self._sessions = sessions
                with self._accepting:
                    async with trio.open_nursery() as accepting:
                        for sock, implicit_tls in self._listeners:
                            accepting.start_soon(self._accept, sock, implicit_tls)
        finally:  # _accept closes its listener; this covers failures and early cancellation
            with trio.CancelScope(shield=True):
                for sock, _ in self._listeners:
                    await sock.aclose()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle sessions with 421 at once, let transactions finish for
        ``grace`` seconds, then send 421 to the rest (``grace=0``: immediately)."""
        registry = self.registry
        registry.stopping = True
        self._accepting.cancel()
        for session in registry.idle():
            session.shutdown()
        with trio.move_on_after(grace):
            await self._drain()
        for session in list(registry.sessions):
            session.shutdown()
        with trio.move_on_after(_FLUSH):
            await self._drain()
        if self._sessions is not None:
            self._sessions.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Return once every session has ended (their last task sets `_drained`)."""
        if self.registry.sessions:
            await self._drained.wait()

    async def _accept(self, listener: trio.SocketListener, implicit_tls: bool) -> None:
        """Accept until cancelled; out of file descriptors or memory, wait instead of crashing."""
        assert self._sessions is not None
        async with listener:  # closed as soon as a stop cancels accepting: clients are refused
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    self.options.logger.error("accept failed: %s; retrying", exc)
                    await trio.sleep(0.1)
                else:
                    self._sessions.start_soon(self._connection, stream, implicit_tls)

    async def _connection(self, stream: trio.SocketStream, implicit_tls: bool) -> None:
        """Handshake (SMTPS), refuse past ``max_connections``, else run a session; the socket
        is closed however this ends (cancellation included)."""
        try:
            try:
                sockname, peername = stream.socket.getsockname(), stream.socket.getpeername()
            except OSError:  # the client is already gone
                return
            client: trio.abc.Stream = stream
            ssl_object = None
            if implicit_tls:
                try:
                    tls = await _handshake(stream, self.options)
                except OSError as exc:
                    self.options.logger.debug("SMTPS handshake with %s failed: %r", peername, exc)
                    return
                client, ssl_object = tls, _ssl_object(tls)
            if self.registry.full():
                with trio.move_on_after(_FLUSH), suppress(trio.BrokenResourceError):
                    await client.send_all(TOO_BUSY)
                return
            driver = new_session(
                self.handler,
                self.options,
                sockname,
                peername,
                sleep=trio.sleep,
                ssl_object=ssl_object,
            )
            session = _Session(self, client, Tracked(driver, trio.current_time()))
            self.registry.sessions.add(session)
            await session.run()
        finally:
            await trio.aclose_forcefully(stream)
