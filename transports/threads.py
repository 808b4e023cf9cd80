"""Threads transport: blocking sockets, one thread per listener and one per session.

Hooks run inline in the session's own thread, so they must be plain ``def`` (checked when the
server is built). Each session thread owns its socket and writes every byte itself, so replies
stay in order without locks; other threads only raise flags that the session thread looks at
between short ``recv`` slices. Reads never go through ``makefile()``: buffering ahead would
swallow bytes sent after STARTTLS before the handshake (RFC 3207 §5 command injection).

The slices cost nothing per round trip on plain sockets under Linux: the socket stays blocking
and the kernel ends a ``recv``/``send`` after one slice (``SO_RCVTIMEO``/``SO_SNDTIMEO``), so a
command and its reply take one ``recv`` and one ``send``. A Python socket timeout would add a
``poll`` before each, and switching timeouts between reads and writes an ``ioctl``; each of
those syscalls also hands the GIL over, which is what costs most with many sessions. TLS
sockets (whose ``SSL_read`` would retry a kernel timeout by itself) and other platforms keep a
Python timeout of one slice instead, set once.

On a ``proxy_protocol`` listener the session thread first reads the PROXY header (within
``proxy_timeout``) and creates the session only then, with the addresses it names.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine
from contextlib import suppress
from typing import Any

from smtpcore.proxy import ProxyHeaderParser, ProxyInfo, ProxyProtocolError

from ._common import (
    TOO_BUSY,
    Registry,
    Tracked,
    check_sync_handler,
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

_SLICE = 0.2
"""Longest blocking wait (accept, recv or send): how late a thread may notice a stop or a
timeout. Closing a socket does not interrupt an ``accept``/``recv`` blocked in another thread."""
_SLICED = (TimeoutError, BlockingIOError)
"""What a read or write raises when a slice passed: a Python socket timeout, or (EAGAIN) the
kernel's ``SO_RCVTIMEO``/``SO_SNDTIMEO``."""
_LAST_WORD = 1.0
"""Seconds sessions told to close at a stop get to write their 421 before we cut their socket."""
_AFTER_ABORT = 0.2
"""Seconds a session thread gets to notice its socket was closed under it."""


def _action(step: Action | Awaitable[Action]) -> Action:
    """With plain ``def`` hooks `SessionDriver.pump` never needs awaiting; say so clearly if it
    does (a hook returned an awaitable though `check_sync_handler` saw no ``async def``)."""
    if isinstance(step, Action):
        return step
    if isinstance(step, Coroutine):
        step.close()
    raise TypeError("a hook returned an awaitable: transports.threads only runs plain def hooks")


class _Connection:
    """One accepted socket and its thread; a session once TLS and the connection limit pass."""

    __slots__ = (
        "closing",
        "listener",
        "lock",
        "peer",
        "server",
        "sock",
        "thread",
        "tracked",
    )

    def __init__(self, server: Server, sock: socket.socket, peer: Any, listener: Listener):
        self.server, self.sock, self.peer, self.listener = server, sock, peer, listener
        self.lock = threading.Lock()  # held to swap or close sock: abort() never hits a reused fd
        self.tracked: Tracked | None = None  # set once admitted (Registry reads it)
        self.closing = False
        name = f"smtpcore-session-{peer[0]}:{peer[1]}"
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ---- called from the stopping thread

    def shutdown(self) -> None:
        """Ask for 421 4.3.2 and a close; the session thread does it within one slice."""
        self.closing = True

    def abort(self) -> None:
        """Last resort at stop: wake a thread stuck in a write or a handshake."""
        with self.lock:
            if self.sock.fileno() != -1:
                with suppress(OSError):  # plain shutdown: SSLSocket's own would drop its state
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    # ---- the connection's own thread

    def _run(self) -> None:
        try:
            if self._open():
                self._serve()
        except OSError as exc:  # reset, broken pipe, write timeout: the peer is gone
            self._log(logging.DEBUG, f"connection lost: {exc!r}")
        except Exception as exc:
            self._log(logging.ERROR, f"session failed: {exc!r}", exc)
        finally:
            self._close()
            try:
                if self.tracked is not None:
                    self._end(self.tracked.driver)
            finally:  # only now: stop() must wait for on_disconnect too
                self.server._forget(self)

    def _open(self) -> bool:
        """The PROXY header on PROXY listeners, TLS first on SMTPS ports, then the connection
        limit; False if the client is refused."""
        server, ssl_object, observer = self.server, None, self.server.options.observer
        info, remainder = None, b""
        self._use_slices()
        if self.listener.proxy_protocol:
            header = self._read_proxy_header()
            if header is None:
                return False
            info, remainder = header
        if self.listener.implicit_tls:
            try:
                ssl_object = self._tls_handshake()
            except (OSError, ValueError) as exc:
                self._log(logging.WARNING, f"TLS handshake failed: {exc}")
                if observer is not None:
                    observer.tls_handshake(False)
                return False
        where = (self.sock.getsockname(), self.peer)
        driver = new_session(
            server.handler,
            server.options,
            *where,
            sleep=time.sleep,
            ssl_object=ssl_object,
            proxy=info,
        )
        if info is not None and not self._proxy_hook(driver, info):
            return False
        if server._admit(self, Tracked(driver, time.monotonic())):
            if remainder:  # what followed the PROXY header is SMTP
                driver.feed(remainder)
            return True
        self._send(TOO_BUSY)
        if observer is not None:
            observer.connection_refused("too-busy")
        return False

    def _read_proxy_header(self) -> tuple[ProxyInfo, bytes] | None:
        """The PROXY header and the bytes after it; None (logged) if the peer may not send
        one, sends a bad one, or none within ``proxy_timeout``."""
        options = self.server.options
        if not proxy_peer_trusted(options, self.peer):
            reason, detail = (
                "proxy-untrusted",
                "connection to a PROXY listener from an untrusted peer",
            )
        else:
            parser = ProxyHeaderParser()
            deadline = time.monotonic() + options.proxy_timeout
            while True:
                if self.closing or self.server.registry.stopping:
                    reason, detail = "stopping", "server stopping before the PROXY header"
                    break
                if time.monotonic() > deadline:
                    reason, detail = (
                        "proxy-timeout",
                        f"no PROXY header in {options.proxy_timeout} s",
                    )
                    break
                try:
                    data = self.sock.recv(options.read_size)
                except _SLICED:
                    continue
                try:
                    info = parser.feed(data)
                except ProxyProtocolError as exc:
                    reason, detail = proxy_header_failure(exc, data)
                    break
                if info is not None:
                    return info, parser.remainder
        self._refuse(reason, detail)
        return None

    def _proxy_hook(self, driver: SessionDriver, info: ProxyInfo) -> bool:
        """`Handler.on_proxy`: False (logged) if it refused the client."""
        try:
            result = proxy_hook(self.server.handler, driver, info)
            if isinstance(result, Awaitable):
                _action(result)  # closes it and raises TypeError
        except Exception as exc:
            self._refuse("proxy-refused", f"on_proxy refused the client: {exc!r}")
            return False
        return True

    def _refuse(self, reason: str, detail: str) -> None:
        server = self.server
        refuse_connection(server.handler, server.options, self.peer, reason, detail)

    def _serve(self) -> None:
        assert self.tracked is not None
        driver = self.tracked.driver
        if self.server.options.dns_reverse_lookup:
            reverse_names(driver.ctx)
        while (action := self._pump(driver)) is not Action.CLOSE:
            if action is Action.READ:
                self._read(driver)
            elif action is Action.START_TLS:
                self._start_tls(driver)
            # FLUSH: the replies are written (sendall blocks): go on parsing what is buffered

    def _pump(self, driver: SessionDriver) -> Action:
        action = _action(driver.pump())
        out = driver.output()
        if out:
            self._send(out)
        return action

    def _read(self, driver: SessionDriver) -> None:
        """Wait for bytes in short slices, checking the stop flags and the timeouts between."""
        options, tracked = self.server.options, self.tracked
        assert tracked is not None
        # Silence counts from when a command is awaited.
        now = tracked.last_active = time.monotonic()
        while True:
            # Checked here, between reads, rather than by the stopping thread: a command that
            # just arrived is never cut, and a transaction that has just ended is closed.
            if self.closing or (self.server.registry.stopping and not driver.conn.in_transaction):
                return driver.shutdown()
            if tracked.expired(now, options):
                return driver.timed_out()
            try:
                return driver.feed(self.sock.recv(options.read_size))
            except _SLICED:
                now = time.monotonic()

    def _start_tls(self, driver: SessionDriver) -> None:
        try:
            tls = self._tls_handshake()
        except (OSError, ValueError) as exc:
            return driver.tls_failed(exc)
        driver.tls_started(tls_facts(tls))

    def _tls_handshake(self) -> ssl.SSLSocket:
        """Wrap the socket (only ever read with ``recv``, so no plaintext was read ahead) and
        run the server-side handshake under ``tls_handshake_timeout``."""
        context = self.server.options.tls_context
        assert context is not None  # set whenever TLS is on
        with self.lock:
            self.sock = tls = context.wrap_socket(
                self.sock, server_side=True, do_handshake_on_connect=False
            )
        tls.settimeout(self.server.options.tls_handshake_timeout)
        tls.do_handshake()
        self._use_slices()
        return tls

    def _use_slices(self) -> None:
        """Make every ``recv``/``send`` of the socket give up after one slice: by the kernel on
        a plain socket under Linux (no syscall per call), else by a Python timeout."""
        sock, seconds = self.sock, self.server.slice
        if sys.platform == "linux" and not isinstance(sock, ssl.SSLSocket):
            timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
            try:
                if sock.gettimeout() is not None:  # accept() left it blocking, unless a
                    sock.settimeout(None)  # default timeout is set (socket.setdefaulttimeout)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
                return
            except OSError:  # e.g. a 32-bit build whose timeval is not two longs
                pass
        sock.settimeout(seconds)

    def _send(self, data: bytes) -> None:
        """Write it all; a peer that reads nothing for ``idle_timeout`` counts as gone. Not
        ``sendall``: a slice that ends after part of the data would lose how much went out."""
        view, stalled, idle = memoryview(data), 0, self.server.options.idle_timeout
        while view:
            try:
                view = view[self.sock.send(view) :]
                stalled = 0
            except _SLICED:  # a whole slice without progress
                stalled += 1
                if idle is not None and stalled * self.server.slice > idle:
                    raise TimeoutError(f"no reply read for {idle} s") from None

    def _close(self) -> None:
        with self.lock:
            if isinstance(self.sock, ssl.SSLSocket):  # send close_notify (RFC 8446 §6.1)
                with suppress(OSError, ValueError):
                    self.sock.settimeout(_LAST_WORD)
                    self.sock = self.sock.unwrap()
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def _end(self, driver: SessionDriver) -> None:
        """As asyncio's ``connection_lost``: report an aborted message, then on_disconnect."""
        if not driver.conn.closed:
            try:
                driver.feed(b"")
                _action(driver.pump())  # nothing can be written any more
            except Exception as exc:
                driver.log(logging.ERROR, f"closing the session failed: {exc!r}", exc)
        driver.disconnected()
        driver.log(logging.DEBUG, "disconnected")

    def _log(self, level: int, message: str, exc: Exception | None = None) -> None:
        if self.tracked is not None:
            return self.tracked.driver.log(level, message, exc)
        message = f"[{self.peer[0]}:{self.peer[1]}] {message}"
        self.server.handler.on_logging(None, level, message, exc)


class Server:
    """An SMTP server on threads, for plain ``def`` handlers.

    Args:
        handler: the `Handler` serving every session; ``async def`` hooks raise TypeError.
        options: a `ServerOptions`; or give its fields (and ``host``/``port``) as keywords.

    `start` binds and returns; `stop` (from another thread) stops gracefully and `join` waits
    for it. ``with Server(handler, port=0) as server:`` does both.
    """

    def __init__(
        self, handler: Handler, options: ServerOptions | None = None, **kwargs: Any
    ) -> None:
        check_sync_handler(handler)
        self.handler = handler
        self.options = ServerOptions.build(options, **kwargs)
        self.registry = Registry(self.options)
        self.slice = min(_SLICE, self.options.tick)
        self._lock = threading.Lock()  # guards the sets below and registry.sessions
        self._sockets: list[tuple[socket.socket, Listener]] = []
        self._acceptors: list[threading.Thread] = []
        self._connections: set[_Connection] = set()
        self._stopped = threading.Event()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        return [sock.getsockname()[:2] for sock, _ in self._sockets]

    def start(self) -> None:
        """Bind every listener (all addresses its host resolves to) and accept in threads."""
        try:
            for listener in self.options.listeners:
                if listener.fd is not None:  # bound by a supervisor: adopt it
                    self._sockets.append((socket.socket(fileno=listener.fd), listener))
                    continue
                infos = socket.getaddrinfo(
                    listener.host or None, listener.port, type=socket.SOCK_STREAM,
                    flags=socket.AI_PASSIVE,
                )  # fmt: skip
                for family, kind, proto, _, address in dict.fromkeys(infos):
                    sock = socket.socket(family, kind, proto)
                    self._sockets.append((sock, listener))
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:  # "::" must not also take the IPv4 port
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(address)
                    sock.listen(1024)
        except BaseException:
            self._close_listeners()
            raise
        for sock, listener in self._sockets:
            name = f"smtpcore-accept-{sock.getsockname()[1]}"
            thread = threading.Thread(target=self._accept, args=(sock, listener), name=name)
            thread.daemon = True
            self._acceptors.append(thread)
            thread.start()
        self.options.logger.info("smtpcore (threads) listening on %s", self.addresses)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle sessions with 421 at once, let transactions finish for
        ``grace`` seconds, then send 421 to the rest (``grace=0``: immediately). Blocks until
        every session thread has ended, or is stuck in a hook past the deadline (then logged and
        left behind: a daemon thread cannot be interrupted)."""
        self.registry.stopping = True  # idle sessions see it within one slice and close
        if self.options.observer is not None:
            self.options.observer.stopping()
        for thread in self._acceptors:
            thread.join()
        self._close_listeners()
        deadline = time.monotonic() + grace
        while self.registry.sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.shutdown()
        last_word = time.monotonic() + _LAST_WORD
        for connection in connections:
            connection.thread.join(max(0.0, last_word - time.monotonic()))
        for connection in connections:
            connection.abort()
            # A hook that never returns cannot be interrupted: its socket is closed, and after
            # one more moment its (daemon) thread is left behind rather than blocking the stop.
            connection.thread.join(_AFTER_ABORT)
            if connection.thread.is_alive():
                self.options.logger.error(
                    "session thread %s still busy after the stop: left behind",
                    connection.thread.name,
                )
        self._stopped.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until `stop` has finished; False if ``timeout`` passed first."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- for the threads

    def _accept(self, sock: socket.socket, listener: Listener) -> None:
        sock.settimeout(self.slice)
        while not self.registry.stopping:
            try:
                client, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # e.g. out of file descriptors: back off, do not spin
                self.handler.on_logging(None, logging.ERROR, f"accept failed: {exc!r}", exc)
                time.sleep(self.slice)
                continue
            connection = _Connection(self, client, peer, listener)
            with self._lock:
                self._connections.add(connection)
            try:
                connection.thread.start()
            except RuntimeError as exc:  # cannot start a new thread
                self.handler.on_logging(None, logging.ERROR, f"refused {peer}: {exc}", exc)
                self._forget(connection)
                client.close()

    def _admit(self, connection: _Connection, tracked: Tracked) -> bool:
        """Count the session in, unless the limit is reached or the server is stopping."""
        with self._lock:
            if self.registry.full():
                return False
            connection.tracked = tracked
            self.registry.sessions.add(connection)
            return True

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
            self.registry.sessions.discard(connection)

    def _close_listeners(self) -> None:
        for sock, _ in self._sockets:
            sock.close()
        self._sockets.clear()
