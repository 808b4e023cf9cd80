"""Factories behind the ``name:ARGUMENT`` handler specs of `resolve_handler` (``--handler``).

Each takes the text after the first colon (None without one) and raises ValueError with the
expected syntax when it is missing or wrong, so a bad ``--handler`` fails at start-up with a
message saying what to write, not at the first message.
"""

from __future__ import annotations

from transports.handler import Handler

from .maildir import MaildirHandler
from .mbox import MboxHandler
from .pipe import PipeHandler
from .relay import RelayHandler, parse_relay_target
from .webhook import WebhookHandler

__all__ = ["maildir", "mbox", "pipe", "relay", "webhook"]


def _required(name: str, argument: str | None, syntax: str) -> str:
    if not argument:
        raise ValueError(f"handler {name} needs an argument: {syntax}")
    return argument


def maildir(argument: str | None) -> Handler:
    """``maildir:DIR``."""
    return MaildirHandler(_required("maildir", argument, "maildir:DIR"))


def mbox(argument: str | None) -> Handler:
    """``mbox:FILE``."""
    return MboxHandler(_required("mbox", argument, "mbox:FILE"))


def relay(argument: str | None) -> Handler:
    """``relay:HOST:PORT`` (``relay:[::1]:25`` for IPv6)."""
    host, port = parse_relay_target(_required("relay", argument, "relay:HOST:PORT"))
    return RelayHandler(host, port)


def pipe(argument: str | None) -> Handler:
    """``pipe:COMMAND`` (split like a shell would, run without one)."""
    return PipeHandler(_required("pipe", argument, "pipe:COMMAND"))


def webhook(argument: str | None) -> Handler:
    """``webhook:URL``."""
    return WebhookHandler(_required("webhook", argument, "webhook:URL"))
