"""`Debug`: prints every message received, with its envelope and session, to a text stream."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

from transports.handler import Handler, Session

__all__ = ["Debug"]

_RULE = "-" * 72
_BLANK_LINE = re.compile(rb"\A\r?\n|\r?\n\r?\n")


class Debug(Handler):
    """Prints each message with its envelope (sender, recipients, MAIL/RCPT parameters), the
    session (addresses, HELO, TLS, AUTH, sizes), its headers decoded and its raw body.

    Args:
        stream: where to print; `sys.stdout` (as it is when a message arrives) by default.

    Each message is written in one piece and flushed, so messages of concurrent sessions
    (threads transport included) never interleave.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def on_message(self, ctx: Session) -> None:
        text = format_message(ctx)
        stream = self.stream or sys.stdout
        with self._lock:
            try:
                stream.write(text)
            except UnicodeEncodeError:  # a stream that cannot show everything (e.g. ASCII)
                stream.write(text.encode("ascii", "backslashreplace").decode("ascii"))
            stream.flush()


def format_message(ctx: Session) -> str:
    """The text `Debug` prints for the message just received in ``ctx``."""
    message = ctx.message
    envelope = ctx.connection.envelope if ctx.connection is not None else None
    lines = [
        _RULE,
        f"Time:      {message.delivered_at or message.received_at}",
        f"Remote:    {_peer(ctx.remote_ip, ctx.remote_port, ctx.remote_host)}",
        f"Local:     {_peer(ctx.local_ip, ctx.local_port, ctx.local_host)}",
        f"HELO:      {ctx.helo}",
        f"TLS:       {_tls(ctx)}",
        f"AUTH:      {_auth(ctx)}",
        f"Sender:    <{ctx.sender or ''}>{_params(ctx.mail_params)}",
    ]
    rcpts = envelope.rcpt_tos if envelope is not None else ()
    lines += [f"Recipient: <{rcpt.address}>{_params(rcpt.params)}" for rcpt in rcpts]
    declared = ctx.mail_params.get("SIZE")
    lines.append(f"Size:      {message.size} octets" + (f" (SIZE={declared})" if declared else ""))
    lines += [_RULE, *_headers(ctx), "", _body(bytes(message.data)), _RULE, ""]
    return "\n".join(lines)


def _peer(ip: str, port: int, host: str | None) -> str:
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return f"{address} ({host})" if host and host != ip else address


def _tls(ctx: Session) -> str:
    facts = ctx.tls
    if not ctx.tls_active or facts is None:
        return "no"
    return f"{facts.version} {facts.cipher} ({facts.bits} bits)"


def _auth(ctx: Session) -> str:
    if not ctx.authenticated:
        return "no"
    if ctx.authorization_id and ctx.authorization_id != ctx.authentication_id:
        return f"{ctx.authentication_id} as {ctx.authorization_id}"
    return str(ctx.authentication_id)


def _params(params: Mapping[str, str | None]) -> str:
    return "".join(
        f" {key}" if value is None else f" {key}={value}" for key, value in params.items()
    )


def _headers(ctx: Session) -> list[str]:
    """Header fields decoded by ``email`` (RFC 2047 words become text); raw if that fails."""
    parsed = ctx.message.email
    try:
        return [f"{name}: {value}" for name, value in parsed.items()]
    except Exception:  # a header the policy cannot parse: show them all undecoded
        return [f"{name}: {value}" for name, value in parsed.raw_items()]


def _body(data: bytes) -> str:
    """The raw body: everything after the first empty line, undecoded, CRLF shown as LF."""
    match = _BLANK_LINE.search(data)
    body = data[match.end() :] if match else b""
    return body.decode("utf-8", "backslashreplace").replace("\r\n", "\n").rstrip("\n")
