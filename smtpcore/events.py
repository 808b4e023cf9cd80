"""What `SmtpConnection.next_event()` returns: events, and two sentinels.

Decision events (``needs_reply = True``) stop the core until the application answers them with
`SmtpConnection.accept` or `SmtpConnection.reject`; the others only inform.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import FunctionType, MappingProxyType
from typing import ClassVar, Final, Literal

from .replies import Reply

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthAttempt",
    "CloseReason",
    "ConnectionClosed",
    "DataChunk",
    "Envelope",
    "Event",
    "Greeting",
    "HeadersComplete",
    "Helo",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageStart",
    "ProtocolViolation",
    "RcptTo",
    "Reset",
    "StartTls",
    "TlsUpgrade",
    "UnknownCommand",
]


class _Sentinel(type):
    """Sentinel classes whose type is themselves, so ``type(ev)`` dispatch covers them too."""

    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """The core needs more bytes: call `receive_data` (after sending `data_to_send`)."""


class PAUSED(metaclass=_Sentinel):
    """A decision event is still unanswered: answer `SmtpConnection.pending` first."""


_NO_PARAMS: Final[Mapping[str, str | None]] = MappingProxyType({})


class Event:
    """Base of all events."""

    __slots__ = ()
    needs_reply: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Greeting(Event):
    """A client connected: accept to send the 220 banner, or reject with 554 or 421."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Helo(Event):
    """HELO, EHLO or LHLO. Accepting sends the greeting reply (the EHLO list for EHLO/LHLO)."""

    needs_reply: ClassVar[bool] = True
    verb: Literal["HELO", "EHLO", "LHLO"]
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MailFrom(Event):
    """MAIL FROM. ``address`` is ``""`` for the null reverse-path ``<>``.

    ``params`` holds every ESMTP parameter (upper-case keys, None for a keyword without value);
    the well-known ones are also parsed into their own fields.
    """

    needs_reply: ClassVar[bool] = True
    address: str
    params: Mapping[str, str | None] = field(default_factory=lambda: _NO_PARAMS)
    size: int | None = None
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    auth: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RcptTo(Event):
    """RCPT TO, with DSN's NOTIFY (a tuple of words) and ORCPT (address type, address)."""

    needs_reply: ClassVar[bool] = True
    address: str
    params: Mapping[str, str | None] = field(default_factory=lambda: _NO_PARAMS)
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """The transaction so far: the accepted MAIL FROM and RCPT TO commands."""

    mail_from: MailFrom | None = None
    rcpt_tos: tuple[RcptTo, ...] = ()

    @property
    def sender(self) -> str | None:
        return None if self.mail_from is None else self.mail_from.address

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.rcpt_tos)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageStart(Event):
    """DATA or the first BDAT of a transaction. Accepting DATA sends 354."""

    needs_reply: ClassVar[bool] = True
    command: Literal["DATA", "BDAT"]
    envelope: Envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class DataChunk(Event):
    """A piece of message content, dot-unstuffed and line endings handled per `CrlfMode`.

    The application may `reject` it: the rest of the message is then read and dropped, and
    the reply is sent once the data has ended.
    """

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadersComplete(Event):
    """The header block has ended: the next content is the empty line before the body.

    Sent exactly once per message, before `MessageComplete`, so headers can be added here.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageComplete(Event):
    """The data has ended. Accept (250), reject, or in LMTP answer per recipient."""

    needs_reply: ClassVar[bool] = True
    envelope: Envelope
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageAborted(Event):
    """The message in progress will not be delivered: drop what was collected of it.

    ``reply`` is what the client was (or will be) told; None when the peer went away.
    """

    reason: str
    reply: Reply | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthAttempt(Event):
    """Credentials from AUTH. Accept (235) to authenticate, reject (default 535 5.7.8).

    For PLAIN and LOGIN ``password`` holds the password; for CRAM-MD5 ``challenge`` and
    ``digest`` hold what was exchanged. `verify` checks a known secret against either.
    """

    needs_reply: ClassVar[bool] = True
    mechanism: str
    authorization_id: str
    authentication_id: str
    password: str | None = field(default=None, repr=False)
    challenge: bytes | None = None
    digest: str | None = field(default=None, repr=False)

    def verify(self, secret: str) -> bool:
        """True if ``secret`` is this user's password (constant-time comparison)."""
        if self.challenge is not None and self.digest is not None:
            key = secret.encode("utf-8")
            expected = hmac.new(key, self.challenge, hashlib.md5).hexdigest()
            return hmac.compare_digest(expected, self.digest)
        if self.password is None:
            return False
        return hmac.compare_digest(secret.encode("utf-8"), self.password.encode("utf-8"))


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTls(Event):
    """STARTTLS. Accepting sends 220 and is followed by `TlsUpgrade`."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsUpgrade(Event):
    """Send `data_to_send()`, run the TLS handshake, then call `tls_established()`.

    ``discarded`` counts plaintext octets the client sent after STARTTLS; they were dropped
    unread (command injection, CVE-2011-0411).
    """

    discarded: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset(Event):
    """The transaction was dropped (RSET, a new HELO/EHLO, STARTTLS)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownCommand(Event):
    """A command the core does not know. Reject it (default 500 5.5.2) or answer it."""

    needs_reply: ClassVar[bool] = True
    verb: str
    argument: str
    line: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolViolation(Event):
    """The client erred and the core has already queued ``reply`` (for logs and metrics)."""

    reply: Reply
    line: bytes = b""


class CloseReason(enum.Enum):
    """Why the session ended."""

    QUIT = "quit"
    PEER_CLOSED = "peer closed"
    REFUSED = "refused"
    SERVER_CLOSED = "server closed"
    TOO_MANY_ERRORS = "too many errors"
    TOO_MANY_AUTH_FAILURES = "too many auth failures"
    BUFFER_OVERFLOW = "buffer overflow"
    TIMEOUT = "timeout"
    TLS_FAILED = "tls failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The session is over: send `data_to_send()` (it may hold a 221 or 421), then close."""

    reason: CloseReason


def _slot_init(cls: type) -> Callable[..., None]:
    """An ``__init__`` for a frozen, slotted, keyword-only dataclass that fills each slot
    through its descriptor: same parameters, defaults and factories as the generated one, which
    goes through ``object.__setattr__`` per field and takes twice as long on CPython 3.11 (the
    core makes several events per command)."""
    namespace: dict[str, object] = {"__name__": __name__, "_FACTORY": _FACTORY}
    params, body = [], []
    for f in fields(cls):
        namespace[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is not MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY: {f.name} = _factory_{f.name}()")
        else:
            params.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})")
    signature = f"self, *, {', '.join(params)}" if params else "self"
    exec(f"def __init__({signature}):\n" + "\n".join(body or ["    pass"]), namespace)
    init = namespace["__init__"]
    assert isinstance(init, FunctionType)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


_FACTORY = object()
"""Default of a parameter whose field has a ``default_factory``."""

for _cls in (
    Greeting,
    Helo,
    MailFrom,
    RcptTo,
    Envelope,
    MessageStart,
    DataChunk,
    HeadersComplete,
    MessageComplete,
    MessageAborted,
    AuthAttempt,
    StartTls,
    TlsUpgrade,
    Reset,
    UnknownCommand,
    ProtocolViolation,
    ConnectionClosed,
):
    setattr(_cls, "__init__", _slot_init(_cls))  # noqa: B010  # mypy keeps the dataclass view
del _cls
