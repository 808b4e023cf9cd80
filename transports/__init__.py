"""Transports for smtpcore: threads, asyncio, trio and anyio servers over one handler API.

The transports themselves are imported by name (``transports.asyncio``, ``transports.trio``...)
so that choosing one never imports the others' event loops.
"""

from __future__ import annotations

from .controller import TRANSPORTS, ServerThread
from .errors import (
    Smtp421Error,
    Smtp450Error,
    Smtp451Error,
    Smtp452Error,
    Smtp454Error,
    Smtp500Error,
    Smtp501Error,
    Smtp502Error,
    Smtp503Error,
    Smtp504Error,
    Smtp521Error,
    Smtp530Error,
    Smtp535Error,
    Smtp550Error,
    Smtp552Error,
    Smtp553Error,
    Smtp554Error,
    SmtpError,
)
from .handler import Handler, Message, Session
from .options import Listener, ServerOptions

__all__ = [
    "TRANSPORTS",
    "Handler",
    "Listener",
    "Message",
    "ServerOptions",
    "ServerThread",
    "Session",
    "Smtp421Error",
    "Smtp450Error",
    "Smtp451Error",
    "Smtp452Error",
    "Smtp454Error",
    "Smtp500Error",
    "Smtp501Error",
    "Smtp502Error",
    "Smtp503Error",
    "Smtp504Error",
    "Smtp521Error",
    "Smtp530Error",
    "Smtp535Error",
    "Smtp550Error",
    "Smtp552Error",
    "Smtp553Error",
    "Smtp554Error",
    "SmtpError",
]
