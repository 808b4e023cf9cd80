"""Trace header fields (RFC 5321 §4.4): ``Received:`` and ``Return-Path:``.

An SMTP server that accepts a message for delivery or relaying adds a ``Received:`` field on
top of it; the server making the final delivery also adds ``Return-Path: <reverse-path>``, so
the envelope sender survives into the mailbox. Here that means: maildir, mbox and pipe add
both (they deliver); relay adds only ``Received:`` (the next hop delivers); memory and webhook
keep the content untouched and carry the envelope beside it.

The fields are built from a `StoredMessage` and prepended to its bytes; nothing is added to
the session's `Message`, which other hooks may still be looking at.
"""

from __future__ import annotations

import ipaddress
from email.utils import format_datetime

from .stored import StoredMessage

__all__ = ["protocol_keyword", "received_value", "return_path_value", "trace_headers"]

_FOLD = "\r\n\t"
_HELO_SAFE = frozenset(".-_:[]")


def protocol_keyword(message: StoredMessage) -> str:
    """The ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848), LMTP and its
    forms, and the UTF8SMTP/UTF8LMTP forms when MAIL FROM had SMTPUTF8 (RFC 6531 §3.7.3).

    There is no TLS or AUTH form of plain ``SMTP``: both need EHLO.
    """
    if not message.lmtp and not message.esmtp:
        return "SMTP"
    base = "LMTP" if message.lmtp else "SMTP" if message.smtputf8 else "ESMTP"
    if message.smtputf8:
        base = "UTF8" + base
    return base + ("S" if message.tls is not None else "") + ("A" if message.authenticated else "")


def received_value(
    message: StoredMessage, *, hostname: str | None = None, folded: bool = True
) -> str:
    """The value of our ``Received:`` field for ``message``::

        from client.example (rdns.example [192.0.2.1])
            by mx.example with ESMTPS id 018F2C3A4B5CDE12
            for <bob@example.org>; Tue, 02 Jan 2024 10:00:00 +0100

    ``for`` appears only with exactly one recipient: naming them all would disclose Bcc
    recipients to each other (RFC 5321 §7.6). The date is local time with its numeric zone, as
    RFC 5322 dates are. ``folded=False`` gives one line, for `Message.add_header`.
    """
    parts = [f"from {_helo(message.helo)} ({_tcp_info(message)})"]
    tls = message.tls
    if tls is not None and tls.version:
        bits = f" ({tls.bits} bits)" if tls.bits else ""
        parts.append(f"(using {tls.version} with cipher {tls.cipher}{bits})")
    parts.append(
        f"by {hostname or message.hostname} with {protocol_keyword(message)} id {message.id}"
    )
    date = format_datetime(message.received_at.astimezone())
    if len(message.recipients) == 1:
        parts.append(f"for <{message.recipients[0]}>; {date}")
    else:
        parts[-1] += ";"
        parts.append(date)
    return (_FOLD if folded else " ").join(parts)


def return_path_value(message: StoredMessage) -> str:
    """``<sender>``, or ``<>`` for the null sender (bounces)."""
    return f"<{message.sender}>"


def trace_headers(
    message: StoredMessage, *, return_path: bool = True, hostname: str | None = None
) -> bytes:
    """The trace fields to put on top of ``message.raw``, CRLF-terminated like SMTP content:
    ``Return-Path:`` (if asked, for final delivery) above our ``Received:``."""
    fields = [f"Received: {received_value(message, hostname=hostname)}\r\n"]
    if return_path:
        fields.insert(0, f"Return-Path: {return_path_value(message)}\r\n")
    return "".join(fields).encode("utf-8")


def _helo(name: str | None) -> str:
    """The client's HELO name as it gave it, but with anything that could break the field's
    syntax (spaces, parentheses, ``;`` before the date, controls) shown as ``?``."""
    if not name:
        return "unknown"
    return "".join(c if c.isalnum() or c in _HELO_SAFE else "?" for c in name)


def _tcp_info(message: StoredMessage) -> str:
    """RFC 5321 TCP-info: the reverse DNS name if known, then the address literal."""
    ip = message.remote_ip.partition("%")[0]  # a zone id is not part of an address literal
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        literal = f"[{_helo(ip)}]"
    else:
        literal = f"[IPv6:{address.compressed}]" if address.version == 6 else f"[{address}]"
    host = message.remote_host
    if host and host != message.remote_ip:
        return f"{_helo(host)} {literal}"
    return literal
