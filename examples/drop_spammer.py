"""Drop the connection of a known spammer at once with ``421`` (by HELO name or by sender).

    python examples/drop_spammer.py [--port 2525]

Try it: swaks --server 127.0.0.1:2525 --helo spammer.example --to you@example.org
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterable

from smtpcore import MailFrom
from transports import Handler, Session, Smtp421Error
from transports.asyncio import Server


class DropSpammer(Handler):
    """Ends the session of a client that greets with, or sends from, a blocked name."""

    def __init__(
        self,
        blocked_helos: Iterable[str] = ("spammer.example",),
        blocked_senders: Iterable[str] = ("offers@spammer.example",),
    ) -> None:
        self.blocked_helos = {name.lower() for name in blocked_helos}
        self.blocked_senders = {address.lower() for address in blocked_senders}

    def on_helo(self, ctx: Session, domain: str) -> None:
        if domain.lower() in self.blocked_helos:
            # A 421 is the one reply that also closes the connection, right after it is sent.
            raise Smtp421Error("Abort: identified spammer")

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        if address.lower() in self.blocked_senders:
            print(f"Dropping {ctx.remote_ip} ({ctx.helo}): sender {address}", flush=True)
            raise Smtp421Error("Abort: identified spammer")


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(DropSpammer(), parser.parse_args().port))
