"""Many clients whose commands land in the same turn of the event loop must each get exactly
their own replies, in order, also when a session closes right after: asyncio holds the replies
of one turn until its end (the first goes out at once), trio writes each as it is made.

The clients run on the server's own loop, so each round of their writes is read by the server
in one turn; every wait is bounded.
"""

from __future__ import annotations

import asyncio

import pytest
import trio

from smtpcore import SmtpConfig
from transports.asyncio import Server as AsyncioServer
from transports.handlers.sink import Sink
from transports.trio import Server as TrioServer

pytestmark = pytest.mark.network

CLIENTS = 20
LIMIT = 20.0
CONFIG = SmtpConfig(hostname="mx.test")
OK, BYE = b"250 2.0.0 OK\r\n", b"221 2.0.0 Bye\r\n"


def expected(i: int) -> list[bytes]:
    """What client ``i`` reads after its banner for the script of `script`."""
    first = [OK, b"250 mx.test greets c%d\r\n" % i]
    return [*first, OK, BYE] if i % 2 else [*first, BYE]


def script(i: int) -> list[bytes]:
    """Three rounds; in the last, odd clients pipeline NOOP and QUIT, even ones only QUIT."""
    return [b"NOOP\r\n", b"HELO c%d\r\n" % i, b"NOOP\r\nQUIT\r\n" if i % 2 else b"QUIT\r\n"]


def test_asyncio_replies_of_one_turn() -> None:
    async def main() -> None:
        async with AsyncioServer(Sink(), host="127.0.0.1", port=0, config=CONFIG) as server:
            host, port = server.addresses[0]
            clients = [await asyncio.open_connection(host, port) for _ in range(CLIENTS)]
            for reader, _ in clients:
                assert (await reader.readline()).startswith(b"220 mx.test")
            got: list[list[bytes]] = [[] for _ in clients]
            for round_ in range(3):
                for i, (_, writer) in enumerate(clients):
                    writer.write(script(i)[round_])
                for i, (reader, _) in enumerate(clients):
                    want = len(expected(i)) if round_ == 2 else round_ + 1
                    while len(got[i]) < want:
                        got[i].append(await reader.readline())
            for i, (reader, writer) in enumerate(clients):
                assert got[i] == expected(i)
                assert await reader.read() == b""  # closed after the 221
                writer.close()

    asyncio.run(asyncio.wait_for(main(), LIMIT))


def test_trio_replies_of_one_turn() -> None:
    async def main() -> None:
        server = TrioServer(Sink(), host="127.0.0.1", port=0, config=CONFIG)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            host, port = server.addresses[0]
            streams = [await trio.open_tcp_stream(host, port) for _ in range(CLIENTS)]
            buffers = [b""] * CLIENTS

            async def line(i: int) -> bytes:
                while b"\r\n" not in buffers[i]:
                    data = await streams[i].receive_some(4096)
                    assert data, f"client {i}: closed early"
                    buffers[i] += data
                head, _, buffers[i] = buffers[i].partition(b"\r\n")
                return head + b"\r\n"

            for i in range(CLIENTS):
                assert (await line(i)).startswith(b"220 mx.test")
            got: list[list[bytes]] = [[] for _ in streams]
            for round_ in range(3):
                for i, stream in enumerate(streams):
                    await stream.send_all(script(i)[round_])
                for i in range(CLIENTS):
                    want = len(expected(i)) if round_ == 2 else round_ + 1
                    while len(got[i]) < want:
                        got[i].append(await line(i))
            for i, stream in enumerate(streams):
                assert got[i] == expected(i)
                assert buffers[i] == b"" and await stream.receive_some(4096) == b""
                await stream.aclose()
            await server.stop()

    async def bounded() -> None:
        with trio.fail_after(LIMIT):
            await main()

    trio.run(bounded)
