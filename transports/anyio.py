"""anyio transport: serve SMTP from an anyio task group, with the native server of its backend.

`Server.serve` looks at the backend it runs on and drives that library's own server: a
`transports.asyncio.Server` under anyio's asyncio backend (uvloop or not), a
`transports.trio.Server` under its trio backend (`Server.inner` is the one running). It
delegates because anyio's own asyncio socket streams cost some 150-195 µs per message by
themselves, about three times what the whole asyncio transport needs.

What a caller can rely on, on either backend: ``await task_group.start(server.serve)`` returns
once every listener is bound (`addresses` then tells where); ``await server.stop(grace)`` from
another task stops gracefully (as each native server's ``stop``) and `serve` returns once it
has; cancelling the task running `serve` stops the server at once, its listeners closed and its
sessions ended (on asyncio a stop with ``grace=0``, shielded and bounded; on trio the sessions'
tasks are cancelled), and the cancellation goes on. Hooks run in the backend's own tasks, so
``async def`` hooks may call anyio (``anyio.sleep``, ``anyio.to_thread.run_sync``,
``anyio.fail_after``...) as well as that library. On asyncio a plain ``def`` hook runs in a
protocol callback, outside any task.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ._common import Registry
from .handler import Handler
from .options import ServerOptions

if TYPE_CHECKING:
    from . import asyncio as asyncio_transport
    from . import trio as trio_transport

__all__ = ["Server"]

_ABORT = 5.0
"""Seconds a cancelled `Server.serve` gives the asyncio server's immediate stop."""


def _on_asyncio() -> bool:
    """Whether anyio runs on asyncio here (else on trio): asyncio has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
        """The live sessions, shared with `inner`."""
        self.inner: asyncio_transport.Server | trio_transport.Server | None = None
        """The native server that `serve` runs (None before): `transports.asyncio.Server` or
        `transports.trio.Server`."""
        self._stop: anyio.Event | None = None  # asyncio: stop asks serve's task to stop inner
        self._served: anyio.Event | None = None
        self._grace = 5.0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, ports resolved when 0 was asked."""
        return [] if self.inner is None else self.inner.addresses

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report readiness, serve until `stop` has finished."""
        if not _on_asyncio():
            from . import trio as native

            inner = self.inner = native.Server(self.handler, self.options)
            inner.registry = self.registry
            await inner._serve(task_status.started)  # a cancellation stops the nursery at once
            return
        await self._serve_asyncio(task_status)

    async def _serve_asyncio(self, task_status: TaskStatus[None]) -> None:
        """Start the server, wait for `stop`, and stop it from this task: a stop can then
        neither race `start` nor miss a listener it opens."""
        from . import asyncio as native

        inner = self.inner = native.Server(self.handler, self.options)
        inner.registry = self.registry
        self._stop, self._served = anyio.Event(), anyio.Event()
        try:
            await inner.start()
            task_status.started()
            if not self.registry.stopping:  # else `stop` came before serve
                await self._stop.wait()
            await inner.stop(self._grace)
        except BaseException:  # cancelled from outside (or start failed): stop at once
            with anyio.move_on_after(_ABORT, shield=True):
                await inner.stop(0)
            raise
        finally:
            self._served.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle sessions with 421 at once, let transactions finish for
        ``grace`` seconds, then send 421 to the rest (``grace=0``: immediately)."""
        self._grace = grace
        if self._stop is not None and self._served is not None:
            self._stop.set()
            await self._served.wait()
        elif self.inner is not None:
            await self.inner.stop(grace)
        else:  # serve has not run yet: it stops as soon as it has started
            self.registry.stopping = True
