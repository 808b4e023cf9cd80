"""Exceptions raised at the programmer, never at the peer.

Bad client input is answered on the wire and reported as an event; only misuse of the API
(answering an event twice, feeding data after EOF, an impossible reply) raises.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError"]


class LocalProtocolError(RuntimeError):
    """The application used `SmtpConnection` in a way its current state does not allow.

    The connection's state is left exactly as it was before the offending call.
    """
