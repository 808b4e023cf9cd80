"""Shared by the catcher tests: an SMTP server and a catcher per test, mail to send, and a
small HTTP client (``http.client``) that returns status, headers and body whatever the status."""

from __future__ import annotations

import http.client
import json
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from smtpcore import SmtpConfig
from transports.catcher import Catcher
from transports.controller import ServerThread
from transports.handlers.memory import MemoryHandler

__all__ = [
    "ATTACHMENT",
    "TIMEOUT",
    "Reply",
    "html_with_attachment",
    "plain",
    "request",
    "running",
    "send",
    "utf8_subject",
]

TIMEOUT = 10.0
ATTACHMENT = bytes(range(256)) * 4
"""Binary content that survives only if base64 is undone exactly."""


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One request to the catcher at ``base``; a JSON ``body`` is sent as application/json."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
    sent_headers = dict(headers or {})
    data: bytes | None = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent_headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@contextmanager
def running(
    transport: str = "asyncio", mail: MemoryHandler | None = None, **catcher_options: Any
) -> Iterator[tuple[MemoryHandler, ServerThread, Catcher]]:
    """An SMTP server of ``transport`` and a catcher over the same `MemoryHandler`."""
    mail = mail or MemoryHandler()
    server = ServerThread(
        transport, mail, host="127.0.0.1", port=0, config=SmtpConfig(hostname="mx.test")
    )
    with server, Catcher(mail, "127.0.0.1", 0, **catcher_options) as catcher:
        yield mail, server, catcher


def send(server: ServerThread, message: EmailMessage, to: list[str] | None = None) -> None:
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.send_message(message, to_addrs=to)


def plain(
    subject: str = "Plain hello", body: str = "Hello Bob,\nplain text here.\n"
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = "Bob <bob@example.org>"
    message["Subject"] = subject
    message["Message-ID"] = "<plain-1@client.test>"
    message.set_content(body)
    return message


def html_with_attachment(subject: str = "Report with attachment") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Reports <reports@example.org>"
    message["To"] = "carol@example.org"
    message["Cc"] = "Dave <dave@example.org>"
    message["Subject"] = subject
    message["X-Tags"] = "reports, weekly"
    message.set_content("The report is attached.\n")
    message.add_alternative("<p>The <b>report</b> is attached.</p>\n", subtype="html")
    message.add_attachment(
        ATTACHMENT, maintype="application", subtype="pdf", filename="report été.pdf"
    )
    return message


def utf8_subject() -> EmailMessage:
    message = plain(subject="Grüße aus Köln ✓ 日本語", body="Unicode body: naïve café ✓\n")
    message.replace_header("Message-ID", "<utf8-1@client.test>")
    return message
