"""Print every mail received: who sent it to whom, its subject and its text.

    python examples/print_mail.py [--port 2525]

and from another shell, e.g.: swaks --server 127.0.0.1:2525 --to you@example.org
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from transports import Handler, Session
from transports.asyncio import Server


class PrintMail(Handler):
    """Prints each message once it has been received completely."""

    def on_message(self, ctx: Session) -> None:
        mail = ctx.message.email  # parsed (once) by the stdlib email package, policy.default
        print(f"Mail from <{ctx.sender}> at {ctx.remote_ip} for {', '.join(ctx.recipients)}")
        print(f"Subject: {mail['subject']}")  # encoded words come out decoded
        text = mail.get_body(preferencelist=("plain",))
        print(text.get_content() if text is not None else "(no text part)", flush=True)
        # Returning nothing answers 250: the message is accepted.


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop gracefully, no traceback
        asyncio.run(serve(PrintMail(), parser.parse_args().port))
