"""JSON views of `StoredMessage` records, shaped like Mailpit's API (``/api/v1/...``) so that
scripts written for Mailpit port with few changes, and the search-query matcher.

Pure functions of a record: no I/O, no locks. Every parse is defensive, since a catcher receives
whatever a program under test produced, malformed headers and unknown charsets included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from transports.handlers.stored import StoredMessage

__all__ = [
    "Part",
    "Query",
    "address_list",
    "find_part",
    "message_detail",
    "message_headers",
    "message_summary",
    "parse_query",
    "rfc3339",
    "tags_of",
]

JSON = dict[str, Any]
SNIPPET_LENGTH = 250


@dataclass(frozen=True, slots=True)
class Part:
    """A leaf of the MIME tree that is not the chosen text or HTML body."""

    part_id: str
    """Dotted 1-based path through the multiparts (``"2"``, ``"1.2"``), as Mailpit's PartID."""
    message: Message
    inline: bool
    """Has a Content-ID and is not marked ``attachment``: an image the HTML refers to."""

    @property
    def content_type(self) -> str:
        return self.message.get_content_type()

    @property
    def filename(self) -> str:
        try:
            name = self.message.get_filename()
        except Exception:  # a malformed RFC 2231 parameter
            name = None
        return _one_line(name or "")

    @property
    def content_id(self) -> str:
        value = _header(self.message, "content-id")
        return value.strip().removeprefix("<").removesuffix(">")

    @property
    def charset(self) -> str | None:
        charset = self.message.get_param("charset")
        return charset if isinstance(charset, str) else None

    def payload(self) -> bytes:
        """The decoded content (base64 and quoted-printable undone) to download."""
        return _payload(self.message)

    def describe(self) -> JSON:
        return {
            "PartID": self.part_id,
            "FileName": self.filename,
            "ContentType": self.content_type,
            "ContentID": self.content_id,
            "Size": len(self.payload()),
        }


@dataclass(frozen=True, slots=True)
class _Body:
    text: str
    html: str
    parts: list[Part]


def rfc3339(moment: datetime) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC with milliseconds, as Mailpit writes times."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _common_fields(message: StoredMessage, parsed: EmailMessage) -> dict[str, Any]:
    """What a summary and a full message both show: ids, addresses, subject, times, size."""
    to, cc = address_list(parsed, "to"), address_list(parsed, "cc")
    return {
        "ID": message.id,
        "MessageID": _message_id(parsed),
        "From": _first(address_list(parsed, "from")),
        "To": to,
        "Cc": cc,
        "Bcc": _bcc(message, to, cc),
        "ReplyTo": address_list(parsed, "reply-to"),
        "Subject": message.subject or "",
        "Created": rfc3339(message.received_at),
        "Date": rfc3339(_date(parsed) or message.received_at),
        "Tags": _tags(parsed),
        "Size": message.size,
    }


def message_summary(message: StoredMessage) -> JSON:
    """One row of ``GET /api/v1/messages`` (Mailpit's ``MessageSummary``, plus ``Envelope``)."""
    parsed = message.email
    body = _body(parsed)
    return {
        **_common_fields(message, parsed),
        "Attachments": sum(1 for part in body.parts if not part.inline),
        "Snippet": _snippet(body),
        "Envelope": {"From": message.sender, "To": list(message.recipients)},
    }


def message_detail(message: StoredMessage) -> JSON:
    """``GET /api/v1/message/{ID}`` (Mailpit's ``Message``, plus ``Headers`` and ``Envelope``)."""
    parsed = message.email
    body = _body(parsed)
    return {
        **_common_fields(message, parsed),
        "ReturnPath": message.sender,
        "Text": body.text,
        "HTML": body.html,
        "Inline": [part.describe() for part in body.parts if part.inline],
        "Attachments": [part.describe() for part in body.parts if not part.inline],
        "Headers": message_headers(message),
        "Envelope": {
            "From": message.sender,
            "To": list(message.recipients),
            "RemoteIP": message.remote_ip,
            "Helo": message.helo,
            "TLS": message.tls is not None,
            "AuthenticatedAs": message.authentication_id,
        },
    }


def message_headers(message: StoredMessage) -> dict[str, list[str]]:
    """``GET /api/v1/message/{ID}/headers``: each header name with its decoded values, in order."""
    headers: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name in message.email:
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        headers[name] = [_header_text(message.email, name, i) for i in range(_count(message, name))]
    return headers


def tags_of(message: StoredMessage) -> list[str]:
    """The message's tags (from its ``X-Tags`` headers, as Mailpit reads them)."""
    return _tags(message.email)


def find_part(message: StoredMessage, part_id: str) -> Part | None:
    """The leaf ``part_id`` names, body parts included (as Mailpit lets one fetch those too)."""
    for found_id, leaf in _leaves(message.email, ""):
        if found_id == part_id:
            return Part(found_id, leaf, inline=_is_inline(leaf))
    return None


def address_list(parsed: Message, name: str) -> list[JSON]:
    """The addresses of header ``name`` as Mailpit's ``[{"Name": ..., "Address": ...}]``."""
    values = parsed.get_all(name) or []
    found: list[JSON] = []
    for value in values:
        try:
            addresses = value.addresses  # type: ignore[attr-defined]  # an AddressHeader
            found += [{"Name": a.display_name, "Address": a.addr_spec} for a in addresses]
        except Exception:  # not parsed as an address header, or malformed: parse it leniently
            for display, address in getaddresses([str(value)]):
                if display or address:
                    found.append({"Name": display, "Address": address})
    return found


# ---- search


@dataclass(frozen=True, slots=True)
class _Term:
    field: str
    """``from``, ``to``, ``subject``, ``tag``, ``has`` or ``""`` for free text."""
    value: str
    negated: bool


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed search: every term must hold (a negated one must not)."""

    terms: tuple[_Term, ...]

    def matches(self, message: StoredMessage) -> bool:
        return all(_term_holds(term, message) != term.negated for term in self.terms)


_TOKEN = re.compile(r'([-!]?)(?:(\w+):)?(?:"([^"]*)"?|(\S+))')
_FIELDS = {"from", "to", "subject", "tag", "has", "is"}


def parse_query(text: str) -> Query:
    """Mailpit-like search syntax: ``from:alice to:bob subject:"two words" free text``.

    Values match case-insensitively as substrings; ``from:``/``to:`` look at the envelope and
    at the From, To and Cc headers; free text looks at the subject, the addresses and the text
    and HTML bodies; ``tag:NAME``, ``has:attachment``; a leading ``-`` or ``!`` negates a term.
    """
    terms: list[_Term] = []
    for match in _TOKEN.finditer(text):
        negation, field, quoted, bare = match.groups()
        value = quoted if quoted is not None else bare or ""
        field = (field or "").lower()
        if field and field not in _FIELDS:  # "http://x" or "a:b" is free text
            value, field = f"{match.group(2)}:{value}", ""
        if value:
            terms.append(_Term(field, value.lower(), bool(negation)))
    return Query(tuple(terms))


def _term_holds(term: _Term, message: StoredMessage) -> bool:
    value = term.value
    parsed = message.email
    if term.field == "from":
        return any(value in text for text in _from_texts(message))
    if term.field == "to":
        return any(value in text for text in _to_texts(message))
    if term.field == "subject":
        return value in (message.subject or "").lower()
    if term.field == "tag":
        return value in (tag.lower() for tag in _tags(parsed))
    if term.field == "has":
        return value.startswith("attachment") and any(
            not part.inline for part in _body(parsed).parts
        )
    if term.field == "is":
        return value == "tls" and message.tls is not None
    body = _body(parsed)
    haystacks = [message.subject or "", body.text, body.html]
    haystacks += _from_texts(message) + _to_texts(message)
    return any(value in text.lower() for text in haystacks)


def _from_texts(message: StoredMessage) -> list[str]:
    found = [message.sender.lower()]
    for entry in address_list(message.email, "from"):
        found.append(f"{entry['Name']} <{entry['Address']}>".lower())
    return found


def _to_texts(message: StoredMessage) -> list[str]:
    found = [recipient.lower() for recipient in message.recipients]
    for name in ("to", "cc"):
        for entry in address_list(message.email, name):
            found.append(f"{entry['Name']} <{entry['Address']}>".lower())
    return found


# ---- helpers


def _leaves(part: Message, path: str) -> Iterator[tuple[str, Message]]:
    """Every non-multipart part with its PartID (an attached message/rfc822 is one leaf)."""
    if part.get_content_maintype() == "multipart":
        children = part.get_payload()
        if isinstance(children, list):
            for index, child in enumerate(children, 1):
                if isinstance(child, Message):
                    yield from _leaves(child, f"{path}.{index}" if path else str(index))
        return
    yield path or "1", part


def _body(parsed: EmailMessage) -> _Body:
    text_part = _choose_body(parsed, "plain")
    html_part = _choose_body(parsed, "html")
    parts = [
        Part(part_id, leaf, inline=_is_inline(leaf))
        for part_id, leaf in _leaves(parsed, "")
        if leaf is not text_part and leaf is not html_part
    ]
    return _Body(
        text=_text_of(text_part) if text_part is not None else "",
        html=_text_of(html_part) if html_part is not None else "",
        parts=parts,
    )


def _choose_body(parsed: EmailMessage, subtype: str) -> Message | None:
    try:
        found = parsed.get_body(preferencelist=(subtype,))
    except Exception:
        return None
    if found is None or found.get_content_type() != f"text/{subtype}":
        return None
    return found


def _is_inline(leaf: Message) -> bool:
    disposition = (leaf.get_content_disposition() or "").lower()
    return bool(_header(leaf, "content-id")) and disposition != "attachment"


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except Exception:  # an unknown charset, or a broken transfer encoding
        content = None
    if not isinstance(content, str):
        content = _payload(part).decode("utf-8", "replace")
    return content.replace("\r\n", "\n")


def _payload(part: Message) -> bytes:
    if part.get_content_maintype() == "message" and part.is_multipart():
        inner = part.get_payload()
        if isinstance(inner, list):
            try:
                return b"".join(m.as_bytes() for m in inner if isinstance(m, Message))
            except Exception:
                return b""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    return data if isinstance(data, bytes) else b""


def _header(part: Message, name: str) -> str:
    try:
        value = part.get(name)
    except Exception:
        return ""
    return "" if value is None else _one_line(str(value))


def _count(message: StoredMessage, name: str) -> int:
    return sum(1 for key in message.email if key.lower() == name.lower())


def _header_text(parsed: Message, name: str, index: int) -> str:
    try:
        values = parsed.get_all(name) or []
        return str(values[index])
    except Exception:  # undecodable encoded words: show the raw value instead
        raw = [value for key, value in parsed.raw_items() if key.lower() == name.lower()]
        return str(raw[index]) if index < len(raw) else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _message_id(parsed: Message) -> str:
    return _header(parsed, "message-id").removeprefix("<").removesuffix(">")


def _first(addresses: list[JSON]) -> JSON:
    return addresses[0] if addresses else {"Name": "", "Address": ""}


def _bcc(message: StoredMessage, to: list[JSON], cc: list[JSON]) -> list[JSON]:
    """Envelope recipients named in neither To nor Cc: the blind copies, as Mailpit shows them."""
    named = {str(entry["Address"]).lower() for entry in to + cc}
    return [
        {"Name": "", "Address": rcpt} for rcpt in message.recipients if rcpt.lower() not in named
    ]


def _date(parsed: Message) -> datetime | None:
    value = _header(parsed, "date")
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _tags(parsed: Message) -> list[str]:
    """Mailpit's tags from ``X-Tags: one, two`` headers."""
    tags: list[str] = []
    for value in parsed.get_all("x-tags") or []:
        for tag in str(value).split(","):
            tag = _one_line(tag)
            if tag and tag not in tags:
                tags.append(tag)
    return tags


def _snippet(body: _Body) -> str:
    html = re.sub(r"(?is)<(style|script)\b.*?</\1>", " ", body.html)
    text = body.text or re.sub(r"<[^>]*>", " ", html)
    text = _one_line(text)
    return text if len(text) <= SNIPPET_LENGTH else text[: SNIPPET_LENGTH - 1] + "…"
