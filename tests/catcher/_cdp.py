"""Headless Chromium driven over the Chrome DevTools Protocol, with the standard library only.

`Browser` starts ``chromium --headless --remote-debugging-port=0`` in a temporary profile, reads
the port it chose from ``DevToolsActivePort``, and opens the first page's WebSocket with a
minimal client (RFC 6455 text frames, client-masked, no extensions). Every call is bounded by
a timeout and `Browser.close` kills the browser's process group, so no test leaves one behind.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "Browser", "CdpError", "chromium_path"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the suite runs as root (as CI does)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1200,800",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class CdpError(Exception):
    pass


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _WebSocket:
    def __init__(self, host: str, port: int, path: str, timeout: float) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise CdpError("the WebSocket handshake was cut")
            head += chunk
        head, _, self._buffer = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise CdpError(f"WebSocket handshake refused: {head[:200]!r}")

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytearray([0x81])  # FIN, text
        length = len(payload)
        if length < 126:
            header.append(0x80 | length)
        elif length < 1 << 16:
            header.append(0x80 | 126)
            header += struct.pack("!H", length)
        else:
            header.append(0x80 | 127)
            header += struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(bytes(header) + mask + masked)

    def receive(self, timeout: float) -> str:
        """The next text message (pings answered, fragments joined)."""
        self._sock.settimeout(timeout)
        parts: list[bytes] = []
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if second & 0x80 else b""
            data = self._read(length)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise CdpError("the browser closed the DevTools connection")
            if opcode == 0x9:  # ping: answer with a (masked) pong
                self._sock.sendall(bytes([0x8A, 0x80 | len(data)]) + b"\0\0\0\0" + data)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(data)
                if first & 0x80:
                    return b"".join(parts).decode()

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise CdpError("the DevTools connection was closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(bytes([0x88, 0x80]) + b"\0\0\0\0")
        self._sock.close()


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, profile: Path, timeout: float = 20.0) -> None:
        executable = chromium_path()
        if executable is None:
            raise CdpError("no chromium on PATH (apt-get install -y chromium)")
        self.timeout = timeout
        self._profile = profile
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a stale one from a reuse
        self._log = (profile / "chromium.log").open("wb")
        self._process = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: close() ends the renderers too
        )
        self._next_id = 0
        self._ws: _WebSocket | None = None
        self.events: list[dict[str, Any]] = []
        try:
            self._ws = self._connect()
            self.send(  # out-of-process frames become sessions that can be inspected
                "Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True
            )
            self.send("Page.enable")
        except BaseException:
            self.close()
            raise

    def _connect(self) -> _WebSocket:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise CdpError(f"chromium did not start: {self.log_tail()}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        while True:  # the page target appears shortly after the port
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/json/list")
                targets = json.loads(conn.getresponse().read())
            finally:
                conn.close()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise CdpError("chromium shows no page target")
            time.sleep(0.05)
        path = "/" + pages[0]["webSocketDebuggerUrl"].split("/", 3)[3]
        return _WebSocket("127.0.0.1", port, path, self.timeout)

    def log_tail(self) -> str:
        self._log.flush()
        return (self._profile / "chromium.log").read_text(errors="replace")[-2000:]

    # ---- the protocol

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Call ``method`` (in a frame's ``session`` if given) and return its result; events
        that arrive meanwhile are kept in `events`."""
        if self._ws is None:
            raise CdpError("not connected")
        self._next_id += 1
        call_id = self._next_id
        request: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if session is not None:
            request["sessionId"] = session
        self._ws.send(json.dumps(request))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"{method}: no answer in {self.timeout} s")
            message = json.loads(self._ws.receive(left))
            if message.get("id") == call_id:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"still false after {timeout} s: {expression}")
            time.sleep(0.05)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def document_texts(self, session: str | None = None) -> list[str]:
        """Every text node of the page's document (or of a frame's, given its session)."""
        root = self.send("DOM.getDocument", session, depth=-1, pierce=True)["root"]
        texts: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if node.get("nodeType") == 3:
                texts.append(node.get("nodeValue", ""))
            for key in ("children", "shadowRoots"):
                for child in node.get(key, []):
                    walk(child)
            if "contentDocument" in node:
                walk(node["contentDocument"])

        walk(root)
        return texts

    def frame_session(self, timeout: float = 10.0) -> str:
        """The DevTools session of the newest out-of-process iframe (a sandboxed frame has an
        opaque origin, so Chromium renders it in a process of its own)."""
        deadline = time.monotonic() + timeout
        while True:
            attached = [
                event["params"]
                for event in self.events
                if event.get("method") == "Target.attachedToTarget"
                and event["params"]["targetInfo"]["type"] == "iframe"
            ]
            detached = {
                event["params"]["sessionId"]
                for event in self.events
                if event.get("method") == "Target.detachedFromTarget"
            }
            live = [a["sessionId"] for a in attached if a["sessionId"] not in detached]
            if live:
                return str(live[-1])
            if time.monotonic() > deadline:
                raise CdpError("no iframe target attached")
            self.evaluate("0")  # let events arrive
            time.sleep(0.05)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the whole group: renderers too
            try:
                os.killpg(self._process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._process.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
