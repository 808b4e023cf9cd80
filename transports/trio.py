"""trio transport: one task per connection, driving the core with plain awaits.

The session and server logic is `transports._tasks`; this file supplies it with trio's own
calls (`_Trio`). `transports.anyio` runs this server under anyio's trio backend.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, TypeVarTuple, cast

import trio

from ._tasks import Backend, TaskServer

__all__ = ["Server"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


_BY_DESCRIPTOR = os.name == "posix"
"""Plain sockets are read and written through their descriptor (see `_socket_receiver`); on
Windows a socket is no file descriptor, and `trio.SocketStream` does it."""


def _descriptor(sock: trio.socket.SocketType) -> int:
    fd = sock.fileno()
    if fd < 0:  # closed: never touch a descriptor number that may have been reused
        raise trio.ClosedResourceError("the socket is closed")
    return fd


def _socket_receiver(sock: trio.socket.SocketType) -> Callable[[int], Awaitable[bytes]]:
    """Reads with one scheduling point each, taken before reading: by then the peer's next
    command has mostly come, so the read needs no wait. `trio.SocketStream.receive_some` takes
    a checkpoint after a successful read too, and its ``send_all`` one more per reply: with
    one task per session, each costs a pass of trio's scheduler, and together they cost more
    CPU per command than the session's own work."""

    async def receive(max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        while True:
            try:
                return os.read(_descriptor(sock), max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except OSError as exc:
                raise trio.BrokenResourceError(f"read failed: {exc}") from exc

    return receive


def _write(sock: trio.socket.SocketType, data: bytes | memoryview) -> int:
    """Octets written now: 0 while the socket's send buffer is full."""
    try:
        return os.write(_descriptor(sock), data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"write failed: {exc}") from exc


def _socket_sender(sock: trio.socket.SocketType) -> Callable[[bytes], Awaitable[None]]:
    """Writes at once; waits (a checkpoint) only while the socket's send buffer is full. The
    session's next read is its scheduling point (see `_socket_receiver`)."""

    async def send(data: bytes) -> None:
        sent = _write(sock, data)
        if sent < len(data):  # a reply mostly goes out whole: no memoryview for it
            view = memoryview(data)[sent:]
            while view:
                await trio.lowlevel.wait_writable(sock)
                view = view[_write(sock, view) :]

    return send


class _Trio(Backend[trio.abc.Stream, trio.SocketListener]):
    name = "trio"
    gone = (trio.BrokenResourceError, trio.ClosedResourceError)

    def current_time(self) -> float:
        return trio.current_time()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def cancel_scope(self, *, shield: bool = False) -> trio.CancelScope:
        return trio.CancelScope(shield=shield)

    def move_on_after(self, seconds: float) -> trio.CancelScope:
        return trio.move_on_after(seconds)

    def event(self) -> trio.Event:
        return trio.Event()

    def task_group(self) -> AbstractAsyncContextManager[trio.Nursery]:
        return trio.open_nursery()

    def run_in_thread(self, fn: Callable[[*Ts], T], *args: *Ts) -> Awaitable[T]:
        return trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    async def listen(self, host: str, port: int) -> list[trio.SocketListener]:
        return await trio.open_tcp_listeners(port, host=host, backlog=1024)

    def local_address(self, listener: trio.SocketListener) -> Any:
        return listener.socket.getsockname()

    async def accept(self, listener: trio.SocketListener) -> trio.abc.Stream:
        return await listener.accept()

    def addresses(self, stream: trio.abc.Stream) -> tuple[Any, Any]:
        assert isinstance(stream, trio.SocketStream)  # what SocketListener.accept returns
        return stream.socket.getsockname(), stream.socket.getpeername()

    def receiver(self, stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes]]:
        """A plain socket reads straight from its descriptor (see `_socket_receiver`); a
        `trio.SSLStream` may give a `bytearray`."""
        if isinstance(stream, trio.SocketStream):
            return _socket_receiver(stream.socket) if _BY_DESCRIPTOR else stream.receive_some

        async def receive(max_bytes: int) -> bytes:
            data = await stream.receive_some(max_bytes)
            return data if isinstance(data, bytes) else bytes(data)

        return receive

    def sender(self, stream: trio.abc.Stream) -> Callable[[bytes], Awaitable[None]]:
        if isinstance(stream, trio.SocketStream) and _BY_DESCRIPTOR:
            return _socket_sender(stream.socket)
        return stream.send_all

    async def aclose_forcefully(self, stream: trio.abc.Stream) -> None:
        await trio.aclose_forcefully(stream)

    async def start_tls(self, stream: trio.abc.Stream, context: ssl.SSLContext) -> trio.abc.Stream:
        """Closing the `trio.SSLStream` later sends TLS close_notify."""
        tls = trio.SSLStream(stream, context, server_side=True)
        await tls.do_handshake()
        return tls

    def ssl_object(self, tls: trio.abc.Stream) -> ssl.SSLObject:
        """The stream's own `ssl.SSLObject`: the SNI callback files the client's server name
        under it, so `SSLStream`'s documented forwarding (``version()``...) would lose
        ``server_name``."""
        inner = getattr(tls, "_ssl_object", None)
        return inner if isinstance(inner, ssl.SSLObject) else cast(ssl.SSLObject, tls)


class Server(TaskServer[trio.abc.Stream, trio.SocketListener]):
    """An SMTP server on trio.

    Args:
        handler: the `Handler` serving every session.
        options: a `ServerOptions`; or give its fields (and ``host``/``port``) as keywords.

    Run ``await nursery.start(server.serve)``; `stop` (from another task) makes `serve` return.
    """

    backend = _Trio()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report readiness, serve until `stop` has finished."""
        await self._serve(task_status.started)
