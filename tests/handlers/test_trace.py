"""The trace fields (RFC 5321 §4.4) built from a `StoredMessage`, without a network."""

from __future__ import annotations

import email.policy
import email.utils
import re
from datetime import UTC, datetime
from email import message_from_bytes
from typing import Any

import pytest

from transports.handler import Message
from transports.handlers import StoredMessage
from transports.handlers.trace import protocol_keyword, received_value, trace_headers
from transports.tls import TlsFacts

TLS = TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None, None, None)
WHEN = datetime(2024, 1, 2, 9, 30, 5, tzinfo=UTC)


def record(**fields: Any) -> StoredMessage:
    base: dict[str, Any] = {
        "id": "018CC9E4F5A0ABCDEF",
        "sender": "alice@example.org",
        "recipients": ("bob@example.org",),
        "raw": b"Subject: hi\r\n\r\nbody\r\n",
        "received_at": WHEN,
        "remote_ip": "192.0.2.7",
        "remote_port": 40000,
        "helo": "client.example",
        "hostname": "mx.example",
    }
    return StoredMessage(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "keyword"),
    [
        ({"esmtp": False}, "SMTP"),
        ({"esmtp": False, "tls": TLS}, "SMTP"),  # no TLS/AUTH forms without EHLO
        ({}, "ESMTP"),
        ({"tls": TLS}, "ESMTPS"),
        ({"authentication_id": "alice"}, "ESMTPA"),
        ({"tls": TLS, "authentication_id": "alice"}, "ESMTPSA"),
        ({"lmtp": True}, "LMTP"),
        ({"lmtp": True, "tls": TLS, "authentication_id": "a"}, "LMTPSA"),
        ({"mail_params": {"SMTPUTF8": None}}, "UTF8SMTP"),
        ({"mail_params": {"SMTPUTF8": None}, "tls": TLS}, "UTF8SMTPS"),
        ({"mail_params": {"SMTPUTF8": None}, "lmtp": True, "authentication_id": "a"}, "UTF8LMTPA"),
    ],
)
def test_with_keyword(fields: dict[str, Any], keyword: str) -> None:
    assert protocol_keyword(record(**fields)) == keyword


def test_received_layout_one_recipient() -> None:
    value = received_value(record(tls=TLS))
    date = re.escape(value.rsplit("; ", 1)[1])
    assert re.fullmatch(
        r"from client\.example \(\[192\.0\.2\.7\]\)\r\n"
        r"\t\(using TLSv1\.3 with cipher TLS_AES_256_GCM_SHA384 \(256 bits\)\)\r\n"
        r"\tby mx\.example with ESMTPS id 018CC9E4F5A0ABCDEF\r\n"
        rf"\tfor <bob@example\.org>; {date}",
        value,
    )
    # The date is RFC 5322 (local time, numeric zone) and is the moment of receipt.
    parsed = email.utils.parsedate_to_datetime(value.rsplit("; ", 1)[1])
    assert parsed == WHEN


def test_received_without_for_and_with_reverse_dns_and_ipv6() -> None:
    value = received_value(
        record(
            recipients=("a@example.org", "b@example.org"),
            remote_ip="fe80::1%eth0",
            remote_host="host.example",
        ),
        hostname="other.example",
        folded=False,
    )
    assert value.startswith(
        "from client.example (host.example [IPv6:fe80::1]) by other.example with ESMTP id "
    )
    assert " for " not in value and "\r" not in value and "\n" not in value


def test_unsafe_helo_cannot_break_the_field() -> None:
    value = received_value(record(helo="evil;(x)\tby"), folded=False)
    assert value.startswith("from evil??x??by ([192.0.2.7]) by mx.example")
    assert value.count(";") == 1


def test_trace_headers_parse_and_unfolded_value_fits_add_header() -> None:
    message = record(sender="")
    data = trace_headers(message) + message.raw
    parsed = message_from_bytes(data, policy=email.policy.default)
    assert parsed["Return-Path"] == "<>"
    assert "by mx.example with ESMTP id 018CC9E4F5A0ABCDEF" in str(parsed["Received"])
    assert trace_headers(message, return_path=False).startswith(b"Received: from client.example")
    hook_side = Message()
    hook_side.add_header("Received", received_value(message, folded=False))  # no CR/LF
    assert hook_side.as_bytes().startswith(b"Received: from client.example ([192.0.2.7]) by ")
