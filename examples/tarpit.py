"""A tarpit: answer each RCPT TO of a suspicious client only after a long pause.

    python examples/tarpit.py [--port 2525]

Spammers send to many recipients as fast as they can; slowing each recipient down costs them
much and an honest client little. The hook is ``async def`` and sleeps with ``asyncio.sleep``,
so only that session waits while the server goes on serving the others. (Under the trio
transport use ``trio.sleep``, under anyio ``anyio.sleep``; under threads a plain ``def`` with
``time.sleep`` holds just that session's thread.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterable

from smtpcore import RcptTo
from transports import Handler, Session
from transports.asyncio import Server


class Tarpit(Handler):
    """Delays every RCPT TO reply by ``delay`` seconds for clients whose HELO name holds one of
    the ``suspicious`` words (names of dial-up and dynamic address ranges, say)."""

    def __init__(
        self, delay: float = 15.0, suspicious: Iterable[str] = ("dynamic", "dialup", "dsl")
    ) -> None:
        self.delay = delay
        self.suspicious = tuple(word.lower() for word in suspicious)
        self.waiting = 0  # sessions sleeping in the tarpit right now
        self.delayed = 0  # replies delayed so far

    def is_suspicious(self, ctx: Session) -> bool:
        helo = (ctx.helo or "").lower()
        return any(word in helo for word in self.suspicious)

    async def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if self.is_suspicious(ctx):
            self.waiting += 1
            try:
                await asyncio.sleep(self.delay)  # the reply (250) goes out after this
            finally:
                self.waiting -= 1
            self.delayed += 1


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Tarpit(), parser.parse_args().port))
