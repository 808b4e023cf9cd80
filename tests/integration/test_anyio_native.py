"""`transports.anyio` runs the native server of the anyio backend it finds: asyncio's under the
asyncio backend, trio's under the trio backend. Each test runs the server in ``anyio.run`` on
both backends, from an anyio task group as an application would, and talks to it with a real
client on 127.0.0.1 from a worker thread; every wait is bounded.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio
from anyio.abc import TaskStatus

from smtpcore import MailFrom, RcptTo, SmtpConfig
from transports.anyio import Server
from transports.errors import Smtp550Error
from transports.handler import Handler, Session

from ._support import TIMEOUT, RawClient, make_message

pytestmark = pytest.mark.network

BACKENDS = ["asyncio", "trio"]
LIMIT = 20.0
"""Seconds a whole test may take inside ``anyio.run``."""


def run(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(LIMIT):
            await main()

    anyio.run(bounded, backend=backend)


def new_server(handler: Handler, **options: Any) -> Server:
    config = SmtpConfig(hostname="mx.test")
    return Server(handler, host="127.0.0.1", port=0, config=config, **options)


class AnyioHooks(Handler):
    """``async def`` hooks that use anyio: a sleep, a deadline that passes (the hook fails,
    the client hears 451), and a worker thread that stores the message."""

    def __init__(self) -> None:
        self.libraries: list[str] = []
        self.stored: list[bytes] = []
        self.thread_names: list[str] = []

    async def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        self.libraries.append(sniffio.current_async_library())
        await anyio.sleep(0.01)

    async def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if address.startswith("slow@"):
            with anyio.fail_after(0.05):
                await anyio.sleep(10)
        if address.startswith("nobody@"):
            raise Smtp550Error()

    async def on_message(self, ctx: Session) -> None:
        await anyio.to_thread.run_sync(self.store, ctx.message.as_bytes())

    def store(self, data: bytes) -> None:
        self.stored.append(data)
        self.thread_names.append(threading.current_thread().name)


def talk(address: tuple[str, int]) -> tuple[int, int, dict[str, tuple[int, bytes]]]:
    """One smtplib session: the codes of a slow and a refused RCPT, and a delivery."""
    with smtplib.SMTP(*address, local_hostname="client.test", timeout=TIMEOUT) as client:
        client.ehlo()
        client.mail("x@y.z")
        slow, _ = client.rcpt("slow@b.c")
        nobody, _ = client.rcpt("nobody@b.c")
        client.rset()
        refused = client.sendmail("x@y.z", ["a@b.c"], make_message("via anyio"))
        return slow, nobody, refused


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_hooks_may_call_anyio(backend: str) -> None:
    handler = AnyioHooks()
    server = new_server(handler)
    outcome: list[tuple[int, int, dict[str, tuple[int, bytes]]]] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            outcome.append(await anyio.to_thread.run_sync(talk, server.addresses[0]))
            await server.stop(grace=2.0)

    run(backend, main)
    assert outcome == [(451, 550, {})]  # fail_after fired in the hook: 451
    assert handler.libraries == [backend, backend]
    assert len(handler.stored) == 1 and handler.stored[0].endswith(b"Hello there.\r\n")
    assert handler.thread_names[0] != threading.main_thread().name


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backends_own_server_runs(backend: str) -> None:
    """The server announces itself by its native transport's name."""
    logger = logging.getLogger(f"smtpcore.test.anyio_native.{backend}")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = Keep()
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    server = new_server(Handler(), logger=logger)
    kinds: list[str] = []
    addresses: list[list[tuple[str, int]]] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            kinds.append(type(server.inner).__module__)
            addresses.append(server.addresses)
            await server.stop(grace=0)

    try:
        run(backend, main)
    finally:
        logger.removeHandler(keep)
    assert kinds == [f"transports.{backend}"]
    listening = [line for line in records if "listening on" in line]
    assert listening == [f"smtpcore ({backend}) listening on {addresses[0]}"]


class Hanging(Handler):
    """``on_message`` hangs (until cancelled): a session busy when the server is cancelled."""

    def __init__(self) -> None:
        self.hanging = threading.Event()

    async def on_message(self, ctx: Session) -> None:
        self.hanging.set()
        await anyio.sleep(3600)


def hang_in_data(address: tuple[str, int], handler: Hanging) -> RawClient:
    client = RawClient(address)
    client.expect(220)
    for line in ("EHLO client.test", "MAIL FROM:<x@y.z>", "RCPT TO:<a@b.c>"):
        client.command(line, 250)
    client.command("DATA", 354)
    client.send(make_message("hangs") + b".\r\n")
    assert handler.hanging.wait(TIMEOUT)
    return client


def idle_client(address: tuple[str, int]) -> RawClient:
    client = RawClient(address)
    client.expect(220)
    return client


def rest(client: RawClient) -> bytes:
    """What the server still sent before it closed (EOF or reset)."""
    data = client.buffer
    with client, suppress(ConnectionResetError):
        while chunk := client.sock.recv(4096):
            data += chunk
    return data


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelling_the_task_group_stops_the_server(backend: str) -> None:
    """An idle and a busy session: both end, the port is free and the cancellation reaches
    `serve` (it does not return as if stopped), within a few seconds."""
    handler = Hanging()
    server = new_server(handler)
    cancelled: list[bool] = []
    took: list[float] = []
    said: list[bytes] = []

    async def serve(*, task_status: TaskStatus[None]) -> None:
        try:
            await server.serve(task_status=task_status)
        except BaseException as exc:  # on trio a nursery's group of Cancelled
            whole = BaseExceptionGroup("", [exc])
            cancelled.append(whole.split(anyio.get_cancelled_exc_class())[1] is None)
            raise

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(serve)
            address = server.addresses[0]
            idle = await anyio.to_thread.run_sync(idle_client, address)
            busy = await anyio.to_thread.run_sync(hang_in_data, address, handler)
            started = time.monotonic()
            tg.cancel_scope.cancel()
        took.append(time.monotonic() - started)
        said.append(await anyio.to_thread.run_sync(rest, idle))
        said.append(await anyio.to_thread.run_sync(rest, busy))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=TIMEOUT).close()
        with socket.socket() as again:  # the port is free (SO_REUSEADDR, as the servers bind)
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(address)
            again.listen()

    run(backend, main)
    assert cancelled == [True]
    assert took[0] < 5.0
    assert all(not text or text.startswith(b"421 ") for text in said), said
