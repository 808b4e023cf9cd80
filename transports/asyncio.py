"""asyncio transport: `asyncio.BufferedProtocol` callbacks drive the core directly (works with
uvloop).

Synchronous hooks run inline in ``buffer_updated``; only an ``async def`` hook (or an AUTH
failure pause) costs a task. Reading is paused while one runs, so replies stay in order.

Reads land in one buffer per server (`Server.read_buffer`; each callback has taken its bytes
before the next read). With a plain `asyncio.Protocol` the default loop would allocate a
256 KiB ``bytes`` for every ``recv``, which glibc serves with mmap, mremap and munmap: three
extra syscalls per command, more than doubling the CPU per message.

On a ``proxy_protocol`` listener the protocol first buffers the PROXY header (nothing is sent
until it is complete) and creates the session only then, with the addresses it names.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from typing import Any

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
from ._driver import Action, SessionDriver
from .handler import Handler
from .options import Listener, ServerOptions
from .tls import tls_facts

__all__ = ["Server"]


class _Protocol(asyncio.BufferedProtocol):
    __slots__ = (
        "flushing",
        "held",
        "listener",
        "loop",
        "proxy",
        "proxy_timer",
        "reading_paused",
        "server",
        "tracked",
        "transport",
        "unsent",
        "writing_paused",
    )

    def __init__(self, server: Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.loop = server.loop
        self.flushing = False  # replies piled up: pump again once the transport drained them
        self.tracked: Tracked | None = None
        self.transport: Any = None
        self.writing_paused = False
        self.reading_paused = False
        """Set by `_pause_reading`: only then does going back to reading cost a call."""
        self.unsent = b""
        """Replies held until the loop has handled every read it was woken for (see
        `Server.reply`)."""
        self.held: list[bytes] | None = None
        """Bytes received while `start_tls` runs; fed to the core once it knows TLS is on."""
        self.proxy: ProxyHeaderParser | None = None
        """Set while the PROXY header is awaited."""
        self.proxy_timer: asyncio.TimerHandle | None = None

    # ---- asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self.listener.proxy_protocol:
            self._begin(None, b"")
            return
        server, peer = self.server, transport.get_extra_info("peername")
        if not proxy_peer_trusted(server.options, peer):
            self._refuse("proxy-untrusted", "connection to a PROXY listener from an untrusted peer")
            return
        self.proxy = ProxyHeaderParser()
        self.proxy_timer = self.loop.call_later(server.options.proxy_timeout, self._proxy_late)
        server.awaiting_proxy.add(self)

    def _begin(self, info: ProxyInfo | None, remainder: bytes) -> None:
        """Start the session (after the PROXY header, if any, and `Handler.on_proxy`)."""
        server, transport = self.server, self.transport
        if server.registry.full():
            transport.write(TOO_BUSY)
            transport.close()
            if server.options.observer is not None:
                server.options.observer.connection_refused("too-busy")
            return
        driver = new_session(
            server.handler,
            server.options,
            transport.get_extra_info("sockname"),
            transport.get_extra_info("peername"),
            sleep=asyncio.sleep,
            ssl_object=transport.get_extra_info("ssl_object"),
            proxy=info,
        )
        if info is not None:
            try:
                pending = proxy_hook(server.handler, driver, info)
            except Exception as exc:
                return self._refuse("proxy-refused", f"on_proxy refused the client: {exc!r}")
            if isinstance(pending, Awaitable):
                self._pause_reading()
                server.spawn(self._proxy_hook_then_admit(pending, driver, remainder))
                return
        self._admit(driver, remainder)

    def _admit(self, driver: SessionDriver, remainder: bytes) -> None:
        self.tracked = Tracked(driver, time.monotonic())
        self.server.registry.sessions.add(self)
        if remainder:  # what followed the PROXY header is SMTP
            driver.feed(remainder)
        if self.server.options.dns_reverse_lookup:
            self._wait(self._resolve_then_pump())
        else:
            self._pump()

    async def _proxy_hook_then_admit(
        self, pending: Awaitable[Any], driver: SessionDriver, remainder: bytes
    ) -> None:
        try:
            await pending
        except Exception as exc:
            return self._refuse("proxy-refused", f"on_proxy refused the client: {exc!r}")
        if self.transport.is_closing():  # the client left meanwhile
            return
        if self.server.registry.stopping:
            self.transport.write(TOO_BUSY)
            self.transport.close()
            return
        self._admit(driver, remainder)  # resumes reading when the session reads

    def _proxy_data(self, parser: ProxyHeaderParser, data: bytes) -> None:
        try:
            info = parser.feed(data)
        except ProxyProtocolError as exc:
            return self._refuse(*proxy_header_failure(exc, data))
        if info is not None:
            self._proxy_done()
            self._begin(info, parser.remainder)

    def _proxy_done(self) -> None:
        self.proxy = None
        self.server.awaiting_proxy.discard(self)
        if self.proxy_timer is not None:
            self.proxy_timer.cancel()
            self.proxy_timer = None

    def _proxy_late(self) -> None:
        if self.proxy is not None:
            timeout = self.server.options.proxy_timeout
            self._refuse("proxy-timeout", f"no PROXY header in {timeout} s")

    def _refuse(self, reason: str, detail: str) -> None:
        """Close without a word: the peer is not (yet) an SMTP client."""
        self._proxy_done()
        server = self.server
        peer = self.transport.get_extra_info("peername")
        refuse_connection(server.handler, server.options, peer, reason, detail)
        self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._received(self.server.read_buffer[:nbytes].tobytes())

    def _received(self, data: bytes) -> None:
        tracked = self.tracked
        if tracked is None:
            if self.proxy is not None:
                self._proxy_data(self.proxy, data)
            return
        if self.held is not None:
            # start_tls() delivers what came with the client's Finished (TLS 1.3 clients send
            # their first command right behind it) before it returns to us: keep it for later.
            self.held.append(data)
            return
        tracked.driver.feed(data)
        if not tracked.busy:
            self._pump()

    def eof_received(self) -> bool:
        if self.proxy is not None:
            self._proxy_data(self.proxy, b"")
            return False
        self._received(b"")
        # Keep the write side open for the last replies; a TLS transport closes regardless
        # (and warns if asked to keep it). Our own record of TLS: the transport may be gone.
        return not (self.tracked is not None and self.tracked.driver.conn.tls_active)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.proxy is not None:
            self._proxy_done()
        tracked = self.tracked
        if tracked is None:
            return
        self.tracked = None
        self.unsent = b""
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
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tracked is not None and not self.tracked.busy:
            if self.flushing:
                self.flushing = False
                self._pump()
            else:
                self.reading_paused = False
                self.transport.resume_reading()

    def _pause_reading(self) -> None:
        self.reading_paused = True
        self.transport.pause_reading()

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
        self._pause_reading()
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
        if action is Action.READ:
            if out:
                self.server.reply(self, out)
            tracked.last_active = time.monotonic()  # the idle timeout runs from now
            if self.server.registry.stopping and not tracked.driver.conn.in_transaction:
                tracked.driver.shutdown()
                self._pump()
            elif self.reading_paused and tracked.busy is False and not self.writing_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            return
        self.write_unsent()  # what waits for the end of the turn goes first
        if out:
            self.transport.write(out)
        if action is Action.FLUSH:
            if self.writing_paused:  # resume_writing goes on
                self.flushing = True
            else:
                self.loop.call_soon(self._pump_again)
        elif action is Action.START_TLS:
            # Pause before yielding to the loop: the ClientHello must not reach buffer_updated.
            self._wait(self._start_tls())
        else:
            self.transport.close()

    def write_unsent(self) -> None:
        out, self.unsent = self.unsent, b""
        if out:
            self.transport.write(out)

    def _pump_again(self) -> None:
        if self.tracked is not None and not self.tracked.busy:
            self._pump()

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
        tracked.last_active = time.monotonic()
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
        self.awaiting_proxy: set[_Protocol] = set()
        """Connections whose PROXY header has not arrived yet (not sessions so far)."""
        self.read_buffer = memoryview(bytearray(self.options.read_size))
        """Where every connection's reads land (see the module docstring)."""
        self._held: list[_Protocol] | None = None
        """Sessions whose replies wait for the end of this turn of the loop; None when the
        loop's next reply is the first of a turn (see `reply`)."""

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        # Read untyped: uvloop's servers hold their sockets in a list, not the tuple typeshed
        # names (the compiled build checks such declared types).
        servers: list[Any] = self._servers
        return [s.getsockname()[:2] for server in servers for s in server.sockets]

    async def start(self) -> None:
        """Bind every listener and start serving."""
        self.loop = loop = asyncio.get_running_loop()
        for listener in self.options.listeners:
            ssl_context = self.options.tls_context if listener.implicit_tls else None
            where: dict[str, Any] = {"host": listener.host, "port": listener.port}
            if listener.fd is not None:  # bound by a supervisor: adopt it
                where = {"sock": socket.socket(fileno=listener.fd)}
            else:
                where["reuse_address"] = True
            server = await loop.create_server(
                lambda listener=listener: _Protocol(self, listener),
                ssl=ssl_context,
                ssl_handshake_timeout=self.options.tls_handshake_timeout if ssl_context else None,
                backlog=1024,
                **where,
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
        if self.options.observer is not None:
            self.options.observer.stopping()
        for server in self._servers:
            server.close()
        for waiting in list(self.awaiting_proxy):  # no session yet: nothing to say to them
            waiting._refuse("stopping", "server stopping before the PROXY header")
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

    def reply(self, protocol: _Protocol, out: bytes) -> None:
        """Write ``out`` for ``protocol`` now if it is the first reply of this turn of the
        loop, else once the turn has handled all the reads it was woken for.

        On a busy server the loop wakes up for many sessions at once. Written back to back
        after them all, the replies reach a local client while it is still busy with the first
        ones; written one by one as each is made, every reply would wake an idle client
        again, which costs the server's CPU (in the kernel) more than making the reply. The
        first goes out at once, so a lone session waits for nothing.
        """
        held = self._held
        if held is None:
            self._held = []
            self.loop.call_soon(self._end_turn)
            protocol.transport.write(out)
        elif protocol.unsent:
            protocol.unsent += out
        else:
            protocol.unsent = out
            held.append(protocol)

    def _end_turn(self) -> None:
        held, self._held = self._held, None
        for protocol in held or ():
            protocol.write_unsent()

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick)
            for session in self.registry.expired(time.monotonic()):
                session.timed_out()
