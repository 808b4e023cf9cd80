"""Fixtures of the security suite.

``transport`` runs a test once per transport (threads, asyncio, trio, anyio on asyncio, anyio
on trio); ``serve`` starts a server of that transport on 127.0.0.1 (a free port) and stops it
when the test ends. A watchdog dumps the stacks and ends the run if one test hangs, so CI
never waits for its own time limit.
"""

from __future__ import annotations

import faulthandler
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from smtpcore import SmtpConfig
from transports.controller import ServerThread
from transports.handler import Handler

from . import figures

TRANSPORTS = ["threads", "asyncio", "trio", "anyio", "anyio-trio"]
STOP_GRACE = 1.0
STOP_TIMEOUT = 15.0
TEST_WATCHDOG = 120.0
"""Seconds after which a single hung test aborts the run with every thread's stack."""

Serve = Callable[..., AbstractContextManager[ServerThread]]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(TEST_WATCHDOG, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def serve(transport: str) -> Serve:
    """``with serve(handler, **options) as server:`` a server on 127.0.0.1, a free port."""

    @contextmanager
    def run(handler: Handler, **options: Any) -> Iterator[ServerThread]:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("config", SmtpConfig(hostname="mx.test"))
        server = ServerThread(transport, handler, ready_timeout=10.0, **options).start()
        try:
            yield server
        finally:
            server.stop(grace=STOP_GRACE, timeout=STOP_TIMEOUT)

    return run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    figures.write_report()


@pytest.fixture
def timer() -> Callable[[], float]:
    start = time.monotonic()
    return lambda: time.monotonic() - start


def pytest_terminal_summary(terminalreporter: Any) -> None:
    found = figures.lines()
    if found:
        terminalreporter.section("smtpcore security figures")
        for line in found:
            terminalreporter.write_line(line)
