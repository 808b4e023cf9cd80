"""`WebhookHandler` against a local ``http.server``: the JSON payload, and 250 only for 2xx."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from transports.handlers import WebhookHandler, resolve_handler

from ._support import MESSAGE, send, send_expecting, serve

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; these requests must go straight to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Web:
    """A web application answering every POST with ``status`` (after ``delay`` seconds)."""

    status: int = 200
    delay: float = 0.0
    location: str | None = None
    url: str = ""
    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)


@contextmanager
def web_app(web: Web) -> Iterator[Web]:
    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            web.posts.append((self.path, dict(self.headers.items()), body))
            time.sleep(web.delay)
            self.send_response(web.status)
            if web.location:
                self.send_header("Location", web.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            web.gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    web.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/mail"
    try:
        yield web
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_accepts_and_the_payload_carries_envelope_headers_and_raw(status: int) -> None:
    with web_app(Web(status)) as web:
        handler = WebhookHandler(web.url, headers={"Authorization": "Bearer s3cret"})
        with serve(handler, "threads") as server:
            assert (
                send(
                    server, ["bob@example.org", "carol@example.org"], rcpt_options=["NOTIFY=NEVER"]
                )
                == {}
            )
    ((path, headers, body),) = web.posts
    assert path == "/hooks/mail"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    data = json.loads(body)
    assert base64.b64decode(data["raw"]) == MESSAGE  # untouched: the envelope is beside it
    assert data["size"] == len(MESSAGE)
    assert re.fullmatch(r"[0-9A-F]{18}", data["id"])
    assert datetime.fromisoformat(data["received_at"]).tzinfo is not None
    assert data["envelope"] == {
        "mail_from": "alice@example.org",
        "rcpt_to": ["bob@example.org", "carol@example.org"],
        "mail_params": {"SIZE": str(len(MESSAGE))},
        "rcpt_params": [{"NOTIFY": "NEVER"}, {"NOTIFY": "NEVER"}],
    }
    session = data["session"]
    assert session["remote_ip"] == "127.0.0.1" and session["helo"] == "client.test"
    assert session["protocol"] == "ESMTP" and session["tls"] is None
    assert session["authenticated_as"] is None
    assert data["headers"] == {
        "subject": "Quarterly numbers",
        "from": "Alice <alice@example.org>",
        "to": "Bob <bob@example.org>",
        "cc": None,
        "reply_to": None,
        "date": None,
        "message_id": "<q1@client.test>",
    }


@pytest.mark.parametrize("status", [500, 503, 404, 400])
def test_other_statuses_give_451(status: int) -> None:
    with web_app(Web(status)) as web, serve(WebhookHandler(web.url)) as server:
        exc = send_expecting(server, 451)
    assert f"HTTP {status}" in str(exc)
    assert len(web.posts) == 1


def test_redirect_is_not_followed_and_gives_451() -> None:
    """urllib would re-send a redirected POST as a bodiless GET and report its 200."""
    with web_app(Web(302)) as web:
        web.location = web.url + "/elsewhere"
        with serve(WebhookHandler(web.url)) as server:
            exc = send_expecting(server, 451)
    assert "HTTP 302" in str(exc)
    assert web.gets == []


def test_unreachable_or_slow_gives_451() -> None:
    with web_app(Web()) as web:
        url = web.url
    with serve(WebhookHandler(url)) as server:  # the port is closed now
        exc = send_expecting(server, 451)
    assert "4.4.1" in str(exc)
    with web_app(Web(delay=1.5)) as web, serve(WebhookHandler(web.url, timeout=0.3)) as server:
        send_expecting(server, 451)


def test_spec_and_construction_errors() -> None:
    handler = resolve_handler("webhook:https://hooks.example.org/mail?token=a:b")
    assert isinstance(handler, WebhookHandler)
    assert handler.url == "https://hooks.example.org/mail?token=a:b"
    for spec in ("webhook", "webhook:"):
        with pytest.raises(ValueError, match="webhook:URL"):
            resolve_handler(spec)
    for spec in ("webhook:ftp://example.org/", "webhook:example.org/hook", "webhook:http://"):
        with pytest.raises(ValueError, match="http:// or https://"):
            resolve_handler(spec)
