"""The explicit protocol state of a session."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Where a session stands. A pending decision is kept apart (`SmtpConnection.pending`)."""

    GREETING = "greeting"
    """Connected; the application has not yet decided on the banner."""
    REFUSED = "refused"
    """Greeted with 554: only QUIT is served (RFC 5321 §3.1)."""
    HELO = "helo"
    """Waiting for HELO/EHLO (or LHLO)."""
    READY = "ready"
    """Greeted, no transaction."""
    MAIL = "mail"
    """MAIL accepted, no recipient yet."""
    RCPT = "rcpt"
    """At least one recipient accepted."""
    DATA = "data"
    """Reading DATA content."""
    BDAT = "bdat"
    """Between BDAT chunks of a message."""
    BDAT_CHUNK = "bdat chunk"
    """Reading the octets of one BDAT chunk."""
    AUTH = "auth"
    """Inside a SASL exchange, waiting for the client's response line."""
    TLS_HANDSHAKE = "tls handshake"
    """STARTTLS accepted; the transport is running the handshake."""
    CLOSED = "closed"


IN_TRANSACTION = (State.MAIL, State.RCPT, State.DATA, State.BDAT, State.BDAT_CHUNK)
"""A tuple: membership by identity, no hashing of Enum members on hot paths."""
