"""Refuse recipients we do not know with ``550 5.1.1`` (the others still get the mail).

    python examples/reject_recipient.py [--port 2525]

Try it: swaks --server 127.0.0.1:2525 --to nobody@example.org
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterable

from smtpcore import RcptTo
from transports import Handler, Session, Smtp550Error
from transports.asyncio import Server


class RejectRecipient(Handler):
    """Accepts mail only for the mailboxes it was given."""

    def __init__(
        self, mailboxes: Iterable[str] = ("alice@example.org", "postmaster@example.org")
    ) -> None:
        self.mailboxes = {mailbox.lower() for mailbox in mailboxes}
        self.delivered: list[tuple[str, ...]] = []

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> None:
        if address.lower() not in self.mailboxes:
            # The exception is the reply: "550 5.1.1 No such user here". The session goes on,
            # and the message still goes to the recipients that were accepted.
            raise Smtp550Error("No such user here")

    def on_message(self, ctx: Session) -> None:
        self.delivered.append(ctx.recipients)
        print(f"Mail from <{ctx.sender}> for {', '.join(ctx.recipients)}", flush=True)


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(RejectRecipient(), parser.parse_args().port))
