"""smtpcore: the server side of SMTP and LMTP as a pure, I/O-free state machine.

Feed bytes with `SmtpConnection.receive_data`, take events from `SmtpConnection.next_event`,
answer decisions with `accept`/`reject`, and write out `data_to_send()`.
"""

from __future__ import annotations

from ._compile import compiled
from ._state import State
from .config import AuthMode, CrlfMode, SmtpConfig, TlsMode
from .connection import AuthInfo, SmtpConnection
from .errors import LocalProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    CloseReason,
    ConnectionClosed,
    DataChunk,
    Envelope,
    Event,
    Greeting,
    HeadersComplete,
    Helo,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageStart,
    ProtocolViolation,
    RcptTo,
    Reset,
    StartTls,
    TlsUpgrade,
    UnknownCommand,
)
from .replies import Reply
from .sasl import SaslExchange, SaslMechanism, SaslSyntaxError

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthAttempt",
    "AuthInfo",
    "AuthMode",
    "CloseReason",
    "ConnectionClosed",
    "CrlfMode",
    "DataChunk",
    "Envelope",
    "Event",
    "Greeting",
    "HeadersComplete",
    "Helo",
    "LocalProtocolError",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageStart",
    "ProtocolViolation",
    "RcptTo",
    "Reply",
    "Reset",
    "SaslExchange",
    "SaslMechanism",
    "SaslSyntaxError",
    "SmtpConfig",
    "SmtpConnection",
    "StartTls",
    "State",
    "TlsMode",
    "TlsUpgrade",
    "UnknownCommand",
    "compiled",
]
__version__ = "0.1.0"
