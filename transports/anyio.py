"""anyio transport: one task per connection, on asyncio or trio; `transports.trio`, section
by section, with anyio's names.

A session reads only when the driver asks for it, so replies stay in order and bytes sent after
STARTTLS are never read as plaintext.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, TypeVar, cast

import anyio
from anyio.abc import (
    ByteStream,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.tls import TLSAttribute, TLSStream

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
_EOF = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
"""What a read or write raises when the peer is gone or TLS broke (`OSError` covers the
`ssl.SSLError` a TLS stream lets through)."""


async def _handshake(stream: ByteStream, options: ServerOptions) -> TLSStream:
    """Server-side TLS on ``stream`` within the handshake timeout; failures raise an `OSError`
    that says what went wrong (the `ssl.SSLError`, not anyio's bare wrapper), for the log.

    ``standard_compatible=False``: SMTP says when the session ends, so a peer closing without
    close_notify (as `smtplib` does) is an ordinary EOF, not an error."""
    assert options.tls_context is not None  # ServerOptions sets one whenever TLS is on
    try:
        with anyio.fail_after(options.tls_handshake_timeout):
            return await TLSStream.wrap(
                stream, server_side=True, ssl_context=options.tls_context, standard_compatible=False
            )
    except TimeoutError:
        raise TimeoutError(f"no handshake in {options.tls_handshake_timeout} s") from None
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise ConnectionError("connection lost during the handshake") from exc


class _Session:
    """One connection's task. `shutdown` (from `Server.stop`) cancels a pending read only, so
    the session itself writes the 421 and a running hook is not cut short (until a forced stop
    cancels the task after `_FLUSH`)."""

    __slots__ = ("closing", "end", "reading", "server", "stream", "tracked")

    def __init__(self, server: Server, stream: ByteStream, tracked: Tracked) -> None:
        self.server = server
        self.stream = stream
        self.tracked = tracked
        self.closing = False
        self.end = CloseReason.SERVER_CLOSED  # if the core did not end the session itself
        self.reading: anyio.CancelScope | None = None

    def shutdown(self) -> None:
        self.closing = True
        if self.reading is not None:
            self.reading.cancel()

    async def run(self) -> None:
        driver, registry = self.tracked.driver, self.server.registry
        try:
            if self.server.options.dns_reverse_lookup:
                await self._busy(
                    anyio.to_thread.run_sync(reverse_names, driver.ctx, abandon_on_cancel=True)
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
            with anyio.CancelScope(shield=True):
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
        scope = self.reading = anyio.CancelScope(deadline=self._deadline())
        with scope:
            try:
                data = await self.stream.receive(self.server.options.read_size)
            except _EOF:
                data = b""
        self.reading = None
        if not scope.cancelled_caught:
            self.tracked.last_active = anyio.current_time()
            driver.feed(data)
        elif self.closing:
            driver.shutdown()
        else:
            driver.timed_out()

    def _deadline(self) -> float:
        """The idle timeout from now, capped by what is left of the DATA timeout."""
        options, tracked, now = self.server.options, self.tracked, anyio.current_time()
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
        with anyio.move_on_after(self.server.options.idle_timeout):
            try:
                await self.stream.send(data)
                return True
            except _EOF:
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
        self.tracked.last_active = anyio.current_time()
        driver.tls_started(tls_facts(tls.extra(TLSAttribute.ssl_object)))

    async def _finish(self) -> None:
        """Close, report an aborted message and call ``on_disconnect``, however we ended."""
        registry, driver = self.server.registry, self.tracked.driver
        registry.sessions.discard(self)
        with anyio.move_on_after(_FLUSH):
            await self.stream.aclose()  # closes even if cancelled (no close_notify, see above)
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
        if registry.stopping and not registry.sessions and self.server._drained is not None:
            self.server._drained.set()


class Server:
    """An SMTP server on anyio (asyncio or trio backend).

    Args:
        handler: the `Handler` serving every session.
        options: a `ServerOptions`; or give its fields (and ``host``/``port``) as keywords.

    Run ``await task_group.start(server.serve)``; `stop` (from another task) makes `serve`
    return.
    """

    def __init__(
        self, handler: Handler, options: ServerOptions | None = None, **kwargs: Any
    ) -> None:
        self.handler = handler
        self.options = ServerOptions.build(options, **kwargs)
        self.registry = Registry(self.options)
        self._drained: anyio.Event | None = None  # anyio objects need a running backend
        self._addresses: list[tuple[str, int]] = []
        self._listeners: list[tuple[SocketListener, bool]] = []
        self._accepting: anyio.CancelScope | None = None
        self._sessions: TaskGroup | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        return list(self._addresses)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report readiness, serve until `stop` has finished."""
        try:
            for listener in self.options.listeners:
                bound = await anyio.create_tcp_listener(
                    local_host=listener.host, local_port=listener.port, backlog=1024
                )
                sockets = cast("list[SocketListener]", bound.listeners)  # all TCP listeners
                self._listeners += [(sock, listener.implicit_tls) for sock in sockets]
            self._drained, self._accepting = anyio.Event(), anyio.CancelScope()
            if self.registry.stopping:
                self._accepting.cancel()
            names = [
                listener.extra(SocketAttribute.local_address) for listener, _ in self._listeners
            ]
            self._addresses = [(str(name[0]), int(name[1])) for name in names]
            self.options.logger.info("smtpcore (anyio) listening on %s", self.addresses)
            task_status.started()
            async with anyio.create_task_group() as sessions:
                self._sessions = sessions
                with self._accepting:
                    async with anyio.create_task_group() as accepting:
                        for sock, implicit_tls in self._listeners:
                            accepting.start_soon(self._accept, sock, implicit_tls)
        finally:  # _accept closes its listener; this covers failures and early cancellation
            with anyio.CancelScope(shield=True):
                for sock, _ in self._listeners:
                    await sock.aclose()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle sessions with 421 at once, let transactions finish for
        ``grace`` seconds, then send 421 to the rest (``grace=0``: immediately)."""
        registry = self.registry
        registry.stopping = True
        if self._accepting is not None:
            self._accepting.cancel()
        for session in registry.idle():
            session.shutdown()
        with anyio.move_on_after(grace):
            await self._drain()
        for session in list(registry.sessions):
            session.shutdown()
        with anyio.move_on_after(_FLUSH):
            await self._drain()
        if self._sessions is not None:
            self._sessions.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Return once every session has ended (their last task sets `_drained`)."""
        if self.registry.sessions and self._drained is not None:
            await self._drained.wait()

    async def _accept(self, listener: SocketListener, implicit_tls: bool) -> None:
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
                    await anyio.sleep(0.1)
                else:
                    self._sessions.start_soon(self._connection, stream, implicit_tls)

    async def _connection(self, stream: SocketStream, implicit_tls: bool) -> None:
        """Handshake (SMTPS), refuse past ``max_connections``, else run a session; the socket
        is closed however this ends (cancellation included)."""
        try:
            try:
                sockname = stream.extra(SocketAttribute.local_address)
                peername = stream.extra(SocketAttribute.remote_address)
            except OSError:  # the client is already gone
                return
            client: ByteStream = stream
            ssl_object = None
            if implicit_tls:
                try:
                    tls = await _handshake(stream, self.options)
                except OSError as exc:
                    self.options.logger.debug("SMTPS handshake with %s failed: %r", peername, exc)
                    return
                client, ssl_object = tls, tls.extra(TLSAttribute.ssl_object)
            if self.registry.full():
                with anyio.move_on_after(_FLUSH), suppress(*_EOF):
                    await client.send(TOO_BUSY)
                return
            driver = new_session(
                self.handler,
                self.options,
                sockname,
                peername,
                sleep=anyio.sleep,
                ssl_object=ssl_object,
            )
            session = _Session(self, client, Tracked(driver, anyio.current_time()))
            self.registry.sessions.add(session)
            await session.run()
        finally:
            await anyio.aclose_forcefully(stream)
