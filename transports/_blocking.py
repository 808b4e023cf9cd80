"""Run a handler's blocking work (disk, subprocess, network) off the event loop.

The driver runs a plain ``def`` hook inline: under the threads transport that is the session's
own thread, which may block, but under asyncio, trio and anyio it is the event loop, where an
fsync, a child process or an upstream SMTP dialogue would stall every other session. So the
storing and forwarding handlers hand their work to `run_blocking`, which calls it at once when
no event loop runs in this thread and otherwise returns an awaitable that runs it in a worker
thread (the driver awaits what a hook returns). One handler class thus serves every transport,
and the threads transport still sees plain ``def`` hooks.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["event_loop_library", "in_thread", "run_blocking"]

T = TypeVar("T")


def event_loop_library() -> str | None:
    """``"asyncio"`` or ``"trio"`` when called from that event loop's thread, else None.

    anyio runs on one of the two, so its transport is covered; trio is looked for only if it
    is already imported (we never import an event loop the program does not use).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return None


def run_blocking(function: Callable[[], T]) -> T | Awaitable[T]:
    """``function()`` now if no event loop runs here, else an awaitable running it in a thread.

    If the awaiting task is cancelled (a server stop past its grace), the thread still runs to
    its end: a delivery is never cut in half, though the client may not hear its 250.
    """
    library = event_loop_library()
    if library is None:
        return function()
    return in_thread(library, function)


async def in_thread(library: str, function: Callable[[], T]) -> T:
    """Run ``function`` in a worker thread of the named event loop library."""
    if library == "trio":
        import trio

        return await trio.to_thread.run_sync(function)
    return await asyncio.to_thread(function)
