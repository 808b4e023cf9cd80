"""Shared by the handler tests: a server per test, messages, and what trace headers look like.

Every server listens on 127.0.0.1 with a free port and the hostname ``mx.test``; clients use
the EHLO name ``client.test`` (see `tests.integration._support`), so trace headers are known
up to their id and date.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smtpcore import SmtpConfig
from tests.integration._support import CLIENT_NAME, TIMEOUT, run_swaks, smtp_client
from transports.controller import ServerThread
from transports.handler import Handler

__all__ = [
    "CLIENT_NAME",
    "HOSTNAME",
    "MESSAGE",
    "TIMEOUT",
    "file_size_limited_server",
    "received_pattern",
    "run_swaks",
    "send",
    "send_expecting",
    "serve",
    "smtp_client",
    "split_trace",
]

HOSTNAME = "mx.test"
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <q1@client.test>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".a line that began with a dot (stuffed on the wire)\r\n"
    b"From the desk of Alice\r\n"
)
"""Content that exercises dot-unstuffing and mbox's ``>From`` quoting; ends in CRLF so the
core delivers it byte for byte."""

_DATE = r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
_ID = r"[0-9A-F]{18}"


@contextmanager
def serve(handler: Handler, transport: str = "asyncio", **options: Any) -> Iterator[ServerThread]:
    """A server of ``transport`` for ``handler``, stopped (bounded) when the block ends."""
    options.setdefault("config", SmtpConfig(hostname=HOSTNAME))
    with ServerThread(transport, handler, host="127.0.0.1", port=0, **options) as server:
        try:
            yield server
        finally:
            server.stop(grace=2.0, timeout=15.0)


Target = ServerThread | tuple[str, int]


def send(
    server: Target,
    recipients: Sequence[str] = ("bob@example.org",),
    message: bytes = MESSAGE,
    sender: str = "alice@example.org",
    **kwargs: Any,
) -> dict[str, tuple[int, bytes]]:
    """Send one message with smtplib; its refusals (raises on a refused message)."""
    address = server if isinstance(server, tuple) else server.address
    with smtp_client(address) as client:
        return client.sendmail(sender, list(recipients), message, **kwargs)


def send_expecting(server: Target, code: int, **kwargs: Any) -> smtplib.SMTPException:
    """Send one message that must be refused with ``code``; the exception smtplib raised."""
    try:
        send(server, **kwargs)
    except smtplib.SMTPDataError as exc:
        assert exc.smtp_code == code, exc
        return exc
    except smtplib.SMTPRecipientsRefused as exc:
        codes = {c for c, _ in exc.recipients.values()}
        assert codes == {code}, exc.recipients
        return exc
    except smtplib.SMTPSenderRefused as exc:
        assert exc.smtp_code == code, exc
        return exc
    raise AssertionError(f"the message was accepted, expected {code}")


def received_pattern(
    *,
    recipient: str | None = "bob@example.org",
    keyword: str = "ESMTP",
    by: str = HOSTNAME,
    helo: str = CLIENT_NAME,
) -> bytes:
    """A regex for our folded ``Received:`` field, id and date left open."""
    start = rf"Received: from {re.escape(helo)} \(\[127\.0\.0\.1\]\)\r\n"
    start += rf"\tby {re.escape(by)} with {keyword} id {_ID}"
    if recipient is None:
        end = rf";\r\n\t{_DATE}\r\n"
    else:
        end = rf"\r\n\tfor <{re.escape(recipient)}>; {_DATE}\r\n"
    return (start + end).encode()


def split_trace(data: bytes, *, return_path: str | None, **received: Any) -> tuple[bytes, bytes]:
    """Check ``data`` starts with exactly our trace fields (``Return-Path: <return_path>``
    unless None, then ``Received:``); return (trace fields, the rest)."""
    pattern = received_pattern(**received)
    if return_path is not None:
        pattern = re.escape(f"Return-Path: <{return_path}>\r\n".encode()) + pattern
    match = re.match(pattern, data)
    assert match is not None, f"no trace fields as expected at the top of {data[:300]!r}"
    return match.group(0), data[match.end() :]


_LIMITED_SERVER = r"""
import resource, sys
from smtpcore import SmtpConfig
from transports.controller import ServerThread
from transports.handlers import resolve_handler

spec, limit, transport = sys.argv[1], int(sys.argv[2]), sys.argv[3]
handler = resolve_handler(spec)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
config = SmtpConfig(hostname="mx.test")
with ServerThread(transport, handler, host="127.0.0.1", port=0, config=config) as server:
    print(server.address[1], flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
"""


@contextmanager
def file_size_limited_server(
    spec: str, limit: int, transport: str = "threads"
) -> Iterator[tuple[str, int]]:
    """A server for handler ``spec`` in a child process whose files cannot grow past
    ``limit`` octets (RLIMIT_FSIZE): writes then fail with EFBIG, like a full disk, part-way
    through. A child, because the limit applies to the whole process (pytest included).
    Python ignores SIGXFSZ, so the writes fail instead of killing it."""
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _LIMITED_SERVER, spec, str(limit), transport],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        port = child.stdout.readline().strip()
        assert port.isdigit(), child.stderr.read() if child.stderr else b""
        yield ("127.0.0.1", int(port))
    finally:
        child.kill()
        child.communicate(timeout=TIMEOUT)
