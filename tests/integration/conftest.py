"""Fixtures of the integration suite: every test runs once per transport.

``transport`` names the transport (as `transports.ServerThread` takes it), ``serve`` starts a
server of that transport on 127.0.0.1 (port 0) and stops it when the test is done, and
``styled`` turns a handler class into its ``async def`` twin for the tests parametrised over
handler style (not generated for "threads", which refuses async hooks by design: see
``test_threads_transport_refuses_async_hooks``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import pytest

from smtpcore import SmtpConfig
from transports.controller import ServerThread
from transports.handler import Handler

from ._support import asyncify

TRANSPORT_NAMES = ["threads", "asyncio", "asyncio-uvloop", "trio", "anyio", "anyio-trio"]
STOP_GRACE = 2.0
STOP_TIMEOUT = 15.0

H = TypeVar("H", bound=Handler)
Serve = Callable[..., AbstractContextManager[ServerThread]]
Styled = Callable[[type[H]], type[H]]


ASYNC_TRANSPORTS = [name for name in TRANSPORT_NAMES if name != "threads"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test runs per transport; per handler style too when it asks for ``style``.

    Async handlers are not generated for "threads" (it refuses them by design, which
    ``test_threads_transport_refuses_async_hooks`` asserts), nor are tests marked
    ``async_hooks``: those cases do not exist rather than being skipped.
    """
    names = metafunc.fixturenames
    only_async = metafunc.definition.get_closest_marker("async_hooks") is not None
    transports = ASYNC_TRANSPORTS if only_async else TRANSPORT_NAMES
    if "style" in names:
        combos = [
            (t, s) for t in transports for s in ("sync", "async") if (t, s) != ("threads", "async")
        ]
        metafunc.parametrize(("transport", "style"), combos, ids=[f"{t}-{s}" for t, s in combos])
    elif "transport" in names:
        metafunc.parametrize("transport", transports)


@pytest.fixture
def styled(style: str) -> Callable[[type[Any]], type[Any]]:
    """``styled(MyHandler)`` is MyHandler, or its async twin in the "async" cases."""

    def build(cls: type[H]) -> type[H]:
        return asyncify(cls) if style == "async" else cls

    return build


@pytest.fixture
def serve(transport: str) -> Serve:
    """``with serve(handler, **options) as server:`` a server on 127.0.0.1, a free port."""

    @contextmanager
    def run(handler: Handler, **options: Any) -> Iterator[ServerThread]:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("config", SmtpConfig(hostname="mx.test"))
        with ServerThread(transport, handler, ready_timeout=10.0, **options) as server:
            try:
                yield server
            finally:
                # Bounded here; the context manager's own stop then finds the thread gone.
                server.stop(grace=STOP_GRACE, timeout=STOP_TIMEOUT)

    return run
