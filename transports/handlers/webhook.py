"""`WebhookHandler`: POSTs each message as JSON to a URL and answers by the HTTP status.

The client gets 250 only after the web application answered 2xx; anything else (another
status, a redirect, a refused connection, a timeout) answers 451, so the client retries and
nothing is lost because a web service was down. Redirects are not followed: urllib would
turn a redirected POST into a GET without the body and report the final 200, acknowledging
a message nobody received.

The payload (``Content-Type: application/json``)::

    {"id": "...", "received_at": "2024-01-02T10:00:00.123456+00:00",
     "envelope": {"mail_from": "a@example.org", "rcpt_to": ["b@example.org"],
                  "mail_params": {"SIZE": "123"}, "rcpt_params": [{}]},
     "session": {"remote_ip": "...", "remote_port": 5678, "helo": "...", "protocol": "ESMTPS",
                 "tls": {"version": "TLSv1.3", "cipher": "..."} | null,
                 "authenticated_as": "user" | null},
     "headers": {"subject": "...", "from": "...", "to": "...", "cc": null, "date": "...",
                 "message_id": "...", "reply_to": null},
     "size": 123, "raw": "<the content as received, base64>"}
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from transports._blocking import run_blocking
from transports.errors import SmtpError
from transports.handler import Handler, MaybeAwaitable, Session

from .stored import StoredMessage
from .trace import protocol_keyword

__all__ = ["HEADER_FIELDS", "WebhookHandler", "payload"]

_LOG = logging.getLogger("smtpcore.handlers.webhook")

HEADER_FIELDS = ("subject", "from", "to", "cc", "reply-to", "date", "message-id")
"""The header fields in the payload's ``headers`` (decoded); everything else is in ``raw``."""


def payload(message: StoredMessage) -> dict[str, Any]:
    """The JSON object posted for ``message``."""
    tls = message.tls
    return {
        "id": message.id,
        "received_at": message.received_at.isoformat(),
        "envelope": {
            "mail_from": message.sender,
            "rcpt_to": list(message.recipients),
            "mail_params": dict(message.mail_params),
            "rcpt_params": [dict(params) for params in message.rcpt_params],
        },
        "session": {
            "remote_ip": message.remote_ip,
            "remote_port": message.remote_port,
            "helo": message.helo,
            "protocol": protocol_keyword(message),
            "tls": None if tls is None else {"version": tls.version, "cipher": tls.cipher},
            "authenticated_as": message.authorization_id or message.authentication_id,
        },
        "headers": {name.replace("-", "_"): _header(message, name) for name in HEADER_FIELDS},
        "size": message.size,
        "raw": base64.b64encode(message.raw).decode("ascii"),
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer other than 2xx: report it, do not follow it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookHandler(Handler):
    """POSTs every message to ``url`` (see the module for the JSON).

    Args:
        url: an ``http://`` or ``https://`` URL.
        timeout: seconds each network operation of the request may take.
        headers: extra request headers (e.g. ``Authorization``).

    Raises:
        ValueError: for a URL that is not http(s).
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook needs an http:// or https:// URL, not {url!r}")
        self.url = url
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._opener = urllib.request.build_opener(_NoRedirects())

    def on_message(self, ctx: Session) -> MaybeAwaitable:
        message = StoredMessage.from_session(ctx)
        return run_blocking(lambda: self.deliver(message))

    def deliver(self, message: StoredMessage) -> None:
        """POST ``message``.

        Raises:
            SmtpError: 451 unless the answer was 2xx.
        """
        body = json.dumps(payload(message)).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "smtpcore-webhook",
                **self.headers,
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:  # a non-2xx answer (redirects included)
            exc.close()
            status = exc.code
        except (OSError, ValueError) as exc:  # URLError, refused, timeout, bad TLS...
            _LOG.error("message %s: webhook %s failed: %s", message.id, self.url, exc)
            raise SmtpError(451, "Webhook unreachable, try again later", "4.4.1") from exc
        if not 200 <= status < 300:
            _LOG.error("message %s: webhook %s answered %s", message.id, self.url, status)
            raise SmtpError(451, f"Webhook answered HTTP {status}, try again later", "4.3.0")
        _LOG.info("message %s from <%s> posted to %s", message.id, message.sender, self.url)


def _header(message: StoredMessage, name: str) -> str | None:
    """One decoded header field (the first if repeated), None if absent; as text that JSON
    and its readers take (undecodable bytes replaced, not smuggled as lone surrogates)."""
    try:
        value = message.email[name]
    except Exception:  # a field the policy cannot parse: take it undecoded
        value = next((v for k, v in message.email.raw_items() if k.lower() == name), None)
    if value is None:
        return None
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
