"""SMTP replies: the only thing the core ever writes to the wire.

A `Reply` carries the basic code (RFC 5321 §4.2), an optional enhanced status code
(RFC 3463, sent only while ENHANCEDSTATUSCODES is on) and one or more text lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Reply"]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    Args:
        code: three-digit reply code, 200..599.
        text: one line, or a tuple of lines for a multi-line reply.
        enhanced: RFC 3463 code such as ``"5.1.1"``; its class digit must match ``code``.

    Raises:
        ValueError: for a code out of range, a mismatched enhanced code, or CR/LF in the text
            (which would let a caller inject extra replies).
    """

    code: int
    text: str | tuple[str, ...] = ""
    enhanced: str | None = None
    _wire: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    """Rendered once: (without, with) the enhanced code; replies are sent far more than built."""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code must be 200..599, not {self.code}")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced):
                raise ValueError(f"malformed enhanced status code {self.enhanced!r}")
            if self.enhanced[0] != ("2" if self.code < 400 else str(self.code)[0]):
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        lines = self.lines
        text = "".join(lines)
        if "\r" in text or "\n" in text:
            raise ValueError("reply text must not contain CR or LF")
        plain = self._render(lines, "")
        wire = plain if self.enhanced is None else self._render(lines, f"{self.enhanced} ")
        object.__setattr__(self, "_wire", (plain, wire))

    @property
    def lines(self) -> tuple[str, ...]:
        """The text as a tuple of lines (at least one, possibly empty)."""
        return (self.text,) if isinstance(self.text, str) else (self.text or ("",))

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def closes(self) -> bool:
        """True for 421: the server closes the channel after sending it (RFC 5321 §3.8)."""
        return self.code == 421

    def to_bytes(self, enhanced_status_codes: bool = True) -> bytes:
        """The reply as sent: each line ends in CRLF; text is UTF-8 (RFC 6531)."""
        return self._wire[enhanced_status_codes]

    def _render(self, lines: tuple[str, ...], prefix: str) -> bytes:
        last = f"{self.code} {prefix}{lines[-1]}\r\n"
        if len(lines) == 1:
            return last.encode()
        more = f"{self.code}-{prefix}"  # begins every line but the last
        between = "\r\n" + more
        return f"{more}{between.join(lines[:-1])}\r\n{last}".encode()

    def with_text(self, text: str | tuple[str, ...]) -> Reply:
        """The same codes with another text (keeps predefined replies reusable)."""
        return Reply(self.code, text, self.enhanced)


# Replies the core sends on its own. Applications may pass them to `reject` too.
OK = Reply(250, "OK", "2.0.0")
SENDER_OK = Reply(250, "Sender OK", "2.1.0")
RECIPIENT_OK = Reply(250, "Recipient OK", "2.1.5")
MESSAGE_ACCEPTED = Reply(250, "Message accepted", "2.0.0")
START_DATA = Reply(354, "End data with <CR><LF>.<CR><LF>")
AUTH_SUCCEEDED = Reply(235, "Authentication succeeded", "2.7.0")
READY_FOR_TLS = Reply(220, "Ready to start TLS", "2.0.0")
BYE = Reply(221, "Bye", "2.0.0")
CANNOT_VRFY = Reply(252, "Cannot VRFY user, but will accept message and attempt delivery", "2.5.0")
HELP = Reply(214, "See RFC 5321; commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT", "2.0.0")

UNKNOWN_COMMAND = Reply(500, "Command unrecognized", "5.5.2")
BAD_SYNTAX = Reply(500, "Syntax error", "5.5.2")
LINE_TOO_LONG = Reply(500, "Line too long", "5.5.6")
BARE_LF_COMMAND = Reply(500, "Command lines must end with CRLF", "5.5.2")
NOT_IMPLEMENTED = Reply(502, "Command not implemented", "5.5.1")
BAD_SEQUENCE = Reply(503, "Bad sequence of commands", "5.5.1")
BAD_ARGUMENTS = Reply(501, "Syntax error in parameters or arguments", "5.5.4")
UNKNOWN_MECHANISM = Reply(504, "Unrecognized authentication mechanism", "5.5.4")
AUTH_CANCELLED = Reply(501, "Authentication cancelled", "5.7.0")
BAD_BASE64 = Reply(501, "Cannot decode response", "5.5.2")
AUTH_FAILED = Reply(535, "Authentication credentials invalid", "5.7.8")
AUTH_REQUIRED = Reply(530, "Authentication required", "5.7.0")
TLS_REQUIRED = Reply(530, "Must issue a STARTTLS command first", "5.7.0")
ENCRYPTION_REQUIRED = Reply(
    538, "Encryption required for requested authentication mechanism", "5.7.11"
)
TOO_MANY_RECIPIENTS = Reply(452, "Too many recipients", "4.5.3")
NO_VALID_RECIPIENTS = Reply(554, "No valid recipients", "5.5.1")
MESSAGE_TOO_LARGE = Reply(552, "Message size exceeds fixed maximum message size", "5.3.4")
BARE_CR_LF = Reply(550, "Message contains bare CR or LF", "5.6.0")
MAILBOX_UNAVAILABLE = Reply(550, "Requested action not taken: mailbox unavailable", "5.1.1")
LOCAL_ERROR = Reply(451, "Requested action aborted: local error in processing", "4.3.0")
NO_SERVICE = Reply(554, "No SMTP service here", "5.3.2")

SERVICE_UNAVAILABLE = Reply(421, "Service not available, closing transmission channel", "4.3.2")
SHUTTING_DOWN = Reply(421, "Service shutting down, closing transmission channel", "4.3.2")
TIMEOUT = Reply(421, "Timeout exceeded, closing transmission channel", "4.4.2")
TOO_MANY_ERRORS = Reply(421, "Too many errors, closing transmission channel", "4.7.0")
TOO_MANY_AUTH_FAILURES = Reply(421, "Too many authentication failures, closing channel", "4.7.0")
BUFFER_OVERFLOW = Reply(421, "Line too long, closing transmission channel", "4.7.0")
