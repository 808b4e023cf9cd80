"""SASL mechanisms for AUTH (RFC 4954): the built-ins, and the way to add another.

A mechanism turns the client's decoded responses into an `AuthAttempt` that the application
decides on; the core handles base64, ``*`` cancellation, line limits and the 334 round trips.

To add one (say XOAUTH2), write a class with a ``name`` and a ``start()`` returning an object
whose ``step()`` either returns challenge bytes (sent as ``334 <base64>``) or an `AuthAttempt`,
and put an instance in ``SmtpConfig(auth_mechanisms=("PLAIN", MyMechanism()))``::

    class XOAuth2:
        name = "XOAUTH2"
        def start(self, hostname: str) -> SaslExchange:
            return self
        def step(self, response: bytes | None) -> bytes | AuthAttempt:
            if response is None:
                return b""                      # ask for the initial response
            fields = dict(f.split("=", 1) for f in response.decode().split("\\x01") if f)
            return AuthAttempt(mechanism="XOAUTH2", authentication_id=fields["user"],
                               authorization_id=fields["user"],
                               password=fields["auth"].removeprefix("Bearer "))

Raise `SaslSyntaxError` from ``step()`` for malformed input: the client gets 501 5.5.2.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from .events import AuthAttempt

__all__ = [
    "BUILTIN_MECHANISMS",
    "CramMd5",
    "Login",
    "Plain",
    "SaslExchange",
    "SaslMechanism",
    "SaslSyntaxError",
]


class SaslSyntaxError(ValueError):
    """The client's SASL response is malformed (answered 501 5.5.2)."""


class SaslExchange(Protocol):
    """One authentication exchange in progress."""

    def step(self, response: bytes | None) -> bytes | AuthAttempt:
        """Advance with the client's decoded response (None: no initial response was sent).

        Returns:
            Challenge bytes for the next 334, or the finished `AuthAttempt`.

        Raises:
            SaslSyntaxError: the response cannot be understood.
        """
        ...


class SaslMechanism(Protocol):
    """A SASL mechanism the server can offer."""

    @property
    def name(self) -> str: ...

    def start(self, hostname: str) -> SaslExchange:
        """Begin an exchange; ``hostname`` is the server's name (for challenges)."""
        ...


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslSyntaxError(f"{what} is not UTF-8") from None


class _PlainExchange:
    def step(self, response: bytes | None) -> bytes | AuthAttempt:
        if response is None:
            return b""
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SaslSyntaxError("PLAIN response must be authzid NUL authcid NUL password")
        authzid, authcid, password = (_text(p, "PLAIN response") for p in parts)
        return AuthAttempt(
            mechanism="PLAIN",
            authorization_id=authzid or authcid,
            authentication_id=authcid,
            password=password,
        )


class Plain:
    """PLAIN (RFC 4616), with or without an initial response."""

    name = "PLAIN"

    def start(self, hostname: str) -> SaslExchange:
        return _PlainExchange()


class _LoginExchange:
    def __init__(self) -> None:
        self._user: str | None = None

    def step(self, response: bytes | None) -> bytes | AuthAttempt:
        if response is None:
            return b"Username:"
        if self._user is None:
            self._user = _text(response, "LOGIN username")
            if not self._user:
                raise SaslSyntaxError("LOGIN username is empty")
            return b"Password:"
        return AuthAttempt(
            mechanism="LOGIN",
            authorization_id=self._user,
            authentication_id=self._user,
            password=_text(response, "LOGIN password"),
        )


class Login:
    """LOGIN (draft-murchison-sasl-login), with or without the username up front."""

    name = "LOGIN"

    def start(self, hostname: str) -> SaslExchange:
        return _LoginExchange()


class _CramMd5Exchange:
    def __init__(self, hostname: str) -> None:
        self._challenge = f"<{secrets.token_hex(12)}@{hostname}>".encode("ascii")
        self._sent = False

    def step(self, response: bytes | None) -> bytes | AuthAttempt:
        if not self._sent:
            if response is not None:
                raise SaslSyntaxError("CRAM-MD5 takes no initial response")
            self._sent = True
            return self._challenge
        user, _, digest = _text(response or b"", "CRAM-MD5 response").rpartition(" ")
        if not user or len(digest) != 32:
            raise SaslSyntaxError("CRAM-MD5 response must be 'user hex-digest'")
        return AuthAttempt(
            mechanism="CRAM-MD5",
            authorization_id=user,
            authentication_id=user,
            challenge=self._challenge,
            digest=digest.lower(),
        )


class CramMd5:
    """CRAM-MD5 (RFC 2195): the core makes the challenge, `AuthAttempt.verify` checks it."""

    name = "CRAM-MD5"

    def start(self, hostname: str) -> SaslExchange:
        return _CramMd5Exchange(hostname)


BUILTIN_MECHANISMS: dict[str, SaslMechanism] = {m.name: m for m in (Plain(), Login(), CramMd5())}
