"""Configuration of one SMTP/LMTP server endpoint, shared by all its connections."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .sasl import BUILTIN_MECHANISMS, SaslMechanism

__all__ = ["AuthMode", "CrlfMode", "SmtpConfig", "TlsMode"]


class TlsMode(enum.Enum):
    """Whether STARTTLS is offered and whether it must be used before mail is accepted."""

    FORBIDDEN = "forbidden"
    OPTIONAL = "optional"
    REQUIRED = "required"


class AuthMode(enum.Enum):
    """Whether AUTH is offered and whether it must succeed before MAIL."""

    FORBIDDEN = "forbidden"
    OPTIONAL = "optional"
    REQUIRED = "required"


class CrlfMode(enum.Enum):
    """What DATA content may contain in the way of bare CR and bare LF.

    Only ``CRLF . CRLF`` ever ends DATA, whatever the mode (SMTP smuggling).
    """

    STRICT = "strict"
    """A message holding a bare CR or LF is refused (550 5.6.0) once its data ends."""
    NORMALIZE = "normalize"
    """A bare LF becomes CRLF in the delivered content."""
    LEAVE = "leave"
    """Content is delivered exactly as received (after dot-unstuffing)."""


MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    """Everything the protocol core decides by; validated on construction.

    Timeouts are absent on purpose: the core holds no clock (see `SmtpConnection.timed_out`).

    Raises:
        ValueError: for inconsistent or out-of-range settings.
    """

    hostname: str = "localhost"
    greeting: str | None = None
    """Text after the hostname in the 220 banner (default "ESMTP" / "LMTP" and ready)."""
    lmtp: bool = False
    """Speak LMTP (RFC 2033): LHLO instead of HELO/EHLO, one reply per recipient after data."""

    enhanced_status_codes: bool = True
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    chunking: bool = True
    binarymime: bool = True
    dsn: bool = True
    size_extension: bool = True
    max_message_size: int | None = 32 * MiB
    """Largest message accepted, in octets; None for no limit."""

    tls_mode: TlsMode = TlsMode.FORBIDDEN
    auth_mode: AuthMode = AuthMode.FORBIDDEN
    auth_mechanisms: tuple[str | SaslMechanism, ...] = ("PLAIN", "LOGIN")
    """Built-in names (PLAIN, LOGIN, CRAM-MD5) or `SaslMechanism` objects for others."""
    allow_insecure_auth: bool = False
    """Offer AUTH on a channel without TLS (only for tests and trusted networks)."""

    max_recipients: int = 100
    max_errors: int = 20
    """Protocol errors after which the session ends with 421 (Postfix hard error limit)."""
    max_auth_failures: int = 3
    """Failed AUTH attempts after which the session ends with 421."""
    max_line_length: int = 2048
    """Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 requires at least 512)."""
    max_auth_line_length: int = 12288
    """Longest SASL response line (RFC 4954 §4)."""
    max_buffer_size: int = MiB
    """Bytes without a line end tolerated in command state before the session ends (421)."""
    crlf_mode: CrlfMode = CrlfMode.NORMALIZE
    relaxed_addresses: bool = False
    """Accept ``MAIL FROM:user@example.org`` without angle brackets (some old clients)."""

    def __post_init__(self) -> None:
        # Accept the enum values' strings too ("required"), as read from a CLI or a file.
        object.__setattr__(self, "tls_mode", TlsMode(self.tls_mode))
        object.__setattr__(self, "auth_mode", AuthMode(self.auth_mode))
        object.__setattr__(self, "crlf_mode", CrlfMode(self.crlf_mode))
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ValueError(f"hostname must be a non-empty word, not {self.hostname!r}")
        if self.greeting is not None and ("\r" in self.greeting or "\n" in self.greeting):
            raise ValueError("greeting must not contain CR or LF")
        if self.max_message_size is not None and self.max_message_size < 1:
            raise ValueError("max_message_size must be positive or None")
        if self.max_line_length < 512:
            raise ValueError("max_line_length must be at least 512 (RFC 5321 §4.5.3.1.4)")
        if self.max_auth_line_length < 512:
            raise ValueError("max_auth_line_length must be at least 512")
        if self.max_buffer_size < max(self.max_line_length, self.max_auth_line_length):
            raise ValueError("max_buffer_size must be at least the longest allowed line")
        for name in ("max_recipients", "max_errors", "max_auth_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        # Extensions that depend on another are off without it: BINARYMIME needs CHUNKING
        # (RFC 3030 §3), SMTPUTF8 needs 8BITMIME (RFC 6531 §3.1).
        if self.binarymime and not self.chunking:
            object.__setattr__(self, "binarymime", False)
        if self.smtputf8 and not self.eightbitmime:
            object.__setattr__(self, "smtputf8", False)
        self.sasl_mechanisms()  # validates the names

    def sasl_mechanisms(self) -> dict[str, SaslMechanism]:
        """The configured SASL mechanisms by upper-case name, in advertised order."""
        out: dict[str, SaslMechanism] = {}
        for item in self.auth_mechanisms:
            if isinstance(item, str):
                mechanism = BUILTIN_MECHANISMS.get(item.upper())
                if mechanism is None:
                    known = ", ".join(BUILTIN_MECHANISMS)
                    raise ValueError(f"unknown SASL mechanism {item!r} (built in: {known})")
            else:
                mechanism = item
            out[mechanism.name.upper()] = mechanism
        return out
