"""Normalise envelope addresses: lower-case, and no ``+tag`` (Jane+News@X.org -> jane@x.org).

    python examples/normalize_addresses.py [--port 2525]

A string returned from ``on_mail_from`` or ``on_rcpt_to`` is recorded instead of the address
the client sent, so every later hook (and ``ctx.sender``/``ctx.recipients``) sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from smtpcore import MailFrom, RcptTo
from transports import Handler, Session
from transports.asyncio import Server


def normalize(address: str) -> str:
    """Lower-case, with any ``+tag`` dropped from the local part."""
    local, at, domain = address.rpartition("@")
    if not at:  # "" (the null sender <>) or a bare "postmaster"
        return address.lower()
    return f"{local.split('+', 1)[0] or local}@{domain}".lower()


class NormalizeAddresses(Handler):
    """Records the (normalised) envelope of every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[str | None, tuple[str, ...]]] = []

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> str:
        return normalize(address)  # "" (for <>) means "keep the address as sent"

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> str:
        normalized = normalize(address)
        print(f"Normalized {address} to {normalized}", flush=True)
        return normalized

    def on_message(self, ctx: Session) -> None:
        self.envelopes.append((ctx.sender, ctx.recipients))
        print(f"Mail from <{ctx.sender}> for {', '.join(ctx.recipients)}", flush=True)


async def serve(handler: Handler, port: int) -> None:
    async with Server(handler, host="127.0.0.1", port=port) as server:
        print("Listening on {}:{}, Ctrl-C stops".format(*server.addresses[0]), flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(NormalizeAddresses(), parser.parse_args().port))
