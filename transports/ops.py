"""Operations: an observer interface the transports report to, Prometheus metrics, and a small
HTTP endpoint for health checks and scraping.

    observer = make_observer()              # Metrics if prometheus-client is installed
    options = ServerOptions(..., observer=observer)
    ops = OpsServer(("0.0.0.0", 9025), observer).start()   # a daemon thread
    ...
    ops.close()

``GET /livez`` answers 200 while the process runs; ``GET /readyz`` 200, or 503 once a stop has
begun (the server is draining: take it out of the load balancer); ``GET /metrics`` the
Prometheus text format (501 without ``prometheus-client``: ``pip install smtpcore[metrics]``).

`Observer` is the interface: `ServerOptions.observer` gets one, and the session driver and the
transports call its methods from their own threads or event loops, so each method must be
quick, must not block, and must be thread-safe. With no observer set (the default) nothing is
called at all. Subclass `Observer` and override what you need to feed another system.

Under `transports.workers` (several processes) the counters live in each worker and the parent
serves them summed: see `Metrics` (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any, cast

__all__ = [
    "HOOK_BUCKETS",
    "Health",
    "Metrics",
    "Observer",
    "OpsServer",
    "make_observer",
    "prometheus_available",
]

_LOG = logging.getLogger("smtpcore.ops")

HOOK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Histogram buckets (seconds) for hook latency: from an in-memory check to a slow upstream."""

_TEXT = "text/plain; charset=utf-8"


class Observer:
    """What a server reports, all no-ops here. Called from the transports' threads or event
    loops: keep overrides quick, non-blocking and thread-safe."""

    def session_started(self) -> None:
        """A client was admitted and its session begins (before the banner)."""

    def session_ended(self) -> None:
        """A session that `session_started` ended, however it ended."""

    def bytes_received(self, count: int) -> None:
        """``count`` octets arrived from a client (after TLS decryption, PROXY header not
        included)."""

    def message_answered(self, code: int) -> None:
        """A message got its final reply: 2xx accepted, 4xx/5xx rejected (once per message;
        in LMTP once per recipient)."""

    def tls_handshake(self, ok: bool) -> None:
        """A STARTTLS or SMTPS handshake ended, well or not."""

    def hook_finished(self, hook: str, seconds: float) -> None:
        """A handler hook (``on_message``...) that the handler overrides took ``seconds``."""

    def connection_refused(self, reason: str) -> None:
        """A connection was closed before any session: ``too-busy`` (421),
        ``proxy-untrusted``, ``proxy-malformed``, ``proxy-timeout``, ``proxy-refused``
        (`Handler.on_proxy` raised), ``proxy-incomplete`` (closed before the header ended),
        ``stopping`` (the server stopped before the header came), ``tls-failed`` (SMTPS)."""

    def stopping(self) -> None:
        """The server began a graceful stop (it drains: stop sending it new clients)."""


class Health(Observer):
    """An observer that only knows whether the server is draining, for ``/readyz``."""

    def __init__(self) -> None:
        self.draining = False

    def stopping(self) -> None:
        self.draining = True

    @property
    def ready(self) -> bool:
        return not self.draining

    def exposition(self) -> bytes | None:
        """Metrics in the Prometheus text format, or None when none are kept."""
        return None


def prometheus_available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Metrics(Health):
    """Prometheus metrics from a server's `Observer` calls (needs ``prometheus-client``).

    Args:
        registry: where to register (a `prometheus_client.CollectorRegistry`); a fresh one by
            default, so several servers in one process do not collide.
        namespace: the metric name prefix.

    In a process started by `transports.workers` with metrics on, ``PROMETHEUS_MULTIPROC_DIR``
    is set: values then go to files there and the supervising process serves their sum (see
    `multiprocess_exposition`); a worker's own registry is not served.

    Metrics (``smtpcore_`` prefix): ``sessions_active`` (gauge), ``sessions_total``,
    ``messages_total{result,code}``, ``received_bytes_total``,
    ``tls_handshakes_total{result}``, ``connections_refused_total{reason}``,
    ``hook_duration_seconds{hook}`` (histogram).
    """

    def __init__(self, registry: Any = None, *, namespace: str = "smtpcore") -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry() if registry is None else registry
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self._active = Gauge(
            "sessions_active",
            "Sessions in progress",
            multiprocess_mode="livesum",
            **common,
        )
        self._sessions = Counter("sessions", "Sessions started", **common)
        self._messages = Counter(
            "messages", "Messages answered, by final reply code", ["result", "code"], **common
        )
        self._bytes = Counter("received_bytes", "Octets received from clients", **common)
        self._tls = Counter("tls_handshakes", "TLS handshakes, by result", ["result"], **common)
        self._refused = Counter(
            "connections_refused", "Connections closed before a session", ["reason"], **common
        )
        self._hooks = Histogram(
            "hook_duration_seconds",
            "Time spent in handler hooks",
            ["hook"],
            buckets=HOOK_BUCKETS,
            **common,
        )
        # Label children looked up once: .labels() costs a lock and a dict lookup per call.
        self._accepted = self._messages.labels("accepted", "250")
        self._tls_ok, self._tls_failed = self._tls.labels("ok"), self._tls.labels("failed")

    def session_started(self) -> None:
        self._sessions.inc()
        self._active.inc()

    def session_ended(self) -> None:
        self._active.dec()

    def bytes_received(self, count: int) -> None:
        self._bytes.inc(count)

    def message_answered(self, code: int) -> None:
        if code == 250:
            self._accepted.inc()
        else:
            result = "accepted" if code < 400 else "rejected"
            self._messages.labels(result, str(code)).inc()

    def tls_handshake(self, ok: bool) -> None:
        (self._tls_ok if ok else self._tls_failed).inc()

    def hook_finished(self, hook: str, seconds: float) -> None:
        self._hooks.labels(hook).observe(seconds)

    def connection_refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def multiprocess_exposition(path: str) -> bytes:
    """The summed metrics of every process that wrote to ``path`` (prometheus-client's
    multiprocess mode), in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def make_observer(logger: logging.Logger = _LOG) -> Health:
    """`Metrics` when ``prometheus-client`` is installed, else a `Health` (``/livez`` and
    ``/readyz`` work, ``/metrics`` answers 501) and a warning."""
    if prometheus_available():
        return Metrics()
    logger.warning("prometheus-client is not installed: /metrics is off (pip install "
                   "'smtpcore[metrics]')")  # fmt: skip
    return Health()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = 5.0  # a client that sends no request line in time is dropped
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        ops = self.server.ops
        path = self.path.split("?", 1)[0]
        if path == "/livez":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            ready = ops.ready()
            self._answer(200 if ready else 503, b"ready\n" if ready else b"draining\n")
        elif path == "/metrics":
            try:
                body = ops.metrics()
            except Exception as exc:  # a metrics bug must not take health checks down
                _LOG.error("metrics exposition failed: %r", exc, exc_info=exc)
                self._answer(500, b"metrics failed\n")
                return
            if body is None:
                self._answer(501, b"prometheus-client is not installed\n")
            else:
                self._answer(200, body, "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._answer(404, b"not found: try /livez, /readyz, /metrics\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _answer(self, status: int, body: bytes, kind: str = _TEXT) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(http.server.HTTPServer):
    allow_reuse_address = True
    ops: OpsServer


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, _HTTPServer):
    daemon_threads = True


class OpsServer:
    """``/livez``, ``/readyz`` and ``/metrics`` over HTTP (stdlib `http.server`).

    Args:
        address: ``(host, port)`` to listen on; port 0 picks a free one (see `address`).
        health: what ``/readyz`` and ``/metrics`` report: a `Health` or `Metrics`; or give
            ``ready`` and ``metrics`` callables instead (as `transports.workers` does).

    `start` serves in a daemon thread (and one per request); with ``threaded=False``, call
    `serve_once` from your own loop instead: no thread is ever started (the supervisor of
    `transports.workers` forks, which a process with threads should not do).
    """

    def __init__(
        self,
        address: tuple[str, int],
        health: Health | None = None,
        *,
        ready: Callable[[], bool] | None = None,
        metrics: Callable[[], bytes | None] | None = None,
        threaded: bool = True,
    ) -> None:
        if health is not None:
            ready = ready or (lambda: health.ready)
            metrics = metrics or health.exposition
        self.ready: Callable[[], bool] = ready or (lambda: True)
        self.metrics: Callable[[], bytes | None] = metrics or (lambda: None)
        host = address[0].removeprefix("[").removesuffix("]")
        kind: type[_HTTPServer] = _ThreadingHTTPServer if threaded else _HTTPServer
        if ":" in host:
            kind = cast(
                "type[_HTTPServer]",
                type(f"{kind.__name__}6", (kind,), {"address_family": socket.AF_INET6}),
            )
        self._http = kind((host, address[1]), _Handler)
        self._http.ops = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        name = self._http.server_address
        return str(name[0]), int(name[1])

    def forget(self) -> None:
        """Close our copy of the listening socket without any shutdown: in a forked child,
        which must neither serve nor keep the port."""
        os.close(self._http.socket.detach())

    def start(self) -> OpsServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.2,), name="smtpcore-ops", daemon=True
        )
        self._thread.start()
        _LOG.info("ops endpoint on http://%s:%d/ (livez, readyz, metrics)", *self.address)
        return self

    def serve_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a request and handle it."""
        self._http.timeout = timeout
        self._http.handle_request()

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

    def __enter__(self) -> OpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` if set (this process is a worker, or its supervisor)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
