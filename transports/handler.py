"""The one handler API every transport serves: hooks, the session context, the message.

Subclass `Handler` and override the hooks you need, as plain ``def`` or (under the asyncio,
trio and anyio transports) ``async def``. A hook answers by returning (see each hook) or by
raising an `SmtpError` (the reply is the exception's); any other exception is logged with its
traceback and answered 451 4.3.0, and the session goes on.
"""

from __future__ import annotations

import email.policy
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from smtpcore import AuthAttempt, MailFrom, RcptTo, SmtpConnection

from .errors import Smtp535Error, SmtpError

if TYPE_CHECKING:
    from smtpcore.proxy import ProxyInfo

    from ._common import Proxied
    from .tls import TlsFacts

__all__ = ["Handler", "Message", "Session"]

MaybeAwaitable = Any  # a hook's result, or an awaitable of it under the async transports


@dataclass(slots=True)
class Message:
    """The message being received (or just received) in a session.

    ``data`` is what the client sent after DATA/BDAT, dot-unstuffed, plus whatever hooks added
    with `add_header`.
    """

    data: bytearray = field(default_factory=bytearray)
    received_at: datetime | None = None
    delivered_at: datetime | None = None
    _parsed: EmailMessage | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    def add_header(self, name: str, value: str) -> None:
        """Append ``name: value`` where the content stands now.

        From `Handler.on_message_start` the header lands on top (as Received: should), from
        `Handler.on_message_headers` at the end of the header block.
        """
        if not name or any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
            raise ValueError("header name must be a token and neither part may hold CR/LF")
        self.data += f"{name}: {value}\r\n".encode()

    def as_bytes(self) -> bytes:
        return bytes(self.data)

    @property
    def email(self) -> EmailMessage:
        """The message parsed with the stdlib ``email`` package (``policy.default``), once."""
        if self._parsed is None:
            parsed = message_from_bytes(bytes(self.data), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self._parsed = parsed
        return self._parsed


@dataclass(slots=True, eq=False)
class Session:
    """Everything known about one client connection, passed to every hook as ``ctx``."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    local_host: str | None = None
    remote_host: str | None = None
    """Reverse DNS names, filled only when the server's ``dns_reverse_lookup`` is on."""
    connected_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    tls: TlsFacts | None = None
    message: Message = field(default_factory=Message)
    state: dict[str, Any] = field(default_factory=dict)
    """Free room for the application's own per-session data."""
    connection: SmtpConnection | None = field(default=None, repr=False)
    proxy: Proxied | None = None
    """On a ``proxy_protocol`` listener: the PROXY header (``proxy.info``) and the real peer,
    i.e. the proxy (``proxy.peer_ip``, ``proxy.peer_port``); ``remote_ip``/``remote_port`` (and
    ``local_ip``/``local_port``) are then the addresses the header named."""

    def _core(self) -> SmtpConnection:
        assert self.connection is not None, "session not attached to a connection yet"
        return self.connection

    @property
    def helo(self) -> str | None:
        return self._core().helo_name

    @property
    def tls_active(self) -> bool:
        return self._core().tls_active

    @property
    def authenticated(self) -> bool:
        return self._core().auth is not None

    @property
    def authorization_id(self) -> str | None:
        auth = self._core().auth
        return None if auth is None else auth.authorization_id

    @property
    def authentication_id(self) -> str | None:
        auth = self._core().auth
        return None if auth is None else auth.authentication_id

    @property
    def sender(self) -> str | None:
        """The current transaction's reverse-path (``""`` for ``<>``)."""
        return self._core().envelope.sender

    @property
    def recipients(self) -> tuple[str, ...]:
        return self._core().envelope.recipients

    @property
    def mail_params(self) -> Mapping[str, str | None]:
        mail = self._core().envelope.mail_from
        return {} if mail is None else mail.params


class Handler:
    """Base class with the default behaviour of every hook; override what you need.

    Every hook gets the `Session` first. Hooks may be ``async def`` under the async
    transports; under `transports.threads` they must be plain functions.
    """

    def on_proxy(self, ctx: Session, info: ProxyInfo) -> MaybeAwaitable:
        """A PROXY header arrived on a ``proxy_protocol`` listener (``ctx`` already holds the
        addresses it named, and ``ctx.proxy`` the proxy's). Raise anything to close the
        connection without a reply; the session (banner, `on_connect`) starts otherwise."""

    def on_connect(self, ctx: Session) -> MaybeAwaitable:
        """Before the banner. Raise `SmtpError` (421 or 554) to refuse the client."""

    def on_disconnect(self, ctx: Session) -> MaybeAwaitable:
        """After the connection closed, however it ended."""

    def on_helo(self, ctx: Session, domain: str) -> MaybeAwaitable:
        """HELO/EHLO/LHLO. Raise to refuse the greeting."""

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> MaybeAwaitable:
        """MAIL FROM. Return a string to record another sender address; raise to refuse."""

    def on_rcpt_to(self, ctx: Session, address: str, event: RcptTo) -> MaybeAwaitable:
        """RCPT TO. Return a string to record another recipient address; raise to refuse."""

    def on_auth(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> MaybeAwaitable:
        """AUTH credentials. Return nothing to accept, or a string to become the authorization
        id; raise (the default raises 535) to refuse. For CRAM-MD5 ``password`` is None: use
        ``attempt.verify(known_password)``.
        """
        raise Smtp535Error()

    def on_message_start(self, ctx: Session) -> MaybeAwaitable:
        """DATA (before 354) or the first BDAT. ``ctx.message.add_header`` prepends."""

    def on_message_headers(self, ctx: Session) -> MaybeAwaitable:
        """The header block has been received; ``ctx.message.add_header`` appends to it."""

    def on_message_data(self, ctx: Session, chunk: bytes) -> MaybeAwaitable:
        """A piece of content (already in ``ctx.message.data``). Raise to refuse the message:
        the client is told once its data has ended."""

    def on_message(self, ctx: Session) -> MaybeAwaitable:
        """The whole message is in ``ctx.message``. Return nothing for 250; raise to refuse.
        In LMTP, a sequence (one `SmtpError` or None per recipient) answers each recipient."""

    def on_unknown_command(self, ctx: Session, verb: str, argument: str) -> MaybeAwaitable:
        """A command the core does not know. Return a string for ``250 <string>``; the default
        refuses with 500 5.5.2."""
        raise SmtpError(500, "Command unrecognized", "5.5.2")

    def on_logging(
        self, ctx: Session | None, level: int, message: str, exc: BaseException | None = None
    ) -> MaybeAwaitable:
        """Every log line of a session. Left alone, lines go to the server's ``logger`` option
        (``logging.getLogger("smtpcore.server")`` by default).

        Must not be ``async``: it is called from places that cannot wait.
        """
        logging.getLogger("smtpcore.server").log(level, message, exc_info=exc)


def per_recipient(result: object, count: int) -> Sequence[SmtpError | None] | None:
    """Validate an LMTP per-recipient answer from `Handler.on_message`; None if not one."""
    if isinstance(result, list | tuple):
        if len(result) != count or not all(r is None or isinstance(r, SmtpError) for r in result):
            raise TypeError(f"on_message must return {count} SmtpError-or-None items in LMTP")
        return result
    return None


def is_async_hook(result: object) -> bool:
    """True if a hook returned something to await."""
    return isinstance(result, Awaitable)
