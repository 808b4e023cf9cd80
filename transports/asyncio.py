"""asyncio transport: `asyncio.Protocol` callbacks drive the core directly (works with uvloop).

Synchronous hooks run inline in ``data_received``; only an ``async def`` hook (or an AUTH
failure pause) costs a task. Reading is paused while one runs, so replies stay in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from ._common import TOO_BUSY, Registry, Tracked, new_session, reverse_names
from ._driver import Action
from .handler import Handler
from .options import ServerOptions
from .tls import tls_facts

__all__ = ["Server"]


class _Protocol(asyncio.Protocol):
    __slots__ = ("held", "loop", "server", "tracked", "transport", "writing_paused")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.tracked: Tracked | None = None
        self.transport: Any = None
        self.writing_paused = False
        self.held: list[bytes] | None = None
        """Bytes received while `start_tls` runs; fed to the core once it knows TLS is on."""

    # ---- asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if server.registry.full():
            transport.write(TOO_BUSY)
            transport.close()
            return
        driver = new_session(
            server.handler,
            server.options,
            transport.get_extra_info("sockname"),
            transport.get_extra_info("peername"),
            sleep=asyncio.sleep,
            ssl_object=transport.get_extra_info("ssl_object"),
        )
        self.tracked = Tracked(driver, self.loop.time())
        server.registry.sessions.add(self)
        if server.options.dns_reverse_lookup:
            self._wait(self._resolve_then_pump())
        else:
            self._pump()

    def data_received(self, data: bytes) -> None:
        tracked = self.tracked
        if tracked is None:
            return
        tracked.last_active = self.loop.time()
        if self.held is not None:
            # start_tls() delivers what came with the client's Finished (TLS 1.3 clients send
            # their first command right behind it) before it returns to us: keep it for later.
            self.held.append(data)
            return
        tracked.driver.feed(data)
        if not tracked.busy:
            self._pump()

    def eof_received(self) -> bool:
        self.data_received(b"")
        # Keep the write side open for the last replies; a TLS transport closes regardless
        # (and warns if asked to keep it).
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        tracked = self.tracked
        if tracked is None:
            return
        self.tracked = None
        self.server.registry.sessions.discard(self)
        driver = tracked.driver
        if not driver.conn.closed:
            step = driver.lost()  # reports an aborted message; nothing can be written now
            if not isinstance(step, Action):
                self.server.spawn(step)
        result = driver.disconnected()
        if isinstance(result, Awaitable):
            self.server.spawn(result)
        driver.log(logging.DEBUG, "disconnected")

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tracked is not None and not self.tracked.busy:
            self.transport.resume_reading()

    # ---- driving

    def _pump(self) -> None:
        tracked = self.tracked
        assert tracked is not None
        step = tracked.driver.pump()
        if isinstance(step, Action):
            self._act(step)
        else:
            self._wait(step)

    def _wait(self, step: Awaitable[Action | None]) -> None:
        """Run an async step with reading paused, then act on its outcome."""
        assert self.tracked is not None
        self.tracked.busy = True
        self.transport.pause_reading()
        self.server.spawn(self._finish(step))

    async def _finish(self, step: Awaitable[Action | None]) -> None:
        tracked = self.tracked
        try:
            action = await step
        except Exception as exc:
            if tracked is not None:
                tracked.driver.log(logging.ERROR, f"session failed: {exc!r}", exc)
            self.transport.abort()
            return
        if self.tracked is None:  # the connection went away meanwhile
            return
        self.tracked.busy = False
        if action is None:
            self._pump()
        else:
            self._act(action)

    def _act(self, action: Action) -> None:
        tracked = self.tracked
        assert tracked is not None
        out = tracked.driver.output()
        if out:
            self.transport.write(out)
        if action is Action.READ:
            tracked.last_active = self.loop.time()  # the idle timeout runs from now
            if self.server.registry.stopping and not tracked.driver.conn.in_transaction:
                tracked.driver.shutdown()
                self._pump()
            elif tracked.busy is False and not self.writing_paused:
                self.transport.resume_reading()
        elif action is Action.START_TLS:
            # Pause before yielding to the loop: the ClientHello must not reach data_received.
            self._wait(self._start_tls())
        else:
            self.transport.close()

    async def _start_tls(self) -> None:
        tracked = self.tracked
        assert tracked is not None
        options = self.server.options
        self.held = []
        try:
            transport = await self.loop.start_tls(
                self.transport,
                self,
                options.tls_context,  # type: ignore[arg-type]  # set whenever TLS is on
                server_side=True,
                ssl_handshake_timeout=options.tls_handshake_timeout,
            )
        except Exception as exc:
            return self._tls_failed(exc)
        held, self.held = self.held, None
        if transport is None:
            return self._tls_failed(ConnectionError("connection closed during handshake"))
        self.transport = transport
        tracked.last_active = self.loop.time()
        tracked.driver.tls_started(tls_facts(transport.get_extra_info("ssl_object")))
        for data in held:
            tracked.driver.feed(data)

    def _tls_failed(self, exc: Exception) -> None:
        """End the session: asyncio calls ``connection_lost`` only on a protocol whose
        handshake completed, so without this it would stay registered (and counted against
        ``max_connections``) until the server stops, and ``on_disconnect`` would never run."""
        assert self.tracked is not None
        self.held = None
        self.tracked.driver.tls_failed(exc)
        self.transport.abort()
        self.connection_lost(exc)

    async def _resolve_then_pump(self) -> None:
        assert self.tracked is not None
        await self.loop.run_in_executor(None, reverse_names, self.tracked.driver.ctx)

    # ---- server side

    def timed_out(self) -> None:
        if self.tracked is not None:
            self.tracked.driver.timed_out()
            if not self.tracked.busy:
                self._pump()

    def shutdown(self) -> None:
        if self.tracked is not None and not self.tracked.busy:
            self.tracked.driver.shutdown()
            self._pump()


class Server:
    """An SMTP server on asyncio.

    Args:
        handler: the `Handler` serving every session.
        options: a `ServerOptions`; or give its fields (and ``host``/``port``) as keywords.

    Use ``async with Server(handler, port=0) as server:`` or `start`/`stop`;
    `addresses` tells where it listens.
    """

    def __init__(
        self, handler: Handler, options: ServerOptions | None = None, **kwargs: Any
    ) -> None:
        self.handler = handler
        self.options = ServerOptions.build(options, **kwargs)
        self.registry = Registry(self.options)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    async def start(self) -> None:
        """Bind every listener and start serving."""
        self.loop = loop = asyncio.get_running_loop()
        for listener in self.options.listeners:
            ssl_context = self.options.tls_context if listener.implicit_tls else None
            server = await loop.create_server(
                lambda: _Protocol(self),
                listener.host,
                listener.port,
                ssl=ssl_context,
                ssl_handshake_timeout=self.options.tls_handshake_timeout if ssl_context else None,
                reuse_address=True,
                backlog=1024,
            )
            self._servers.append(server)
        self._sweeper = loop.create_task(self._sweep())
        self.options.logger.info("smtpcore (asyncio) listening on %s", self.addresses)

    async def serve_forever(self) -> None:
        if not self._servers:
            await self.start()
        await asyncio.Event().wait()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle sessions with 421 at once, let transactions finish for
        ``grace`` seconds, then send 421 to the rest (``grace=0``: immediately)."""
        self.registry.stopping = True
        for server in self._servers:
            server.close()
        for session in self.registry.idle():
            session.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.registry.sessions and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for session in list(self.registry.sessions):
            session.shutdown()
        await asyncio.sleep(0)
        for session in list(self.registry.sessions):
            if session.transport is not None:
                session.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks:  # on_disconnect hooks and the like: give them the rest of the grace
            await asyncio.wait(set(self._tasks), timeout=max(0.5, deadline - loop.time()))
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.tick)
            for session in self.registry.expired(loop.time()):
                session.timed_out()
