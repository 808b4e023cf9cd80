"""The catcher's JSON API against a real SMTP server (`ServerThread`) and mail sent by smtplib."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from email import message_from_bytes, policy
from urllib.parse import quote

import pytest

from transports.catcher import Catcher
from transports.catcher._http import PAGE_CSP
from transports.controller import ServerThread
from transports.handlers.memory import MemoryHandler

from ._support import (
    ATTACHMENT,
    TIMEOUT,
    html_with_attachment,
    plain,
    request,
    running,
    send,
    utf8_subject,
)

pytestmark = pytest.mark.network


@pytest.mark.parametrize("transport", ["threads", "asyncio", "trio", "anyio"])
def test_the_catcher_runs_beside_every_transport(transport: str) -> None:
    with running(transport) as (mail, server, catcher):
        send(server, plain(subject=f"via {transport}"))
        listing = request(catcher.url, "GET", "/api/v1/messages").json()
    assert listing["total"] == 1
    assert listing["messages"][0]["Subject"] == f"via {transport}"
    assert listing["messages"][0]["ID"] == mail.messages[0].id


def test_list_newest_first_with_mailpit_fields_and_paging() -> None:
    with running() as (mail, server, catcher):
        send(server, plain())
        send(server, html_with_attachment(), to=["carol@example.org", "dave@example.org"])
        send(server, utf8_subject())
        first, second, third = mail.messages
        listing = request(catcher.url, "GET", "/api/v1/messages").json()
        page = request(catcher.url, "GET", "/api/v1/messages?limit=1&start=1").json()
    assert (listing["total"], listing["count"], listing["start"]) == (3, 3, 0)
    assert [m["ID"] for m in listing["messages"]] == [third.id, second.id, first.id]
    assert listing["tags"] == ["reports", "weekly"]
    newest, report, hello = listing["messages"]
    assert newest["Subject"] == "Grüße aus Köln ✓ 日本語"
    assert hello["From"] == {"Name": "Alice", "Address": "alice@example.org"}
    assert hello["To"] == [{"Name": "Bob", "Address": "bob@example.org"}]
    assert hello["Size"] == first.size and hello["Attachments"] == 0
    assert hello["Snippet"] == "Hello Bob, plain text here."
    assert hello["Created"].endswith("Z") and hello["Created"][:4].isdigit()
    assert hello["Envelope"] == {"From": "alice@example.org", "To": ["bob@example.org"]}
    assert report["Tags"] == ["reports", "weekly"] and report["Attachments"] == 1
    assert report["Cc"] == [{"Name": "Dave", "Address": "dave@example.org"}]
    assert (page["count"], page["messages_count"], page["start"]) == (1, 3, 1)
    assert [m["ID"] for m in page["messages"]] == [second.id]


def test_message_detail_has_headers_text_html_and_attachment_parts() -> None:
    with running() as (mail, server, catcher):
        send(server, html_with_attachment(), to=["carol@example.org", "hidden@example.org"])
        (stored,) = mail.messages
        detail = request(catcher.url, "GET", f"/api/v1/message/{stored.id}").json()
        latest = request(catcher.url, "GET", "/api/v1/message/latest").json()
        headers = request(catcher.url, "GET", f"/api/v1/message/{stored.id}/headers").json()
    assert latest == detail
    assert detail["ID"] == stored.id and detail["Subject"] == "Report with attachment"
    assert detail["Text"] == "The report is attached.\n"
    assert detail["HTML"] == "<p>The <b>report</b> is attached.</p>\n"
    assert detail["Bcc"] == [{"Name": "", "Address": "hidden@example.org"}]  # envelope only
    assert detail["ReturnPath"] == "reports@example.org"
    (attachment,) = detail["Attachments"]
    assert attachment == {
        "PartID": "2",
        "FileName": "report été.pdf",
        "ContentType": "application/pdf",
        "ContentID": "",
        "Size": len(ATTACHMENT),
    }
    assert detail["Inline"] == []
    assert detail["Headers"]["Subject"] == ["Report with attachment"]
    assert detail["Headers"]["X-Tags"] == ["reports, weekly"]
    assert headers == detail["Headers"]
    assert detail["Envelope"]["RemoteIP"] == "127.0.0.1"


def test_utf8_subject_and_body_are_decoded() -> None:
    with running() as (mail, server, catcher):
        send(server, utf8_subject())
        detail = request(catcher.url, "GET", "/api/v1/message/latest").json()
    assert b"=?utf-8?" in mail.messages[0].raw  # sent as an encoded word
    assert detail["Subject"] == "Grüße aus Köln ✓ 日本語"
    assert detail["Text"] == "Unicode body: naïve café ✓\n"


def test_raw_is_the_message_as_received() -> None:
    with running() as (mail, server, catcher):
        send(server, html_with_attachment())
        (stored,) = mail.messages
        raw = request(catcher.url, "GET", f"/api/v1/message/{stored.id}/raw")
        download = request(catcher.url, "GET", f"/api/v1/message/{stored.id}/raw?dl=1")
    assert raw.status == 200 and raw.body == stored.raw
    assert raw.headers["Content-Type"].startswith("text/plain")
    assert "Content-Disposition" not in raw.headers
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert f'filename="{stored.id}.eml"' in download.headers["Content-Disposition"]


def test_part_download_has_type_filename_and_exact_bytes() -> None:
    with running() as (mail, server, catcher):
        send(server, html_with_attachment())
        (stored,) = mail.messages
        part = request(catcher.url, "GET", f"/api/v1/message/{stored.id}/part/2")
        text = request(catcher.url, "GET", f"/api/v1/message/{stored.id}/part/1.1")
        missing = request(catcher.url, "GET", f"/api/v1/message/{stored.id}/part/9")
    assert part.status == 200 and part.body == ATTACHMENT
    assert part.headers["Content-Type"] == "application/pdf"
    disposition = part.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="report _t_.pdf"')
    assert "filename*=UTF-8''report%20%C3%A9t%C3%A9.pdf" in disposition
    # Opened in a browser, a caught part can never run script in the catcher's origin:
    assert "sandbox" in part.headers["Content-Security-Policy"]
    assert part.headers["X-Content-Type-Options"] == "nosniff"
    assert text.status == 200 and text.body == b"The report is attached.\r\n"  # as sent
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert missing.status == 404


def test_delete_one_message() -> None:
    with running() as (mail, server, catcher):
        send(server, plain(subject="keep"))
        send(server, plain(subject="drop"))
        keep, drop = mail.messages
        deleted = request(catcher.url, "DELETE", f"/api/v1/message/{drop.id}")
        again = request(catcher.url, "DELETE", f"/api/v1/message/{drop.id}")
        gone = request(catcher.url, "GET", f"/api/v1/message/{drop.id}")
        listing = request(catcher.url, "GET", "/api/v1/messages").json()
        assert [m.id for m in mail.messages] == [keep.id]  # the handler's store itself
    assert deleted.status == 200 and again.status == 404 and gone.status == 404
    assert [m["ID"] for m in listing["messages"]] == [keep.id]


def test_delete_by_ids_then_everything() -> None:
    with running() as (mail, server, catcher):
        for n in range(3):
            send(server, plain(subject=f"n{n}"))
        ids = [m.id for m in mail.messages]
        some = request(catcher.url, "DELETE", "/api/v1/messages", {"IDs": ids[:2]})
        assert some.status == 200
        assert [m.id for m in mail.messages] == ids[2:]
        every = request(catcher.url, "DELETE", "/api/v1/messages")
        assert every.status == 200
        assert mail.messages == []
        assert request(catcher.url, "GET", "/api/v1/messages").json()["total"] == 0
        bad = request(catcher.url, "DELETE", "/api/v1/messages", {"IDs": "all"})
    assert bad.status == 400


def test_search_by_field_free_text_and_negation() -> None:
    with running() as (mail, server, catcher):
        send(server, plain())
        send(server, html_with_attachment(), to=["carol@example.org"])
        send(server, utf8_subject())
        hello, report, unicode = (m.id for m in mail.messages)

        def found(query: str) -> list[str]:
            reply = request(catcher.url, "GET", f"/api/v1/search?query={quote(query)}")
            assert reply.status == 200, reply.text
            assert reply.json()["total"] == 3
            return [m["ID"] for m in reply.json()["messages"]]

        assert found("from:alice") == [unicode, hello]
        assert found("from:reports@example.org") == [report]
        assert found("to:carol") == [report]
        assert found("to:dave") == [report]  # Cc counts
        assert found("subject:köln") == [unicode]
        assert found('subject:"with attachment"') == [report]
        assert found("plain text") == [hello]  # free text: the body too
        assert found("CAFÉ") == [unicode]
        assert found("from:alice -subject:grüße") == [hello]
        assert found("has:attachment") == [report]
        assert found("tag:weekly") == [report]
        assert found("nothing-like-this") == []
        assert request(catcher.url, "GET", "/api/v1/search?query=").status == 400
        removed = request(catcher.url, "DELETE", f"/api/v1/search?query={quote('from:alice')}")
        assert removed.status == 200
        assert [m.id for m in mail.messages] == [report]


def test_wait_returns_the_matches_as_they_arrive() -> None:
    with running() as (_mail, server, catcher):
        send(server, plain(subject="unrelated"))
        replies = []
        waiter = threading.Thread(
            target=lambda: replies.append(
                request(
                    catcher.url,
                    "GET",
                    "/api/v1/wait?count=2&timeout=8&to=bob@example.org&subject=Welcome",
                )
            )
        )
        started = time.monotonic()
        waiter.start()
        time.sleep(0.3)
        send(server, plain(subject="Welcome 1"))
        send(server, plain(subject="Welcome 2"))
        waiter.join(TIMEOUT)
        elapsed = time.monotonic() - started
    (reply,) = replies
    assert reply.status == 200, reply.text
    data = reply.json()
    assert data["count"] == 2
    assert [m["Subject"] for m in data["messages"]] == ["Welcome 1", "Welcome 2"]
    assert elapsed < 5  # woken by the deliveries, not by the timeout


def test_wait_times_out_with_408() -> None:
    with running() as (_mail, server, catcher):
        send(server, plain(subject="other"))
        started = time.monotonic()
        reply = request(catcher.url, "GET", "/api/v1/wait?count=1&timeout=0.6&subject=never")
        elapsed = time.monotonic() - started
        immediate = request(catcher.url, "GET", "/api/v1/wait?timeout=0&subject=other")
        bad = [
            request(catcher.url, "GET", f"/api/v1/wait?{query}").status
            for query in ("count=0", "timeout=-1", "timeout=301", "count=x")
        ]
    assert reply.status == 408
    assert "after 0.6 s" in reply.text and "'other'" in reply.text  # what did arrive
    assert 0.5 < elapsed < 3
    assert immediate.status == 200 and immediate.json()["count"] == 1
    assert bad == [400] * 4


def test_livez_readyz_and_info() -> None:
    up = [True]
    with running(ready=lambda: up[0]) as (_mail, _server, catcher):
        assert request(catcher.url, "GET", "/livez").status == 200
        assert request(catcher.url, "GET", "/readyz").status == 200
        up[0] = False
        assert request(catcher.url, "GET", "/readyz").status == 503
        assert request(catcher.url, "GET", "/livez").status == 200
        info = request(catcher.url, "GET", "/api/v1/info").json()
    assert info["Messages"] == 0 and info["Release"] is False


def _read_events(sock: socket.socket, wanted: int, timeout: float = TIMEOUT) -> list[str]:
    """The first ``wanted`` event frames (comments skipped) read from an SSE response."""
    sock.settimeout(timeout)
    buffer = b""
    frames: list[str] = []
    deadline = time.monotonic() + timeout
    while len(frames) < wanted and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            if b"event:" in frame:
                frames.append(frame.decode())
    return frames


def _open_events(catcher: Catcher) -> socket.socket:
    host, port = catcher.address
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.0 200") and b"text/event-stream" in head, head
    deadline = time.monotonic() + TIMEOUT
    while catcher.hub.count < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return sock


def test_events_report_new_and_deleted_messages() -> None:
    with running() as (mail, server, catcher):
        sock = _open_events(catcher)
        try:
            send(server, plain(subject="evented"))
            (new,) = _read_events(sock, 1)
            (stored,) = mail.messages
            assert new.startswith("event: new\ndata: ")
            assert f'"ID":"{stored.id}"' in new and '"Subject":"evented"' in new
            request(catcher.url, "DELETE", f"/api/v1/message/{stored.id}")
            (deleted,) = _read_events(sock, 1)
            assert deleted == f'event: deleted\ndata: {{"IDs":["{stored.id}"]}}'
            mail.add(dataclasses.replace(stored, id="HANDMADE"))  # by hand: reported too
            send(server, plain(subject="again"))
            frames = _read_events(sock, 2)
            assert [f.split("\n")[0] for f in frames] == ["event: new"] * 2
            assert '"ID":"HANDMADE"' in frames[0]
            ids = [m.id for m in mail.messages]
            mail.clear()  # a test clearing the handler: reported too (though it does not notify)
            (cleared,) = _read_events(sock, 1)
            assert cleared == f'event: deleted\ndata: {{"IDs":["{ids[0]}","{ids[1]}"]}}'
        finally:
            sock.close()


def test_stop_ends_event_streams_and_long_polls_promptly() -> None:
    mail = MemoryHandler()
    catcher = Catcher(mail).start()
    sock = _open_events(catcher)
    replies = []
    waiter = threading.Thread(
        target=lambda: replies.append(
            request(catcher.url, "GET", "/api/v1/wait?timeout=60", timeout=30)
        )
    )
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    catcher.stop()
    stopped_in = time.monotonic() - started
    waiter.join(TIMEOUT)
    sock.settimeout(TIMEOUT)
    rest = b""
    while chunk := sock.recv(65536):  # to the end of the stream (a timeout fails the test)
        rest += chunk
    sock.close()
    assert stopped_in < 3
    assert b"event:" not in rest
    assert [r.status for r in replies] == [503]
    with pytest.raises(OSError):
        socket.create_connection(catcher.address, timeout=1).close()


def test_release_relays_to_the_named_smtp_server() -> None:
    relay_target = MemoryHandler()
    with (
        ServerThread("threads", relay_target, host="127.0.0.1", port=0) as target,
        running(allow_release=True) as (mail, server, catcher),
    ):
        send(server, html_with_attachment())
        (stored,) = mail.messages
        host, port = target.address
        reply = request(
            catcher.url,
            "POST",
            f"/api/v1/message/{stored.id}/release",
            {"To": ["qa@example.net"], "Host": host, "Port": port},
        )
        assert reply.status == 200, reply.text
        (relayed,) = relay_target.wait_for(1, timeout=TIMEOUT)
        unreachable = request(
            catcher.url,
            "POST",
            f"/api/v1/message/{stored.id}/release",
            {"To": ["qa@example.net"], "Host": "127.0.0.1", "Port": _free_port()},
        )
        invalid = request(catcher.url, "POST", f"/api/v1/message/{stored.id}/release", {"To": []})
    assert relayed.recipients == ("qa@example.net",)
    assert relayed.sender == "reports@example.org"
    parsed = message_from_bytes(relayed.raw, policy=policy.default)
    assert parsed["Subject"] == "Report with attachment"
    assert relayed.raw.replace(b"\r\n", b"\n") == stored.raw.replace(b"\r\n", b"\n")
    assert unreachable.status == 502 and "release failed" in unreachable.text
    assert invalid.status == 400


def test_release_is_off_by_default() -> None:
    with running() as (mail, server, catcher):
        send(server, plain())
        reply = request(
            catcher.url,
            "POST",
            "/api/v1/message/latest/release",
            {"To": ["qa@example.net"], "Host": "127.0.0.1", "Port": server.address[1]},
        )
        assert reply.status == 403
        assert len(mail.messages) == 1  # nothing was relayed back into it either


def test_cross_origin_and_rebinding_requests_are_refused() -> None:
    with running() as (mail, server, catcher):
        send(server, plain())
        path = "/api/v1/messages"
        evil_origin = request(catcher.url, "DELETE", path, headers={"Origin": "http://evil.test"})
        cross_site = request(catcher.url, "DELETE", path, headers={"Sec-Fetch-Site": "cross-site"})
        rebinding = request(catcher.url, "GET", path, headers={"Host": "evil.test:8025"})
        form_post = request(
            catcher.url,
            "DELETE",
            path,
            b'{"IDs": []}',
            headers={"Content-Type": "text/plain"},
        )
        host, port = catcher.address
        same_origin = request(catcher.url, "GET", path, headers={"Origin": f"http://{host}:{port}"})
        localhost = request(catcher.url, "GET", path, headers={"Host": f"localhost:{port}"})
        assert len(mail.messages) == 1  # nothing was deleted
    assert (evil_origin.status, cross_site.status, rebinding.status) == (403, 403, 403)
    assert form_post.status == 415
    assert same_origin.status == 200 and localhost.status == 200


def test_page_and_static_files_are_served_with_a_csp() -> None:
    with running() as (_mail, _server, catcher):
        page = request(catcher.url, "GET", "/")
        deep = request(catcher.url, "GET", "/?id=anything")
        script = request(catcher.url, "GET", "/static/app.js")
        style = request(catcher.url, "GET", "/static/style.css")
        missing = request(catcher.url, "GET", "/static/nope.js")
        wrong_method = request(catcher.url, "POST", "/api/v1/messages", {})
        unknown = request(catcher.url, "GET", "/api/v1/nothing")
        bad_limit = request(catcher.url, "GET", "/api/v1/messages?limit=many")
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == PAGE_CSP
    assert "script-src 'self'" in PAGE_CSP and "unsafe-eval" not in PAGE_CSP
    assert b'<script src="/static/app.js"' in page.body and deep.body == page.body
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert style.status == 200 and style.headers["Content-Type"].startswith("text/css")
    assert (missing.status, wrong_method.status, unknown.status) == (404, 405, 404)
    assert bad_limit.status == 400


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
