"""Bare-bones SMTP-shaped servers: the ceiling each event loop allows on this machine.

They answer every line with a canned reply and find the end of DATA with one ``bytes.find``:
no parsing, no state beyond "in DATA", no limits, no timeouts. Whatever a real server costs
above them is its own work; the ratio of a bare server to aiosmtpd bounds what any server on
that loop can reach here. Run as ``python -m benchmarks.bare LOOP --port PORT`` with LOOP one
of asyncio, uvloop, trio, threads; only for benchmarks, on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket  # noqa: TID251, RUF100 - real I/O here; only smtpcore is sans-IO
import threading
from collections.abc import Callable
from typing import cast

from benchmarks.servers import require_loopback

GREETING = b"220 bare ESMTP\r\n"
END_OF_DATA = b"\r\n.\r\n"


class CannedReplies:
    """One connection's replies: 354 after DATA, 221 after QUIT, 250 for anything else."""

    __slots__ = ("buffer", "in_data")

    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The replies owed for ``data``, and whether the client said QUIT."""
        buf, out = self.buffer + data, []
        while True:
            if self.in_data:
                end = buf.find(END_OF_DATA)
                if end < 0:
                    buf = buf[-4:]  # a terminator may straddle two reads
                    break
                buf, self.in_data = buf[end + 5 :], False
                out.append(b"250 ok\r\n")
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                break
            verb, buf = buf[:4].upper(), buf[end + 2 :]
            if verb == b"DATA":
                buf, self.in_data = b"\r\n" + buf, True  # the body may be empty
                out.append(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.buffer = buf
                return b"".join(out) + b"221 bye\r\n", True
            else:
                out.append(b"250 ok\r\n")
        self.buffer = buf
        return b"".join(out), False


class _Protocol(asyncio.BufferedProtocol):
    """Reads into one shared buffer: a plain Protocol makes the default loop allocate 256 KiB
    per ``recv`` (mmap and munmap each time), which would set the ceiling too low."""

    buffer = memoryview(bytearray(65536))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
        self.replies = CannedReplies()
        self.transport.write(GREETING)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        out, quit_ = self.replies.feed(self.buffer[:nbytes].tobytes())
        if out:
            self.transport.write(out)
        if quit_:
            self.transport.close()


def serve_asyncio(
    host: str, port: int, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Protocol, host, port)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def serve_trio(host: str, port: int) -> None:
    import trio

    async def session(stream: trio.SocketStream) -> None:
        """Reads and writes the descriptor as `transports.trio` does: one checkpoint per read,
        none per write (`trio.SocketStream` takes three per command and reply). `trio.serve_tcp`
        closes the stream."""
        fd, replies, out, quit_ = stream.socket.fileno(), CannedReplies(), GREETING, False
        while True:
            if out:
                os.write(fd, out)  # a reply fits the socket buffer
            if quit_:
                return
            await trio.lowlevel.checkpoint()
            while True:
                try:
                    data = os.read(fd, 65536)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(fd)
            if not data:
                return
            out, quit_ = replies.feed(data)

    trio.run(functools.partial(trio.serve_tcp, session, port, host=host))


def serve_threads(host: str, port: int) -> None:
    def session(conn: socket.socket) -> None:
        replies = CannedReplies()
        with conn:
            conn.sendall(GREETING)
            while data := conn.recv(65536):
                out, quit_ = replies.feed(data)
                if out:
                    conn.sendall(out)
                if quit_:
                    return

    with socket.create_server((host, port), backlog=1024) as listener:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=session, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loop", choices=("asyncio", "uvloop", "trio", "threads"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    host = require_loopback(args.host)
    if args.loop == "trio":
        serve_trio(host, args.port)
    elif args.loop == "threads":
        serve_threads(host, args.port)
    else:
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        serve_asyncio(host, args.port, factory)


if __name__ == "__main__":
    main()
