"""Server options shared by every transport, so each behaves the same way."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smtpcore import SmtpConfig, TlsMode
from smtpcore.proxy import trusted

from .tls import make_server_context

if TYPE_CHECKING:
    from .ops import Observer

__all__ = ["Listener", "ServerOptions"]


@dataclass(frozen=True, slots=True)
class Listener:
    """One address to listen on. ``implicit_tls`` makes it an SMTPS port (RFC 8314).

    ``proxy_protocol``: every connection starts with a PROXY protocol header (v1 or v2, as
    HAProxy's ``send-proxy``/``send-proxy-v2`` write it) from one of the server's
    ``trusted_proxies``; the session then sees the client the header names. Not with
    ``implicit_tls`` (the header would precede the handshake): terminate TLS at the proxy, or
    use STARTTLS behind it.

    ``fd``: serve on this already bound and listening socket (inherited from a supervising
    process, see `transports.workers`) instead of binding ``host``/``port``, which then only
    describe it. The server takes the descriptor over and closes it when it stops (pass
    ``sock.detach()``, not ``sock.fileno()``, for a socket object of your own).
    """

    host: str = "127.0.0.1"
    port: int = 2525
    implicit_tls: bool = False
    proxy_protocol: bool = False
    fd: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    """How a server listens and guards its sessions.

    ``max_connections`` caps concurrent sessions: one more client gets
    ``421 4.7.0`` and is closed at once. (midi-smtp-server also has ``max_processings``, which
    keeps extra clients connected but unanswered before the banner; clients then time out
    waiting, so smtpcore refuses them promptly instead.)
    """

    listeners: tuple[Listener, ...] = (Listener(),)
    config: SmtpConfig = field(default_factory=SmtpConfig)
    max_connections: int | None = None
    idle_timeout: float | None = 300.0
    """Seconds a client may stay silent while a command is awaited (RFC 5321 §4.5.3.2.7)."""
    data_timeout: float | None = 600.0
    """Seconds the whole content of one message may take to arrive."""
    tls_handshake_timeout: float = 30.0
    tls_context: ssl.SSLContext | None = None
    """Used for STARTTLS and SMTPS; None with TLS on means a self-signed certificate."""
    auth_failure_delay: float = 1.0
    """Seconds to wait after the n-th failed AUTH, times n (slows brute force down)."""
    dns_reverse_lookup: bool = False
    read_size: int = 65536
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("smtpcore.server"))
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs (or addresses) of the proxies allowed to send a PROXY header on a listener with
    ``proxy_protocol``; a connection from anywhere else is closed without a reply."""
    proxy_timeout: float = 10.0
    """Seconds a PROXY header may take to arrive once connected."""
    observer: Observer | None = None
    """Told about sessions, messages, TLS handshakes... (see `transports.ops.Observer`); with
    None (the default) nothing is counted and the transports do no extra work."""

    def __post_init__(self) -> None:
        if not self.listeners:
            raise ValueError("at least one listener is needed")
        if isinstance(self.trusted_proxies, str):  # a lone CIDR would be iterated by character
            object.__setattr__(self, "trusted_proxies", (self.trusted_proxies,))
        trusted("127.0.0.1", self.trusted_proxies)  # ValueError now for a malformed CIDR
        if self.proxy_timeout <= 0:
            raise ValueError("proxy_timeout must be positive")
        for listener in self.listeners:
            if listener.proxy_protocol and listener.implicit_tls:
                raise ValueError(
                    "a listener cannot take both proxy_protocol and implicit_tls: terminate "
                    "TLS at the proxy, or use STARTTLS behind it"
                )
        if any(listener.proxy_protocol for listener in self.listeners) and not (
            self.trusted_proxies
        ):
            raise ValueError("proxy_protocol listeners need trusted_proxies (CIDRs)")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1 or None")
        for name in ("idle_timeout", "data_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
        if self.tls_needed and self.tls_context is None:
            addresses = [listener.host for listener in self.listeners]
            context = make_server_context(
                hostname=self.config.hostname, addresses=addresses, logger=self.logger
            )
            object.__setattr__(self, "tls_context", context)

    @property
    def tls_needed(self) -> bool:
        return self.config.tls_mode is not TlsMode.FORBIDDEN or any(
            listener.implicit_tls for listener in self.listeners
        )

    @property
    def tick(self) -> float:
        """How often transports check their sessions' timeouts."""
        timeouts = [t for t in (self.idle_timeout, self.data_timeout) if t is not None]
        return min(1.0, max(0.05, min(timeouts, default=1.0) / 4))

    @classmethod
    def build(
        cls,
        options: ServerOptions | None = None,
        *,
        host: str | Iterable[str] | None = None,
        port: int | None = None,
        smtps_port: int | None = None,
        **kwargs: object,
    ) -> ServerOptions:
        """Options from keywords: ``host``/``port`` (and ``smtps_port``) make the listeners."""
        if options is not None:
            if host is not None or port is not None or smtps_port is not None or kwargs:
                raise TypeError("give either options or keywords, not both")
            return options
        if host is not None or port is not None or smtps_port is not None:
            hosts = [host or "127.0.0.1"] if isinstance(host, str | None) else list(host)
            listeners = [Listener(h, 2525 if port is None else port) for h in hosts]
            if smtps_port is not None:
                listeners += [Listener(h, smtps_port, implicit_tls=True) for h in hosts]
            kwargs["listeners"] = tuple(listeners)
        return cls(**kwargs)  # type: ignore[arg-type]
