"""`RedisStreamHandler` against real Redis servers on 127.0.0.1: what got 250 is in the stream,
with its raw bytes and envelope; a Redis that is unreachable, cut off, hung or stopped gets
the client 451, and nothing that got 250 is ever missing -- even across a Redis stopped with
``SHUTDOWN NOSAVE`` or killed outright, given ``appendfsync always``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from transports.handlers.redis_stream import RedisStreamHandler

from ._support import (
    ALL_TRANSPORTS,
    HELO,
    TRANSPORTS,
    Client,
    Outcome,
    message,
    new_tag,
    send_all,
    send_concurrently,
    tag_of,
)
from .conftest import Serve, TcpProxy, closed_port


def entries(client: Any, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in client.xrange(stream)]


def tags_in(client: Any, stream: str) -> list[str]:
    return [tag_of(fields[b"message"]) for fields in entries(client, stream)]


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


class OwnRedis:
    """A redis-server of the test's own (its port, its directory), to stop and start again.

    Every write is appended to the AOF and fsynced before Redis answers (``appendfsync
    always``), so an acknowledged XADD survives ``SHUTDOWN NOSAVE`` and SIGKILL alike.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not installed: run `bash .ci/services`", pytrace=False)
        self.binary = binary
        self.directory = directory
        self.port = closed_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "protected-mode": "yes",
            "dir": str(self.directory),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "logfile": str(self.directory / "redis.log"),
        }
        arguments = [part for key, value in settings.items() for part in (f"--{key}", value)]
        self.process = subprocess.Popen(
            [self.binary, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"own redis-server did not start:\n{log}", pytrace=False)
                time.sleep(0.05)
        finally:
            client.close()

    def shutdown_nosave(self) -> None:
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "shutdown", "nosave"],
            capture_output=True,
            timeout=15,
        )
        self._wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._wait()

    def _wait(self) -> None:
        if self.process is not None:
            self.process.wait(15)

    def client(self) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


# ------------------------------------------------------------------ delivery


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_messages_arrive_with_raw_body_and_envelope(
    transport: str, serve: Serve, redis_url: str, redis_client: Any, stream_name: str
) -> None:
    handler = RedisStreamHandler(redis_url, stream=stream_name)
    first, second = new_tag(), new_tag()
    before = datetime.now(UTC)
    with serve(transport, handler) as server, Client(server.address) as client:
        assert client.send(first) == 250
        recipients = ["carol@a.example", "dave@b.example", "erin@a.example"]
        assert client.send(second, sender="", recipients=recipients) == 250
    found = entries(redis_client, stream_name)
    assert len(found) == 2

    fields = found[0]
    assert fields[b"message"] == message(first)  # byte for byte
    assert fields[b"sender"] == b"alice@example.org"
    assert json.loads(fields[b"recipients"]) == ["bob@example.net"]
    assert fields[b"helo"] == HELO.encode()
    assert fields[b"remote_ip"] == b"127.0.0.1"
    assert int(fields[b"remote_port"]) > 0
    received = datetime.fromisoformat(fields[b"received_at"].decode())
    assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)

    fields = found[1]
    assert fields[b"message"] == message(second, sender="")
    assert fields[b"sender"] == b""
    assert json.loads(fields[b"recipients"]) == recipients


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_concurrent_sessions_are_all_added(
    transport: str, serve: Serve, redis_url: str, redis_client: Any, stream_name: str
) -> None:
    handler = RedisStreamHandler(redis_url, stream=stream_name)
    with serve(transport, handler) as server:
        outcomes = send_concurrently(server.address, sessions=4, each=10)
    accepted = [tag for outcome in outcomes for tag in outcome.accepted]
    assert len(accepted) == 40 and not any(outcome.refused for outcome in outcomes)
    assert sorted(tags_in(redis_client, stream_name)) == sorted(accepted)


def test_maxlen_trims_the_stream(
    serve: Serve, redis_url: str, redis_client: Any, stream_name: str
) -> None:
    handler = RedisStreamHandler(redis_url, stream=stream_name, maxlen=3, approximate=False)
    outcome = Outcome()
    with serve("threads", handler) as server, Client(server.address) as client:
        send_all(client, 6, outcome, expect=250)
    assert tags_in(redis_client, stream_name) == outcome.accepted[-3:]


# ------------------------------------------------------------------ Redis fails


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_unreachable_redis_answers_451_quickly(
    transport: str, serve: Serve, stream_name: str
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    handler = RedisStreamHandler(url, stream=stream_name, timeout=2)
    with serve(transport, handler) as server, Client(server.address) as client:
        started = time.monotonic()
        assert client.send(new_tag()) == 451
        assert time.monotonic() - started < 5
        assert client.smtp.noop()[0] == 250  # the session goes on
        assert client.send(new_tag()) == 451


@pytest.mark.parametrize("stop", ["shutdown nosave", "kill -9"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_redis_stopped_mid_run_loses_nothing_acknowledged(
    transport: str, stop: str, serve: Serve, own_redis: OwnRedis
) -> None:
    handler = RedisStreamHandler(own_redis.url, stream="inbound", timeout=2)
    outcome = Outcome()
    with serve(transport, handler) as server, Client(server.address) as client:
        send_all(client, 5, outcome, expect=250)
        if stop == "shutdown nosave":
            own_redis.shutdown_nosave()
        else:
            own_redis.kill()
        started = time.monotonic()
        send_all(client, 3, outcome, expect=451)
        assert time.monotonic() - started < 3 * (2 * 2 + 1)
        own_redis.start()  # same port, same directory: the AOF is replayed
        send_all(client, 5, outcome, expect=250)  # the handler reconnects by itself
    assert len(outcome.accepted) == 10
    check = own_redis.client()
    try:
        assert tags_in(check, "inbound") == outcome.accepted
    finally:
        check.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_mid_run_loses_nothing_acknowledged(
    transport: str,
    serve: Serve,
    redis_url: str,
    redis_client: Any,
    stream_name: str,
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    proxy = tcp_proxy(target_of(redis_url))
    url = f"redis://127.0.0.1:{proxy.port}/{urlsplit(redis_url).path.strip('/') or 0}"
    handler = RedisStreamHandler(url, stream=stream_name, timeout=2)
    outcome = Outcome()
    with serve(transport, handler) as server, Client(server.address) as client:
        send_all(client, 5, outcome, expect=250)
        proxy.cut()
        send_all(client, 3, outcome, expect=451)
        proxy.resume()
        send_all(client, 5, outcome, expect=250)
    assert len(outcome.accepted) == 10
    assert set(outcome.accepted) <= set(tags_in(redis_client, stream_name))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hung_redis_answers_451_in_bounded_time(
    transport: str,
    serve: Serve,
    redis_url: str,
    redis_client: Any,
    stream_name: str,
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    proxy = tcp_proxy(target_of(redis_url))
    url = f"redis://127.0.0.1:{proxy.port}/{urlsplit(redis_url).path.strip('/') or 0}"
    handler = RedisStreamHandler(url, stream=stream_name, timeout=1)
    outcome = Outcome()
    with serve(transport, handler) as server, Client(server.address) as client:
        send_all(client, 3, outcome, expect=250)
        proxy.freeze()
        started = time.monotonic()
        send_all(client, 2, outcome, expect=451)
        assert time.monotonic() - started < 2 * (2 * 1 + 1) + 1
        proxy.resume()
        send_all(client, 3, outcome, expect=250)
    assert len(outcome.accepted) == 6
    # At least once: what got 250 is there; a 451'd XADD that Redis applied late may be too.
    assert set(outcome.accepted) <= set(tags_in(redis_client, stream_name))


# ------------------------------------------------------------------ spec


def test_from_spec() -> None:
    handler = RedisStreamHandler.from_spec(
        "redis://127.0.0.1:6390/2?stream=inbound&maxlen=1000&timeout=3&client_name=smtp"
    )
    assert (handler.stream, handler.maxlen, handler.timeout) == ("inbound", 1000, 3.0)
    kwargs = handler.client.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"], kwargs["client_name"]) == (6390, 2, "smtp")
    assert kwargs["socket_timeout"] == 3.0
    plain = RedisStreamHandler.from_spec("//127.0.0.1:6391")  # "--handler redis://..."
    assert plain.client.connection_pool.connection_kwargs["port"] == 6391
    assert (plain.stream, plain.maxlen) == ("smtpcore", None)
    assert RedisStreamHandler.from_spec(None).url == "redis://127.0.0.1:6379/0"
    for bad in ("redis://127.0.0.1/?maxlen=many", "redis://127.0.0.1/?maxlen=0"):
        with pytest.raises(ValueError):
            RedisStreamHandler.from_spec(bad)


def test_from_spec_without_redis_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed
    with pytest.raises(ValueError, match=r"smtpcore\[redis\]"):
        RedisStreamHandler.from_spec("redis://127.0.0.1/")
