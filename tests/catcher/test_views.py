"""The JSON views of messages and the search syntax, on hand-made records (no server)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage

from transports.catcher._views import (
    find_part,
    message_detail,
    message_summary,
    parse_query,
    rfc3339,
)
from transports.handlers.stored import StoredMessage


def record(raw: bytes, **fields: object) -> StoredMessage:
    values: dict[str, object] = {
        "id": "0190ABCDEF12345678",
        "sender": "alice@example.org",
        "recipients": ("bob@example.org",),
        "raw": raw,
        "received_at": datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
    }
    values.update(fields)
    return StoredMessage(**values)  # type: ignore[arg-type]


def test_nested_parts_get_dotted_ids_and_inline_images_are_told_apart() -> None:
    message = EmailMessage()
    message["Subject"] = "Nested"
    message.set_content("text body")
    message.add_alternative('<img src="cid:logo@x">', subtype="html")
    html = message.get_payload()[1]  # type: ignore[index]
    assert isinstance(html, EmailMessage)
    html.add_related(b"\x89PNG...", maintype="image", subtype="png", cid="<logo@x>")
    message.add_attachment(b"a,b\n", maintype="text", subtype="csv", filename="t.csv")
    inner = EmailMessage()
    inner["Subject"] = "Forwarded"
    inner.set_content("inner")
    message.add_attachment(inner)
    stored = record(message.as_bytes())
    detail = message_detail(stored)
    assert detail["Text"] == "text body\n"
    assert detail["HTML"] == '<img src="cid:logo@x">\n'
    assert [p["PartID"] for p in detail["Inline"]] == ["1.2.2"]
    assert detail["Inline"][0]["ContentID"] == "logo@x"
    assert [(p["PartID"], p["ContentType"]) for p in detail["Attachments"]] == [
        ("2", "text/csv"),
        ("3", "message/rfc822"),
    ]
    forwarded = find_part(stored, "3")
    assert forwarded is not None and b"Subject: Forwarded" in forwarded.payload()
    image = find_part(stored, "1.2.2")
    assert image is not None and image.payload() == b"\x89PNG..."
    assert find_part(stored, "1.2.1") is not None  # the body parts can be fetched too
    assert find_part(stored, "4") is None
    assert message_summary(stored)["Attachments"] == 2  # inline images are not counted


def test_malformed_messages_still_have_views() -> None:
    raw = (
        b"From: =?utf-8?q?broken\r\n"
        b"To: not an address, <>,,\r\n"
        b"Subject: =?x-unknown?b?////?=\r\n"
        b"Date: yesterday-ish\r\n"
        b"Content-Type: text/plain; charset=x-nonexistent\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"not base64 at all !!!\r\n"
    )
    stored = record(raw)
    summary = message_summary(stored)
    detail = message_detail(stored)
    assert summary["Date"] == summary["Created"] == "2024-05-01T12:00:00.123Z"
    assert isinstance(detail["Text"], str)
    assert "Subject" in detail["Headers"]


def test_a_message_without_headers_or_body() -> None:
    detail = message_detail(record(b""))
    assert detail["Subject"] == "" and detail["Text"] == "" and detail["HTML"] == ""
    assert detail["From"] == {"Name": "", "Address": ""}
    assert detail["Attachments"] == [] and detail["Headers"] == {}


def test_html_only_snippet_skips_markup_and_style() -> None:
    message = EmailMessage()
    message.set_content("<style>p{color:red}</style><p>Hi <b>there</b></p>", subtype="html")
    summary = message_summary(record(message.as_bytes()))
    assert summary["Snippet"] == "Hi there"


def test_query_syntax() -> None:
    terms = parse_query('from:Alice to:bob subject:"two words" -tag:x !free http://a.b/c').terms
    assert [(t.field, t.value, t.negated) for t in terms] == [
        ("from", "alice", False),
        ("to", "bob", False),
        ("subject", "two words", False),
        ("tag", "x", True),
        ("", "free", True),
        ("", "http://a.b/c", False),
    ]
    assert parse_query("   ").terms == ()


def test_rfc3339_is_utc_with_milliseconds() -> None:
    moment = datetime.fromisoformat("2024-05-01T14:00:00.987654+02:00")
    assert rfc3339(moment) == "2024-05-01T12:00:00.987Z"
