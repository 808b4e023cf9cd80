"""The catcher's HTTP request handler: the web page, the JSON API, the event stream.

Every response carries ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store``.
The page gets a strict Content-Security-Policy; every other response gets ``default-src
'none'; sandbox``, so that a caught attachment or raw message opened in the browser can never
run script in the catcher's origin (where it could call the API).

Requests that change something (``DELETE``, ``POST``) are refused when a browser says they come
from another origin, and a JSON body must be sent as ``application/json`` (which browsers only
send cross-origin after a CORS preflight the catcher never grants). When the catcher listens
on a loopback address it also refuses ``Host`` names other than ``localhost`` and IP
literals, so a web page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import smtplib
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from transports.handlers.stored import StoredMessage

from ._views import (
    find_part,
    message_detail,
    message_headers,
    message_summary,
    parse_query,
    tags_of,
)

if TYPE_CHECKING:
    from .catcher import Catcher

__all__ = ["PAGE_CSP", "RequestHandler"]

_LOG = logging.getLogger("smtpcore.catcher")

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
"""The page's policy. A ``srcdoc`` frame inherits it too (on top of its own, stricter, meta
policy), which is why inline styles are allowed: caught HTML mail is full of them."""
API_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"
MAX_BODY = 1 << 20
MAX_WAIT = 300.0
WAIT_SLICE = 0.25
"""A long poll re-checks for a stopping catcher this often (deliveries wake it at once)."""
DEFAULT_LIMIT = 50
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


Route = Callable[["RequestHandler", list[str]], None]


class RequestHandler(BaseHTTPRequestHandler):
    """One request; the `Catcher` is ``self.catcher`` (set on a subclass per catcher)."""

    catcher: Catcher
    server_version = "smtpcore-catcher"
    sys_version = ""
    timeout = 10.0
    """Seconds a client may stall reading or writing, so no connection holds a thread forever."""

    # ---- dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        self.close_connection = True
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        try:
            self._check_host()
            if method != "GET":
                self._check_origin()
            route, args = _route(method, segments)
            route(self, args)
        except HttpError as exc:
            self._send_text(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away
        except Exception:
            _LOG.exception("catcher: %s %s failed", method, self.path)
            self._send_text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("catcher: %s " + format, self.address_string(), *args)

    # ---- checks

    def _check_host(self) -> None:
        if not self.catcher.loopback:
            return
        host = self.headers.get("Host", "")
        name = host[1 : host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
        name = name.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost") or _is_ip(name):
            return
        raise HttpError(HTTPStatus.FORBIDDEN, f"unexpected Host {host!r}")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            raise HttpError(HTTPStatus.FORBIDDEN, "cross-origin request refused")
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise HttpError(HTTPStatus.FORBIDDEN, "cross-site request refused")

    def _json_body(self) -> Any:
        """The request's JSON body, or None if it has none."""
        if "Transfer-Encoding" in self.headers:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        body = self.rfile.read(length) if length else b""
        if not body.strip():
            return None
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
        try:
            return json.loads(body)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None

    # ---- responses

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        *,
        csp: str = API_CSP,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._security_headers(csp)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _security_headers(self, csp: str) -> None:
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")

    def _send_json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(data, ensure_ascii=False).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _send_text(self, status: HTTPStatus, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    # ---- parameters

    def _param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def _number(self, name: str, default: float, low: float, high: float) -> float:
        text = self._param(name)
        if text is None or text == "":
            return default
        try:
            value = float(text)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be a number") from None
        if not low <= value <= high:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{name} must be {low:g} to {high:g}")
        return value

    def _message(self, message_id: str) -> StoredMessage:
        message = self.catcher.store.get(message_id)
        if message is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no message {message_id!r}")
        return message

    def _listing(self, messages: list[StoredMessage], total: int) -> dict[str, Any]:
        """Mailpit's ``MessagesSummary``: newest first, ``start`` and ``limit`` applied."""
        start = int(self._number("start", 0, 0, 1e9))
        limit = int(self._number("limit", DEFAULT_LIMIT, 0, 1e9)) or DEFAULT_LIMIT
        newest_first = messages[::-1]
        page = newest_first[start : start + limit]
        tags = sorted({tag for m in messages for tag in tags_of(m)})
        return {
            "total": total,
            "unread": 0,
            "count": len(page),
            "messages_count": len(messages),
            "start": start,
            "tags": tags,
            "messages": [message_summary(m) for m in page],
        }

    # ---- the page

    def page(self, args: list[str]) -> None:
        self._static("index.html")

    def static(self, args: list[str]) -> None:
        self._static(args[0])

    def _static(self, name: str) -> None:
        body = self.catcher.static_files.get(name)
        if body is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")
        kind = STATIC_TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        csp = PAGE_CSP if name.endswith(".html") else API_CSP
        self._send(HTTPStatus.OK, body, kind, csp=csp)

    # ---- probes

    def livez(self, args: list[str]) -> None:
        self._send_text(HTTPStatus.OK, "ok")

    def readyz(self, args: list[str]) -> None:
        if self.catcher.ready():
            self._send_text(HTTPStatus.OK, "ok")
        else:
            self._send_text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready")

    # ---- the API

    def info(self, args: list[str]) -> None:
        catcher = self.catcher
        self._send_json(
            {
                "Version": catcher.version,
                "Messages": len(catcher.store.snapshot()),
                "MaxMessages": catcher.store.max_messages,
                "MaxAge": catcher.store.max_age,
                "Release": catcher.allow_release,
            }
        )

    def list_messages(self, args: list[str]) -> None:
        messages = self.catcher.store.snapshot()
        self._send_json(self._listing(messages, len(messages)))

    def search(self, args: list[str]) -> None:
        everything = self.catcher.store.snapshot()
        self._send_json(self._listing(self._search(everything), len(everything)))

    def _search(self, messages: list[StoredMessage]) -> list[StoredMessage]:
        text = self._param("query", "") or ""
        if not text.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "query is empty")
        query = parse_query(text)
        return [m for m in messages if query.matches(m)]

    def get_message(self, args: list[str]) -> None:
        self._send_json(message_detail(self._message(args[0])))

    def get_headers(self, args: list[str]) -> None:
        self._send_json(message_headers(self._message(args[0])))

    def get_raw(self, args: list[str]) -> None:
        message = self._message(args[0])
        extra = {}
        if self._param("dl") not in (None, "", "0"):
            extra["Content-Disposition"] = _disposition(f"{message.id}.eml")
        self._send(HTTPStatus.OK, message.raw, "text/plain; charset=utf-8", extra=extra)

    def get_part(self, args: list[str]) -> None:
        message = self._message(args[0])
        part = find_part(message, args[1])
        if part is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no part {args[1]!r} in {message.id}")
        kind = part.content_type
        if not _is_token_pair(kind):
            kind = "application/octet-stream"
        charset = part.charset
        if part.content_type.startswith("text/") and charset and _is_token(charset):
            kind += f"; charset={charset}"
        name = part.filename or f"{message.id}-part-{part.part_id}"
        extra = {"Content-Disposition": _disposition(name)}
        self._send(HTTPStatus.OK, part.payload(), kind, extra=extra)

    def delete_messages(self, args: list[str]) -> None:
        body = self._json_body()
        ids: list[str] | None = None
        if body is not None:
            if not isinstance(body, dict):
                raise HttpError(HTTPStatus.BAD_REQUEST, 'send {"IDs": [...]}')
            given = body.get("IDs", body.get("ids"))
            if given is not None and (
                not isinstance(given, list) or not all(isinstance(i, str) for i in given)
            ):
                raise HttpError(HTTPStatus.BAD_REQUEST, "IDs must be a list of strings")
            ids = given or None  # Mailpit: no IDs deletes everything
        self.catcher.store.remove(ids)
        self._send_text(HTTPStatus.OK, "ok")

    def delete_message(self, args: list[str]) -> None:
        message = self._message(args[0])
        self.catcher.store.remove([message.id])
        self._send_text(HTTPStatus.OK, "ok")

    def delete_search(self, args: list[str]) -> None:
        found = self._search(self.catcher.store.snapshot())
        self.catcher.store.remove([m.id for m in found])
        self._send_text(HTTPStatus.OK, "ok")

    def wait(self, args: list[str]) -> None:
        """Long poll: the messages matching ``from``/``to``/``subject`` (envelope sender,
        envelope recipient, Subject substring, as `MemoryHandler.wait_for` matches) once at
        least ``count`` are there, oldest first; 408 after ``timeout`` seconds."""
        count = int(self._number("count", 1, 1, 100_000))
        timeout = self._number("timeout", 5.0, 0, MAX_WAIT)
        filters = {
            "sender": self._param("from"),
            "recipient": self._param("to"),
            "subject": self._param("subject"),
        }
        deadline = time.monotonic() + timeout
        handler = self.catcher.store.handler
        while True:
            left = deadline - time.monotonic()
            try:
                found = handler.wait_for(count, max(0.0, min(left, WAIT_SLICE)), **filters)
            except TimeoutError as exc:
                if self.catcher.stopping:
                    raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "stopping") from None
                if left <= WAIT_SLICE:
                    text = re.sub(r"after [^ ]+ s;", f"after {timeout:g} s;", str(exc), count=1)
                    raise HttpError(HTTPStatus.REQUEST_TIMEOUT, text) from None
                continue
            self._send_json({"count": len(found), "messages": [message_summary(m) for m in found]})
            return

    def release(self, args: list[str]) -> None:
        if not self.catcher.allow_release:
            raise HttpError(
                HTTPStatus.FORBIDDEN, "release is off (Catcher(..., allow_release=True))"
            )
        message = self._message(args[0])
        body = self._json_body()
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, 'send {"To": [...], "Host": ..., "Port": ...}')
        to, host, port = body.get("To"), body.get("Host", "localhost"), body.get("Port", 25)
        sender = body.get("From", message.sender)
        if not isinstance(to, list) or not to or not all(_is_address(a) for a in to):
            raise HttpError(HTTPStatus.BAD_REQUEST, "To must be a non-empty list of addresses")
        if not isinstance(sender, str) or (sender and not _is_address(sender)):
            raise HttpError(HTTPStatus.BAD_REQUEST, "From must be an address")
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise HttpError(HTTPStatus.BAD_REQUEST, "Host must be a host name or address")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Port must be 1 to 65535")
        options = ["SMTPUTF8"] if message.smtputf8 else []
        try:
            with smtplib.SMTP(host, port, timeout=self.catcher.release_timeout) as client:
                refused = client.sendmail(sender, to, message.raw, mail_options=options)
        except (smtplib.SMTPException, OSError) as exc:
            raise HttpError(HTTPStatus.BAD_GATEWAY, f"release failed: {exc}") from None
        self._send_json({"Refused": {rcpt: reply[0] for rcpt, reply in refused.items()}})

    def events(self, args: list[str]) -> None:
        """Server-sent events: ``new`` with a summary, ``deleted`` with ``{"IDs": [...]}``,
        ``reset`` when this stream fell behind (reload the list)."""
        hub = self.catcher.hub
        subscriber = hub.subscribe()
        if subscriber is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "stopping")
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self._security_headers(API_CSP)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"retry: 2000\n: connected\n\n")
            while True:
                frames = subscriber.take(self.catcher.keepalive)
                if frames is None:
                    return
                self.wfile.write(b"".join(frames) if frames else b": keepalive\n\n")
        except OSError:
            return  # the client went away (or stalled past the socket timeout)
        finally:
            hub.unsubscribe(subscriber)


_ROUTES: list[tuple[str, tuple[str, ...], Route]] = [
    ("GET", ("",), RequestHandler.page),
    ("GET", ("index.html",), RequestHandler.page),
    ("GET", ("static", "*"), RequestHandler.static),
    ("GET", ("livez",), RequestHandler.livez),
    ("GET", ("readyz",), RequestHandler.readyz),
    ("GET", ("api", "v1", "info"), RequestHandler.info),
    ("GET", ("api", "v1", "messages"), RequestHandler.list_messages),
    ("DELETE", ("api", "v1", "messages"), RequestHandler.delete_messages),
    ("GET", ("api", "v1", "search"), RequestHandler.search),
    ("DELETE", ("api", "v1", "search"), RequestHandler.delete_search),
    ("GET", ("api", "v1", "wait"), RequestHandler.wait),
    ("GET", ("api", "v1", "events"), RequestHandler.events),
    ("GET", ("api", "v1", "message", "*"), RequestHandler.get_message),
    ("DELETE", ("api", "v1", "message", "*"), RequestHandler.delete_message),
    ("GET", ("api", "v1", "message", "*", "headers"), RequestHandler.get_headers),
    ("GET", ("api", "v1", "message", "*", "raw"), RequestHandler.get_raw),
    ("GET", ("api", "v1", "message", "*", "part", "*"), RequestHandler.get_part),
    ("POST", ("api", "v1", "message", "*", "release"), RequestHandler.release),
]


def _route(method: str, segments: list[str]) -> tuple[Route, list[str]]:
    if len(segments) > 1 and segments[-1] == "":  # a trailing slash
        segments = segments[:-1]
    allowed = False
    for route_method, pattern, route in _ROUTES:
        if len(pattern) != len(segments):
            continue
        args = [s for p, s in zip(pattern, segments, strict=True) if p == "*"]
        if all(p in ("*", s) for p, s in zip(pattern, segments, strict=True)) and all(args):
            if route_method == method:
                return route, args
            allowed = True
    if allowed:
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here")
    raise HttpError(HTTPStatus.NOT_FOUND, "not found")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_token(text: str) -> bool:
    return bool(text) and all(c.isascii() and (c.isalnum() or c in "!#$&+-.^_`|~") for c in text)


def _is_token_pair(text: str) -> bool:
    major, slash, minor = text.partition("/")
    return bool(slash) and _is_token(major) and _is_token(minor)


def _is_address(text: object) -> bool:
    return isinstance(text, str) and bool(text) and not any(c.isspace() or c in "<>" for c in text)


def _disposition(filename: str) -> str:
    """``attachment`` with the name as an ASCII fallback and as RFC 5987 UTF-8."""
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
