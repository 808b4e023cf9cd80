"""The web page in a real headless Chromium, driven over the DevTools protocol (see `_cdp`).

Needs ``chromium`` (Debian: ``apt-get install -y chromium``; `.ci/run` installs it): without it
the module fails rather than hiding these tests.
Screenshots go to the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ._cdp import Browser, chromium_path
from ._support import TIMEOUT, html_with_attachment, plain, request, running, send, utf8_subject

pytestmark = pytest.mark.network

FRAME_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""The policy the page puts in the frame's ``srcdoc`` (as the issue asks)."""

if chromium_path() is None:
    raise RuntimeError("tests/catcher/test_browser.py needs chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with Browser(tmp_path_factory.mktemp("chromium-profile")) as chromium:
        yield chromium


class _Probe(BaseHTTPRequestHandler):
    """Records every request: a remote server that caught mail must never reach."""

    hits: list[str]
    pages: dict[str, bytes]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = self.pages.get(self.path, b"")
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if body else "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe() -> Iterator[tuple[ThreadingHTTPServer, list[str], dict[str, bytes]]]:
    """An HTTP server on 127.0.0.2 (another loopback address: another origin, as a remote
    host would be) that records the paths requested."""
    hits: list[str] = []
    pages: dict[str, bytes] = {}
    handler = type("Probe", (_Probe,), {"hits": hits, "pages": pages})
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server, hits, pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def page_state(browser: Browser) -> dict[str, str]:
    state = browser.evaluate("JSON.stringify(document.body.dataset)")
    return dict(json.loads(state))


def open_page(browser: Browser, url: str) -> None:
    browser.navigate(url)
    browser.wait_for("document.body.dataset.listState === 'ready'")


def text_of(browser: Browser, element_id: str) -> str:
    return str(browser.evaluate(f"document.getElementById({json.dumps(element_id)}).innerText"))


def test_mail_appears_live_and_opens_by_deep_link(browser: Browser, tmp_path: Path) -> None:
    with running() as (mail, server, catcher):
        open_page(browser, catcher.url + "/")
        browser.wait_for("document.body.dataset.live === 'sse'")
        assert page_state(browser)["count"] == "0"
        assert browser.evaluate("!document.getElementById('empty').hidden")

        send(server, plain(subject="Welcome aboard", body="Hello Bob,\nyour account is ready.\n"))
        send(server, utf8_subject())
        # Pushed by server-sent events: no reload, no polling.
        browser.wait_for("document.body.dataset.count === '2'")
        listing = text_of(browser, "list")
        assert "Welcome aboard" in listing and "Grüße aus Köln ✓ 日本語" in listing
        assert listing.index("Grüße") < listing.index("Welcome")  # newest first
        list_png = browser.screenshot(tmp_path / "list.png")

        welcome = mail.messages[0]
        open_page(browser, f"{catcher.url}/?id={welcome.id}")
        browser.wait_for("document.body.dataset.viewState === 'ready'")
        assert text_of(browser, "subject") == "Welcome aboard"
        assert text_of(browser, "text-body") == "Hello Bob,\nyour account is ready.\n"
        assert "Alice <alice@example.org>" in text_of(browser, "summary")
        assert browser.evaluate("document.querySelector('a.item.selected').dataset.id") == (
            welcome.id
        )
        message_png = browser.screenshot(tmp_path / "message.png")

        unicode_message = mail.messages[1]
        browser.evaluate(
            f"document.querySelector('a.item[data-id=\"{unicode_message.id}\"]').click()"
        )
        browser.wait_for(
            f"document.getElementById('view').dataset.id === '{unicode_message.id}'"
            " && document.body.dataset.viewState === 'ready'"
        )
        assert text_of(browser, "subject") == "Grüße aus Köln ✓ 日本語"
        assert browser.evaluate("location.search") == f"?id={unicode_message.id}"

    for png in (list_png, message_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def hostile_mail(probe_url: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Mallory <mallory@example.org>"
    message["To"] = "bob@example.org"
    message["Subject"] = "Hostile HTML"
    message.set_content("The plain part.\n")
    message.add_alternative(
        f"""<html><head>
<meta http-equiv="refresh" content="0.5;url={probe_url}/refresh">
<link rel="stylesheet" href="{probe_url}/style.css">
<style>@import url("{probe_url}/import.css");</style>
</head><body>
<p id="marker">Visible HTML body</p>
<img src="{probe_url}/x.png" alt="remote image">
<div style="background-image: url('{probe_url}/background.png')">styled</div>
<iframe src="{probe_url}/frame"></iframe>
<script>
  document.getElementById("marker").textContent = "SCRIPT" + "RAN";
  new Image().src = "{probe_url}/script-beacon";
  try {{ parent.document.body.dataset.pwned = "yes"; }} catch (e) {{}}
</script>
</body></html>""",
        subtype="html",
    )
    return message


def test_html_mail_runs_no_script_and_loads_nothing_remote(
    browser: Browser,
    probe: tuple[ThreadingHTTPServer, list[str], dict[str, bytes]],
    tmp_path: Path,
) -> None:
    server_probe, hits, pages = probe
    probe_url = f"http://127.0.0.2:{server_probe.server_address[1]}"
    hostile = hostile_mail(probe_url)
    with running() as (mail, server, catcher):
        send(server, hostile)
        (stored,) = mail.messages
        open_page(browser, f"{catcher.url}/?id={stored.id}")
        browser.wait_for("document.body.dataset.viewState === 'ready'")
        frame = browser.evaluate(
            "(() => { const f = document.getElementById('html-frame');"
            " return {sandbox: f.getAttribute('sandbox'), tokens: f.sandbox.length,"
            " reachable: f.contentDocument !== null,"
            f" csp: f.srcdoc.includes({json.dumps(FRAME_CSP)})}}; }})()"
        )
        assert frame == {"sandbox": "", "tokens": 0, "reachable": False, "csp": True}
        # The frame's own document, as rendered (DevTools sees into the sandboxed frame):
        session = browser.frame_session()
        browser.wait_for("true")
        deadline = time.monotonic() + TIMEOUT
        while "Visible HTML body" not in (frame_texts := browser.document_texts(session)):
            assert time.monotonic() < deadline, frame_texts
            time.sleep(0.05)
        assert "SCRIPTRAN" not in "".join(frame_texts)  # the script did not run
        time.sleep(1.5)  # past the meta refresh, and time for any load to be attempted
        assert page_state(browser).get("pwned") is None
        assert text_of(browser, "subject") == "Hostile HTML"
        browser.screenshot(tmp_path / "hostile.png")
    assert hits == [], f"caught mail reached a remote server: {hits}"

    # Control: the same HTML, opened directly, does load from and report to the probe, so the
    # silence above is the sandbox and the policy at work, not an unreachable address.
    pages["/hostile.html"] = str(hostile.get_body(("html",)).get_content()).encode()  # type: ignore[union-attr]
    browser.send("Page.navigate", url=f"{probe_url}/hostile.html")
    deadline = time.monotonic() + TIMEOUT
    vectors = {"/x.png", "/background.png", "/style.css", "/import.css", "/frame"}
    vectors |= {"/refresh", "/script-beacon"}
    while not vectors <= set(hits):  # each one works when nothing stops it
        assert time.monotonic() < deadline, hits
        time.sleep(0.05)


def test_attachments_raw_source_and_html_tab(browser: Browser) -> None:
    with running() as (mail, server, catcher):
        send(server, html_with_attachment())
        (stored,) = mail.messages
        open_page(browser, f"{catcher.url}/?id={stored.id}")
        browser.wait_for("document.body.dataset.viewState === 'ready'")
        assert browser.evaluate("document.getElementById('tab-html').hidden") is False
        link = browser.evaluate(
            "(() => { const a = document.querySelector('#attachments a.part');"
            " return {text: a.textContent, href: a.getAttribute('href'),"
            " download: a.download}; })()"
        )
        assert link == {
            "text": "report été.pdf",
            "href": f"/api/v1/message/{stored.id}/part/2",
            "download": "report été.pdf",
        }
        size = browser.evaluate(
            "fetch(document.querySelector('#attachments a.part').href)"
            ".then(r => r.arrayBuffer()).then(b => b.byteLength)"
        )
        assert size == 1024
        assert "(1)" in text_of(browser, "attachment-count")
        browser.evaluate("document.querySelector('#tabs button[data-tab=raw]').click()")
        browser.wait_for("document.getElementById('raw').textContent.includes('Subject: Report')")
        assert browser.evaluate("document.getElementById('tab-raw').hidden") is False
        assert browser.evaluate("document.getElementById('tab-html').hidden") is True
        headers = text_of(browser, "all-headers")
        assert "X-Tags" in headers and "reports, weekly" in headers


def test_delete_buttons(browser: Browser) -> None:
    with running() as (mail, server, catcher):
        for n in range(3):
            send(server, plain(subject=f"disposable {n}"))
        first = mail.messages[0]
        open_page(browser, f"{catcher.url}/?id={first.id}")
        browser.wait_for("document.body.dataset.viewState === 'ready'")
        assert page_state(browser)["count"] == "3"

        browser.evaluate("document.getElementById('delete-one').click()")
        browser.wait_for("document.body.dataset.count === '2'")
        assert browser.evaluate("document.getElementById('view').hidden") is True
        assert first.id not in [m.id for m in mail.messages]
        assert "?id=" not in browser.evaluate("location.href")

        browser.evaluate("document.getElementById('delete-all').click()")  # arms it
        time.sleep(0.2)
        assert len(mail.messages) == 2
        browser.evaluate("document.getElementById('delete-all').click()")
        browser.wait_for("document.body.dataset.count === '0'")
        assert mail.messages == []
        assert browser.evaluate("!document.getElementById('empty').hidden")

        # Deleted elsewhere (through the API): the open page follows.
        send(server, plain(subject="short-lived"))
        browser.wait_for("document.body.dataset.count === '1'")
        assert request(catcher.url, "DELETE", "/api/v1/messages").status == 200
        browser.wait_for("document.body.dataset.count === '0'")


def test_polling_fallback_without_event_source(browser: Browser) -> None:
    script = browser.send(
        "Page.addScriptToEvaluateOnNewDocument", source="delete window.EventSource;"
    )["identifier"]
    try:
        with running() as (_mail, server, catcher):
            open_page(browser, catcher.url + "/")
            browser.wait_for("document.body.dataset.live === 'polling'")
            send(server, plain(subject="found by polling"))
            browser.wait_for("document.body.dataset.count === '1'", timeout=8)
            assert "found by polling" in text_of(browser, "list")
    finally:
        browser.send("Page.removeScriptToEvaluateOnNewDocument", identifier=script)


def tiny_png() -> bytes:
    """A valid 1x1 red PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack("!I", len(data)) + body + struct.pack("!I", zlib.crc32(body))

    header = struct.pack("!IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_inline_images_are_shown_and_the_search_box_filters(browser: Browser) -> None:
    with running() as (mail, server, catcher):
        message = EmailMessage()
        message["From"] = "news@example.org"
        message["To"] = "bob@example.org"
        message["Subject"] = "Newsletter with logo"
        message.set_content("See the logo.\n")
        message.add_alternative('<p>Logo: <img id="logo" src="cid:logo@news"></p>', subtype="html")
        html_part = message.get_payload()[1]  # type: ignore[index]
        assert isinstance(html_part, EmailMessage)
        html_part.add_related(tiny_png(), maintype="image", subtype="png", cid="<logo@news>")
        send(server, message)
        send(server, plain(subject="Something else"))
        newsletter = mail.messages[0]
        open_page(browser, f"{catcher.url}/?id={newsletter.id}")
        browser.wait_for("document.body.dataset.viewState === 'ready'")
        srcdoc = browser.evaluate("document.getElementById('html-frame').srcdoc")
        assert 'src="data:image/png;base64,' in srcdoc and "cid:logo@news" not in srcdoc

        browser.evaluate(
            "document.getElementById('query').value = 'subject:newsletter';"
            "document.getElementById('search').requestSubmit()"
        )
        browser.wait_for("document.body.dataset.count === '1'")
        assert "Newsletter with logo" in text_of(browser, "list")
        assert "q=subject%3Anewsletter" in browser.evaluate("location.search")
        browser.evaluate("document.getElementById('clear-search').click()")
        browser.wait_for("document.body.dataset.count === '2'")
