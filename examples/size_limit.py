"""Refuse messages larger than a limit with ``552``, checked while the data arrives.

    python examples/size_limit.py [--port 2525]

The core has such a limit built in (``SmtpConfig(max_message_size=...)``, advertised by the
SIZE extension); a hook like this one can pick a limit per session, e.g. larger once the client
has authenticated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from transports import Handler, Session, Smtp552Error
from transports.asyncio import Server


class SizeLimit(Handler):
    """Accepts messages of at most ``limit`` octets."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit

    def on_message_data(self, ctx: Session, chunk: bytes) -> None:
        # Called for each piece of content, already added to ctx.message.data. Raising drops
        # the message (nothing more is kept); the client gets the 552 once its data has ended,
        # as SMTP allows no reply sooner, and may go on with another message.
        if ctx.message.size > self.limit:
            raise Smtp552Error(f"Message exceeds {self.limit} octets")

    def on_message(self, ctx: Session) -> None:
        print(f"Accepted {ctx.message.size} octets from <{ctx.sender}>", flush=True)


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(SizeLimit(), parser.parse_args().port))
