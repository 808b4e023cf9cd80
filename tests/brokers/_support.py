"""SMTP client side of the broker tests: tagged messages sent with smtplib, and their answers."""

from __future__ import annotations

import re
import smtplib
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

HELO = "client.example"
TRANSPORTS = ["asyncio", "threads"]
ALL_TRANSPORTS = ["asyncio", "threads", "trio", "anyio", "anyio-trio"]
_TAG = re.compile(rb"^Subject: (\S+)\r$", re.MULTILINE)


def message(tag: str, sender: str = "alice@example.org") -> bytes:
    """A message whose Subject is its tag, with a dot line and 8-bit text to survive."""
    return (
        f"From: <{sender}>\r\n"
        f"To: <bob@example.net>\r\n"
        f"Subject: {tag}\r\n"
        f"Message-ID: <{tag}@client.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "first line\r\n"
        ".a line that starts with a dot\r\n"
        "caf\u00e9 \u2014 8-bit text\r\n"
    ).encode()


def tag_of(body: bytes) -> str:
    match = _TAG.search(body)
    assert match is not None, body[:200]
    return match.group(1).decode()


def new_tag(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Outcome:
    """What the SMTP server answered to each tagged message."""

    accepted: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)

    def record(self, tag: str, code: int) -> None:
        if code == 250:
            self.accepted.append(tag)
        else:
            self.refused[tag] = code


class Client:
    """One SMTP session that stays open across messages (451 does not end it)."""

    def __init__(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        self.smtp = smtplib.SMTP(*address, local_hostname=HELO, timeout=timeout)
        self.smtp.ehlo()

    def send(
        self,
        tag: str,
        sender: str = "alice@example.org",
        recipients: Sequence[str] = ("bob@example.net",),
    ) -> int:
        """Send one message; its final reply code (250, or the DATA refusal's)."""
        try:
            self.smtp.sendmail(sender, list(recipients), message(tag, sender), ["BODY=8BITMIME"])
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
        return 250

    def close(self) -> None:
        try:
            self.smtp.quit()
        except smtplib.SMTPException:
            self.smtp.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_all(client: Client, count: int, outcome: Outcome, expect: int | None = None) -> None:
    """Send ``count`` tagged messages over ``client``, recording each answer (which must be
    ``expect``, if given)."""
    for _ in range(count):
        tag = new_tag()
        code = client.send(tag)
        if expect is not None:
            assert code == expect, f"{tag}: {code}"
        outcome.record(tag, code)


def send_concurrently(address: tuple[str, int], sessions: int, each: int) -> list[Outcome]:
    """``sessions`` clients at once, each sending ``each`` tagged messages; their outcomes."""
    outcomes = [Outcome() for _ in range(sessions)]

    def session(outcome: Outcome) -> None:
        with Client(address) as client:
            send_all(client, each, outcome)

    threads = [threading.Thread(target=session, args=(o,)) for o in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes
