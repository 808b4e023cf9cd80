"""Fixtures for the broker hand-off tests: the real RabbitMQ and Redis that ``.ci/services``
starts on 127.0.0.1, a fresh queue/stream per test, SMTP servers on port 0, and `TcpProxy` to
cut or freeze the path to a broker mid-run.

These tests fail (they do not skip) when a broker does not answer: run ``bash .ci/services``
first. ``SMTPCORE_TEST_AMQP_URL`` and ``SMTPCORE_TEST_REDIS_URL`` point them elsewhere on
127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

# Imported outright: a missing client library fails the run rather than skipping it
# (install the extras: pip install -e '.[test,amqp,redis]').
import pika
import pytest
import redis

from transports.controller import ServerThread
from transports.handler import Handler

AMQP_URL = os.environ.get("SMTPCORE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("SMTPCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HINT = "start the brokers with `bash .ci/services` (installs and runs RabbitMQ and Redis)"

pytestmark = pytest.mark.network

Serve = Callable[[str, Handler], AbstractContextManager[ServerThread]]


@pytest.fixture(scope="session")
def amqp_url() -> str:
    parameters = pika.URLParameters(AMQP_URL)
    parameters.socket_timeout = parameters.stack_timeout = 5
    parameters.connection_attempts = 1
    try:
        pika.BlockingConnection(parameters).close()
    except Exception as exc:
        pytest.fail(f"RabbitMQ not reachable at {AMQP_URL}: {exc!r}; {HINT}", pytrace=False)
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis not reachable at {REDIS_URL}: {exc!r}; {HINT}", pytrace=False)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def amqp(amqp_url: str) -> Iterator[Any]:
    """A blocking channel of the test's own, to look at queues and consume."""
    parameters = pika.URLParameters(amqp_url)
    parameters.socket_timeout = parameters.stack_timeout = 5
    connection = pika.BlockingConnection(parameters)
    yield connection.channel()
    with suppress(Exception):
        connection.close()


@pytest.fixture
def queue_name(amqp: Any) -> Iterator[str]:
    """A fresh durable queue name (the handler declares it); deleted afterwards."""
    name = f"smtpcore-test-{uuid.uuid4().hex[:12]}"
    yield name
    with suppress(Exception):
        amqp.queue_delete(name)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def stream_name(redis_client: Any) -> Iterator[str]:
    name = f"smtpcore-test-{uuid.uuid4().hex[:12]}"
    yield name
    with suppress(Exception):
        redis_client.delete(name)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``with serve("asyncio", handler) as server:`` runs an SMTP server on 127.0.0.1:0; the
    handler is closed (its broker connection too) when the test ends."""
    handlers: list[Any] = []

    @contextmanager
    def start(transport: str, handler: Handler) -> Iterator[ServerThread]:
        handlers.append(handler)
        with ServerThread(transport, handler, host="127.0.0.1", port=0) as server:
            yield server

    yield start
    for handler in handlers:
        with suppress(Exception):
            handler.close()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of a broker, to break the path on purpose.

    `cut` closes every relayed connection and refuses new ones (they are closed at once) until
    `resume`; `freeze` keeps connections open but stops relaying (a broker that hangs) until
    `resume`.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._down = threading.Event()
        self._frozen = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def cut(self) -> None:
        self._down.set()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def freeze(self) -> None:
        self._frozen.set()

    def resume(self) -> None:
        self._down.clear()
        self._frozen.clear()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            self._spawn(self._relay, client, upstream)
            self._spawn(self._relay, upstream, client)

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.2)
        while not self._stopped.is_set():
            if self._frozen.is_set():
                self._stopped.wait(0.05)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            while self._frozen.is_set() and not self._stopped.is_set():
                self._stopped.wait(0.05)  # hold what arrived as the freeze began
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[tuple[str, int]], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target: tuple[str, int]) -> TcpProxy:
        proxies.append(TcpProxy(target))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
