"""The trio transport's reads and writes on a plain socket (`_Trio.receiver`/`sender`): on POSIX
they go straight to the descriptor, so what `trio.SocketStream` (which does them on Windows)
says about a closed, reset or full socket they must say too; each test runs both ways. Over a
connected pair of 127.0.0.1 sockets; every wait bounded.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio

import transports.trio
from transports.trio import Server

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True, params=[True, False], ids=["descriptor", "socket-stream"])
def by_descriptor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transports.trio, "_BY_DESCRIPTOR", request.param)


LIMIT = 10.0
BACKEND = Server.backend


def run(test: Callable[[trio.SocketStream, trio.SocketStream], Awaitable[None]]) -> None:
    """Run ``test(server_side, client_side)`` on a fresh connection; both ends closed after."""

    async def bounded() -> None:
        with trio.fail_after(LIMIT):
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            async with listener:
                port = listener.socket.getsockname()[1]
                client = await trio.open_tcp_stream("127.0.0.1", port)
                server = await listener.accept()
            assert isinstance(server, trio.SocketStream)
            try:
                await test(server, client)
            finally:
                await client.aclose()
                await server.aclose()

    trio.run(bounded)


def test_bytes_both_ways_and_eof() -> None:
    async def main(server: trio.SocketStream, client: trio.SocketStream) -> None:
        receive, send = BACKEND.receiver(server), BACKEND.sender(server)
        await client.send_all(b"EHLO x\r\n")
        assert await receive(65536) == b"EHLO x\r\n"
        await send(b"250 ok\r\n")
        assert await client.receive_some(100) == b"250 ok\r\n"
        await client.aclose()
        assert await receive(65536) == b""

    run(main)


def test_a_read_waits_for_the_peer() -> None:
    async def main(server: trio.SocketStream, client: trio.SocketStream) -> None:
        receive = BACKEND.receiver(server)
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await receive(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            assert got == []  # nothing sent yet: the read waits
            await client.send_all(b"NOOP\r\n")
        assert got == [b"NOOP\r\n"]

    run(main)


def test_a_reset_peer_breaks_the_stream() -> None:
    async def main(server: trio.SocketStream, client: trio.SocketStream) -> None:
        receive = BACKEND.receiver(server)
        # SO_LINGER 0: close sends RST instead of FIN
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()
        with pytest.raises(trio.BrokenResourceError) as caught:
            await receive(65536)
        assert isinstance(caught.value.__cause__, ConnectionResetError)

    run(main)


def test_a_write_waits_while_the_peer_reads_nothing_and_can_be_cancelled() -> None:
    async def main(server: trio.SocketStream, client: trio.SocketStream) -> None:
        send = BACKEND.sender(server)
        with trio.move_on_after(0.5) as scope:
            await send(b"x" * (64 << 20))  # far beyond both socket buffers
        assert scope.cancelled_caught

    run(main)


def test_a_closed_stream_is_never_read_or_written_again() -> None:
    """Its descriptor number may already belong to another connection."""

    async def main(server: trio.SocketStream, client: trio.SocketStream) -> None:
        receive, send = BACKEND.receiver(server), BACKEND.sender(server)
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await receive(65536)
        with pytest.raises(trio.ClosedResourceError):
            await send(b"250 ok\r\n")

    run(main)
