"""`StoredMessage`: one received message with its envelope and session facts, as handlers keep
or pass it on.

The envelope (MAIL FROM, RCPT TO and their parameters) travels beside the content, never inside
it: a recipient list written into a made-up header would leak Bcc recipients and could be
forged by the client. The content is kept exactly as it arrived (dot-unstuffed, plus whatever
hooks added); trace headers are added by the handlers that store or forward it (see `trace`).
"""

from __future__ import annotations

import email.policy
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from types import MappingProxyType
from typing import TYPE_CHECKING

from transports.handler import Session

if TYPE_CHECKING:
    from transports.tls import TlsFacts

__all__ = ["StoredMessage", "new_message_id"]

Params = Mapping[str, str | None]


def new_message_id() -> str:
    """A short unique id that sorts by time: the milliseconds since 1970 in 12 hex digits, then
    6 random ones.

    It names the message in logs, in our ``Received:`` header (``id ...``) and in payloads,
    so one delivery can be followed across hops and handlers.
    """
    return f"{time.time_ns() // 1_000_000:012X}{secrets.token_hex(3).upper()}"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class StoredMessage:
    """A message as received: envelope, exact content, when, from whom and how.

    Frozen so that a record handed to several consumers (a test, a catcher UI, a relay) cannot
    be changed by one under the others. Records compare by identity (their mappings are not
    hashable); compare `id` to match records.
    """

    id: str
    sender: str
    """The reverse-path; ``""`` for the null sender ``<>``."""
    recipients: tuple[str, ...]
    raw: bytes
    """The content exactly as received: dot-unstuffed, line endings as the core delivered them."""
    received_at: datetime
    """When the content had fully arrived (timezone-aware)."""
    mail_params: Params = field(default_factory=lambda: MappingProxyType({}))
    """MAIL FROM's ESMTP parameters (upper-case keys; values as sent, e.g. still xtext)."""
    rcpt_params: tuple[Params, ...] = ()
    """Each recipient's RCPT TO parameters, in the order of `recipients`."""
    remote_ip: str = ""
    remote_port: int = 0
    remote_host: str | None = None
    """The client's reverse DNS name, when the server looked it up."""
    helo: str | None = None
    hostname: str = "localhost"
    """Our own name (the server's ``SmtpConfig.hostname``), for the ``by`` of ``Received:``."""
    esmtp: bool = True
    """EHLO/LHLO rather than HELO."""
    lmtp: bool = False
    tls: TlsFacts | None = None
    """The TLS session's facts, None if the message came in clear."""
    authentication_id: str | None = None
    authorization_id: str | None = None
    _email: list[EmailMessage] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def from_session(cls, ctx: Session, *, id: str | None = None) -> StoredMessage:
        """The message just received in ``ctx`` (call it from `Handler.on_message`)."""
        conn = ctx.connection
        if conn is None:
            raise ValueError("the session is not attached to a connection")
        envelope = conn.envelope
        mail = envelope.mail_from
        message = ctx.message
        received_at = message.delivered_at or message.received_at or datetime.now(UTC)
        return cls(
            id=id or new_message_id(),
            sender=mail.address if mail is not None else "",
            recipients=envelope.recipients,
            raw=message.as_bytes(),
            received_at=received_at,
            mail_params=MappingProxyType(dict(mail.params if mail is not None else {})),
            rcpt_params=tuple(MappingProxyType(dict(r.params)) for r in envelope.rcpt_tos),
            remote_ip=ctx.remote_ip,
            remote_port=ctx.remote_port,
            remote_host=ctx.remote_host,
            helo=ctx.helo,
            hostname=conn.config.hostname,
            esmtp=conn.esmtp,
            lmtp=conn.config.lmtp,
            tls=ctx.tls if ctx.tls_active else None,
            authentication_id=ctx.authentication_id,
            authorization_id=ctx.authorization_id,
        )

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def smtputf8(self) -> bool:
        """MAIL FROM carried SMTPUTF8 (RFC 6531): addresses or headers may be UTF-8."""
        return "SMTPUTF8" in self.mail_params

    @property
    def authenticated(self) -> bool:
        return self.authentication_id is not None

    @property
    def email(self) -> EmailMessage:
        """The content parsed by ``email`` (``policy.default``), parsed once on first use.

        Read it, do not change it: it is shared by everyone holding this record, and `raw`
        stays the truth.
        """
        if not self._email:
            parsed = message_from_bytes(self.raw, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            if not self._email:  # another thread may have parsed it meanwhile: keep one
                self._email.append(parsed)
        return self._email[0]

    @property
    def subject(self) -> str | None:
        """The decoded Subject, or None if there is none (or it cannot be decoded)."""
        try:
            value = self.email["subject"]
        except Exception:  # a malformed encoded word: the header exists but is unreadable
            return None
        return None if value is None else str(value)
