"""anyio transport: one task per connection, on asyncio or trio.

The session and server logic is `transports._tasks`, shared with `transports.trio`; this file
supplies it with anyio's calls (`_AnyIO`).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar, TypeVarTuple, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, TaskGroup, TaskStatus
from anyio.streams.tls import TLSAttribute, TLSStream

from ._tasks import Backend, TaskServer

__all__ = ["Server"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _AnyIO(Backend[ByteStream, SocketListener]):
    name = "anyio"
    gone = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
    """What a read or write raises when the peer is gone or TLS broke (`OSError` covers the
    `ssl.SSLError` a TLS stream lets through)."""
    broken = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)

    def current_time(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def cancel_scope(self, *, shield: bool = False) -> anyio.CancelScope:
        return anyio.CancelScope(shield=shield)

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        return anyio.move_on_after(seconds)

    def event(self) -> anyio.Event:
        return anyio.Event()

    def task_group(self) -> TaskGroup:
        return anyio.create_task_group()

    def run_in_thread(self, fn: Callable[[*Ts], T], *args: *Ts) -> Awaitable[T]:
        return anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    async def listen(self, host: str, port: int) -> list[SocketListener]:
        bound = await anyio.create_tcp_listener(local_host=host, local_port=port, backlog=1024)
        return cast("list[SocketListener]", bound.listeners)  # all TCP listeners

    def local_address(self, listener: SocketListener) -> Any:
        return listener.extra(SocketAttribute.local_address)

    async def accept(self, listener: SocketListener) -> ByteStream:
        return await listener.accept()

    def addresses(self, stream: ByteStream) -> tuple[Any, Any]:
        try:
            local = stream.extra(SocketAttribute.local_address)
            return local, stream.extra(SocketAttribute.remote_address)
        except anyio.TypedAttributeLookupError as exc:  # a client that reset at once
            raise OSError("the client is already gone") from exc

    def receiver(self, stream: ByteStream) -> Callable[[int], Awaitable[bytes]]:
        return stream.receive

    def sender(self, stream: ByteStream) -> Callable[[bytes], Awaitable[None]]:
        return stream.send

    async def aclose_forcefully(self, stream: ByteStream) -> None:
        await anyio.aclose_forcefully(stream)

    async def start_tls(self, stream: ByteStream, context: ssl.SSLContext) -> ByteStream:
        """``standard_compatible=False``: SMTP says when the session ends, so a peer closing
        without close_notify (as `smtplib` does) is an ordinary EOF, not an error."""
        return await _TLSStream.wrap(
            stream, server_side=True, ssl_context=context, standard_compatible=False
        )

    def ssl_object(self, tls: ByteStream) -> ssl.SSLObject:
        return tls.extra(TLSAttribute.ssl_object)


class _TLSStream(TLSStream):
    """Sends close_notify when closed (RFC 8446 §6.1), which ``standard_compatible=False``
    alone would skip; the session's close deadline bounds the wait for the peer's."""

    async def aclose(self) -> None:
        try:
            with suppress(*_AnyIO.gone):
                await self.unwrap()
        finally:
            await self.transport_stream.aclose()


class Server(TaskServer[ByteStream, SocketListener]):
    """An SMTP server on anyio (asyncio or trio backend).

    Args:
        handler: the `Handler` serving every session.
        options: a `ServerOptions`; or give its fields (and ``host``/``port``) as keywords.

    Run ``await task_group.start(server.serve)``; `stop` (from another task) makes `serve`
    return.
    """

    backend = _AnyIO()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report readiness, serve until `stop` has finished."""
        await self._serve(task_status.started)
