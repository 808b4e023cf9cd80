"""`Catcher`: the mail catcher's HTTP server, run in a thread beside any transport's SMTP server.

It uses the standard library only (`http.server.ThreadingHTTPServer`, one thread per request),
so it runs the same beside the threads, asyncio, trio and anyio transports: it shares nothing
with their event loops, only the `MemoryHandler`, which is thread-safe.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from importlib import resources
from types import TracebackType

from smtpcore import __version__
from transports.handlers.memory import MemoryHandler

from ._events import EventHub, Watcher
from ._http import RequestHandler
from ._store import Store
from ._views import message_summary

__all__ = ["Catcher"]

VERSION = __version__
_LOG = logging.getLogger("smtpcore.catcher")


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # stop() waits for the request threads: each ends within seconds


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class Catcher:
    """A web page and a Mailpit-like JSON API over a `MemoryHandler`'s messages.

    Example::

        mail = MemoryHandler()
        with ServerThread("asyncio", mail, port=0) as smtp, Catcher(mail, port=8025) as web:
            print(f"SMTP on {smtp.address}, messages at {web.url}")

    Args:
        handler: the handler the SMTP server delivers to (the one store: the catcher shows,
            deletes and prunes its messages, and ``handler.wait_for`` sees the same).
        host: the address to listen on; a loopback one (the default) keeps it private.
        port: the TCP port; 0 (the default) picks a free one, see `address`.
        max_messages: keep at most this many messages, the oldest dropped first.
        max_age: drop messages received more than this many seconds ago.
        allow_release: serve ``POST /api/v1/message/{id}/release`` (relay a message to the SMTP
            server the request names). Off by default: it would let whoever reaches the
            catcher send mail anywhere the catcher can connect to.
        keepalive: seconds between keep-alive comments on idle event streams.
        ready: called by ``GET /readyz`` (with the catcher's own state) e.g. to report the
            SMTP server's state too.

    Retention applies as messages arrive (the catcher wakes on each delivery), at least every
    ``watch_interval`` seconds while messages are kept with ``max_age``, and before every API
    answer, so the API never shows more than the limits allow.
    """

    def __init__(
        self,
        handler: MemoryHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        max_messages: int | None = None,
        max_age: float | None = None,
        *,
        allow_release: bool = False,
        release_timeout: float = 30.0,
        keepalive: float = 15.0,
        watch_interval: float = 0.5,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.store = Store(handler, max_messages=max_messages, max_age=max_age)
        self.host = host.removeprefix("[").removesuffix("]")
        self.port = port
        self.allow_release = allow_release
        self.release_timeout = release_timeout
        self.keepalive = keepalive
        self.version = VERSION
        self.hub = EventHub()
        self.static_files = _load_static()
        self._ready_check = ready
        self._watch_interval = watch_interval
        self._watcher: Watcher | None = None
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stopping = False

    @property
    def handler(self) -> MemoryHandler:
        return self.store.handler

    @property
    def loopback(self) -> bool:
        """Listening on a loopback address only (then only local Host names are served)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) listened on; the real port when 0 was asked for."""
        if self._server is None:
            raise RuntimeError("the catcher is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port`` of the web page (and, below it, the API)."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def ready(self) -> bool:
        if self._server is None or self.stopping:
            return False
        return self._ready_check() if self._ready_check is not None else True

    def prune(self) -> list[str]:
        """Apply ``max_messages`` and ``max_age`` now; returns the ids dropped."""
        return self.store.prune()

    def start(self) -> Catcher:
        """Listen and serve in a daemon thread; returns at once, ready for requests.

        Raises:
            OSError: if the address cannot be listened on.
        """
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the catcher is already started")
            handler = type("CatcherRequestHandler", (RequestHandler,), {"catcher": self})
            cls = _HttpServer6 if ":" in self.host else _HttpServer
            server = cls((self.host, self.port), handler)
            self.stopping = False
            self.store.prune()
            self._watcher = Watcher(
                self.store, self.hub, message_summary, interval=self._watch_interval
            )
            self._watcher.start()
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="smtpcore-catcher-http",
                daemon=True,
            )
            self._thread.start()
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: ends the event streams and long polls, waits for the threads."""
        with self._lock:
            server, thread, watcher = self._server, self._thread, self._watcher
            if server is None or self.stopping:
                return
            self.stopping = True
            self.hub.close()
            server.shutdown()
            server.server_close()  # joins the request threads
            if thread is not None:
                thread.join(timeout)
            if watcher is not None:
                watcher.stop(timeout)

    def __enter__(self) -> Catcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _load_static() -> dict[str, bytes]:
    """The page's files, shipped as package data in ``static/`` (no build step)."""
    folder = resources.files(__package__ or "transports.catcher").joinpath("static")
    if not folder.is_dir():  # an install that left the package data out: the API still works
        _LOG.warning("catcher: no static/ folder beside %s: the web page is missing", __file__)
        return {}
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}
