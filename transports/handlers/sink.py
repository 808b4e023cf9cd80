"""`Sink`: accepts every message and keeps nothing (for load tests and plumbing checks)."""

from __future__ import annotations

from transports.handler import Handler

__all__ = ["Sink"]


class Sink(Handler):
    """Accepts every sender, recipient and message, and drops the message.

    `Handler`'s defaults already accept everything; the driver skips hooks left at their
    defaults, so a sink costs no hook call at all.
    """
