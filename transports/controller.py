"""Run any transport's server in a background thread, for tests and for synchronous programs.

    with ServerThread("trio", MyHandler(), port=0) as server:
        smtplib.SMTP(*server.address).sendmail(...)

The server runs in its own thread (with its own event loop for the async transports); `stop`
asks it for a graceful stop and waits for the thread.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from .handler import Handler
from .options import ServerOptions

__all__ = ["TRANSPORTS", "ServerThread"]

TRANSPORTS = ("threads", "asyncio", "trio", "anyio")


class ServerThread:
    """A server of the named transport running in a daemon thread.

    Args:
        transport: ``threads``, ``asyncio``, ``asyncio-uvloop`` (asyncio on uvloop),
            ``trio``, ``anyio`` (anyio on asyncio), or ``anyio-trio`` (anyio on trio).
        handler: the handler.
        options: `ServerOptions`, or its fields as keywords (``host``, ``port``...).
        ready_timeout: seconds to wait for the listeners to be bound.
    """

    def __init__(
        self,
        transport: str,
        handler: Handler,
        options: ServerOptions | None = None,
        *,
        ready_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        name, _, backend = transport.partition("-")
        if name not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose from {TRANSPORTS}")
        self.transport = transport
        self._backend = backend or "asyncio"
        module = importlib.import_module(f"transports.{name}")
        self.server: Any = module.Server(handler, ServerOptions.build(options, **kwargs))
        self._ready_timeout = ready_timeout
        self._ready = threading.Event()
        self._stop_request: Callable[[float], None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"smtpcore-{transport}", daemon=True)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(self.server.addresses)

    @property
    def address(self) -> tuple[str, int]:
        """The first listener's (host, port)."""
        return self.addresses[0]

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self._ready_timeout):
            raise TimeoutError(f"{self.transport} server not ready in {self._ready_timeout} s")
        if self._error is not None:
            raise RuntimeError(f"{self.transport} server failed to start") from self._error
        return self

    def stop(self, grace: float = 5.0, timeout: float = 30.0) -> None:
        """Graceful stop (see each transport's ``stop``); waits for the thread."""
        if self._stop_request is not None and self._thread.is_alive():
            self._stop_request(grace)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.transport} server did not stop in {timeout} s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- per transport

    def _run(self) -> None:
        try:
            name = self.transport.partition("-")[0]
            getattr(self, f"_run_{name}")()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def _run_threads(self) -> None:
        self.server.start()
        self._stop_request = self.server.stop
        self._ready.set()
        self.server.join()

    def _run_asyncio(self) -> None:
        import asyncio

        async def main() -> None:
            await self.server.start()
            loop = asyncio.get_running_loop()
            stopped = asyncio.Event()
            grace_box: list[float] = []

            def request(grace: float) -> None:
                grace_box.append(grace)
                loop.call_soon_threadsafe(stopped.set)

            self._stop_request = request
            self._ready.set()
            await stopped.wait()
            await self.server.stop(grace_box[0])

        if self._backend == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        else:
            asyncio.run(main())

    def _run_trio(self) -> None:
        import trio

        async def main() -> None:
            token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.server.serve)

                def request(grace: float) -> None:
                    token.run_sync_soon(lambda: nursery.start_soon(self.server.stop, grace))

                self._stop_request = request
                self._ready.set()

        trio.run(main)

    def _run_anyio(self) -> None:
        import anyio
        import anyio.from_thread

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(self.server.serve)
                token = anyio.lowlevel.current_token()

                def request(grace: float) -> None:
                    anyio.from_thread.run_sync(
                        lambda: tg.start_soon(self.server.stop, grace), token=token
                    )

                self._stop_request = request
                self._ready.set()

        anyio.run(main, backend=self._backend)
