"""Exceptions a handler hook raises to answer the client: the exception *is* the reply.

``raise Smtp550Error()`` answers ``550 5.1.1 Requested action not taken: mailbox unavailable``;
``raise Smtp550Error("No such user here")`` keeps the codes and changes the text;
``raise SmtpError(451, "Greylisted, try later", "4.7.1")`` builds any reply. Raising a 421
ends the session after the reply.
"""

from __future__ import annotations

from typing import ClassVar

from smtpcore import Reply

__all__ = [
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


class SmtpError(Exception):
    """An SMTP reply raised from a hook.

    Args:
        code: the reply code (4xx or 5xx); subclasses fix it.
        text: the reply text; subclasses have a default.
        enhanced: the RFC 3463 code; subclasses have a default.
    """

    code: ClassVar[int] = 554
    text: ClassVar[str] = "Transaction failed"
    enhanced: ClassVar[str | None] = "5.0.0"

    def __init__(self, *args: object) -> None:
        code, text, enhanced = self._parse(args)
        super().__init__(f"{code} {enhanced + ' ' if enhanced else ''}{text}")
        self.reply = Reply(code, text, enhanced)

    def _parse(self, args: tuple[object, ...]) -> tuple[int, str, str | None]:
        cls = type(self)
        if cls is SmtpError:
            if not args or not isinstance(args[0], int):
                raise TypeError("SmtpError(code, text, enhanced=None) needs a reply code")
            code, rest = args[0], args[1:]
            text, enhanced = (*rest, None, None)[:2]
            return code, str(text or ""), None if enhanced is None else str(enhanced)
        text, enhanced = (*args, None, None)[:2]
        return (
            cls.code,
            cls.text if text is None else str(text),
            cls.enhanced if enhanced is None else str(enhanced),
        )


class Smtp421Error(SmtpError):
    """421 4.3.2 Service not available, closing transmission channel (ends the session)."""

    code, text, enhanced = 421, "Service not available, closing transmission channel", "4.3.2"


class Smtp450Error(SmtpError):
    """450 4.2.1 Requested mail action not taken: mailbox unavailable."""

    code, text, enhanced = 450, "Requested mail action not taken: mailbox unavailable", "4.2.1"


class Smtp451Error(SmtpError):
    """451 4.3.0 Requested action aborted: local error in processing."""

    code, text, enhanced = 451, "Requested action aborted: local error in processing", "4.3.0"


class Smtp452Error(SmtpError):
    """452 4.3.1 Requested action not taken: insufficient system storage."""

    code, text, enhanced = 452, "Requested action not taken: insufficient system storage", "4.3.1"


class Smtp454Error(SmtpError):
    """454 4.7.0 Temporary authentication failure."""

    code, text, enhanced = 454, "Temporary authentication failure", "4.7.0"


class Smtp500Error(SmtpError):
    """500 5.5.2 Syntax error, command unrecognized."""

    code, text, enhanced = 500, "Syntax error, command unrecognized", "5.5.2"


class Smtp501Error(SmtpError):
    """501 5.5.4 Syntax error in parameters or arguments."""

    code, text, enhanced = 501, "Syntax error in parameters or arguments", "5.5.4"


class Smtp502Error(SmtpError):
    """502 5.5.1 Command not implemented."""

    code, text, enhanced = 502, "Command not implemented", "5.5.1"


class Smtp503Error(SmtpError):
    """503 5.5.1 Bad sequence of commands."""

    code, text, enhanced = 503, "Bad sequence of commands", "5.5.1"


class Smtp504Error(SmtpError):
    """504 5.5.4 Command parameter not implemented."""

    code, text, enhanced = 504, "Command parameter not implemented", "5.5.4"


class Smtp521Error(SmtpError):
    """521 5.3.2 Service does not accept mail."""

    code, text, enhanced = 521, "Service does not accept mail", "5.3.2"


class Smtp530Error(SmtpError):
    """530 5.7.0 Authentication required."""

    code, text, enhanced = 530, "Authentication required", "5.7.0"


class Smtp535Error(SmtpError):
    """535 5.7.8 Authentication credentials invalid."""

    code, text, enhanced = 535, "Authentication credentials invalid", "5.7.8"


class Smtp550Error(SmtpError):
    """550 5.1.1 Requested action not taken: mailbox unavailable."""

    code, text, enhanced = 550, "Requested action not taken: mailbox unavailable", "5.1.1"


class Smtp552Error(SmtpError):
    """552 5.3.4 Requested mail action aborted: exceeded storage allocation."""

    code, text, enhanced = (
        552,
        "Requested mail action aborted: exceeded storage allocation",
        "5.3.4",
    )


class Smtp553Error(SmtpError):
    """553 5.1.3 Requested action not taken: mailbox name not allowed."""

    code, text, enhanced = 553, "Requested action not taken: mailbox name not allowed", "5.1.3"


class Smtp554Error(SmtpError):
    """554 5.0.0 Transaction failed."""

    code, text, enhanced = 554, "Transaction failed", "5.0.0"
