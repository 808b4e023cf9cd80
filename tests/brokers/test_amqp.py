"""`AmqpHandler` against the real RabbitMQ on 127.0.0.1: what got 250 is in the queue, with its
raw bytes and its envelope; a broker that is unreachable, cut off, hung or refusing gets the
client 451, and nothing that got 250 is ever missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from transports.handlers.amqp import AmqpHandler

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


def _connection(url: str) -> Any:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = parameters.stack_timeout = 5
    parameters.connection_attempts = 1
    return pika.BlockingConnection(parameters)


def drain(url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Every message in the queue (properties, body), consumed, in queue order."""
    connection = _connection(url)
    try:
        channel = connection.channel()
        found = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((properties, body))
    finally:
        connection.close()


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    """A fresh queue name: the handler declares it durable; deleted afterwards."""
    name = new_tag("smtpcore-test")
    yield name
    with suppress(Exception):
        connection = _connection(amqp_url)
        connection.channel().queue_delete(name)
        connection.close()


# ------------------------------------------------------------------ delivery


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_messages_arrive_with_raw_body_and_envelope(
    transport: str, serve: Serve, amqp_url: str, queue_name: str
) -> None:
    handler = AmqpHandler(amqp_url, routing_key=queue_name, publish_timeout=10)
    first, second = new_tag(), new_tag()
    before = datetime.now(UTC)
    with serve(transport, handler) as server, Client(server.address) as client:
        assert client.send(first) == 250
        recipients = ["carol@a.example", "dave@b.example", "erin@a.example"]
        assert client.send(second, sender="", recipients=recipients) == 250
    found = drain(amqp_url, queue_name)
    assert [tag_of(body) for _, body in found] == [first, second]

    properties, body = found[0]
    assert body == message(first)  # byte for byte: dot-unstuffed, 8-bit intact
    assert properties.delivery_mode == 2
    assert properties.content_type == "message/rfc822"
    assert properties.message_id and properties.app_id == "smtpcore"
    headers = properties.headers
    assert headers["sender"] == "alice@example.org"
    assert headers["recipients"] == ["bob@example.net"]
    assert headers["helo"] == HELO
    assert headers["remote_ip"] == "127.0.0.1"
    assert isinstance(headers["remote_port"], int) and headers["remote_port"] > 0
    received = datetime.fromisoformat(headers["received_at"])
    assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)
    assert abs(properties.timestamp - received.timestamp()) <= 1

    properties, body = found[1]
    assert body == message(second, sender="")
    assert properties.headers["sender"] == ""
    assert properties.headers["recipients"] == recipients


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_concurrent_sessions_are_all_confirmed(
    transport: str, serve: Serve, amqp_url: str, queue_name: str
) -> None:
    handler = AmqpHandler(amqp_url, routing_key=queue_name)
    with serve(transport, handler) as server:
        outcomes = send_concurrently(server.address, sessions=4, each=10)
    accepted = [tag for outcome in outcomes for tag in outcome.accepted]
    assert len(accepted) == 40 and not any(outcome.refused for outcome in outcomes)
    assert sorted(tag_of(body) for _, body in drain(amqp_url, queue_name)) == sorted(accepted)


def test_named_exchange_with_declared_queue(serve: Serve, amqp_url: str, queue_name: str) -> None:
    handler = AmqpHandler(
        amqp_url, exchange="amq.direct", routing_key=f"{queue_name}-key", queue=queue_name
    )
    tag = new_tag()
    with serve("threads", handler) as server, Client(server.address) as client:
        assert client.send(tag) == 250
    assert [tag_of(body) for _, body in drain(amqp_url, queue_name)] == [tag]


# ------------------------------------------------------------------ the broker fails


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_unreachable_broker_answers_451_quickly(
    transport: str, serve: Serve, amqp_url: str, queue_name: str
) -> None:
    url = with_port(amqp_url, closed_port())
    handler = AmqpHandler(url, routing_key=queue_name, connect_timeout=2, publish_timeout=5)
    with serve(transport, handler) as server, Client(server.address) as client:
        started = time.monotonic()
        assert client.send(new_tag()) == 451
        assert time.monotonic() - started < 5
        assert client.smtp.noop()[0] == 250  # the session goes on
        assert client.send(new_tag()) == 451


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_mid_run_loses_nothing_acknowledged(
    transport: str,
    serve: Serve,
    amqp_url: str,
    queue_name: str,
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    proxy = tcp_proxy(target_of(amqp_url))
    handler = AmqpHandler(
        with_port(amqp_url, proxy.port),
        routing_key=queue_name,
        connect_timeout=2,
        publish_timeout=5,
    )
    outcome = Outcome()
    with serve(transport, handler) as server, Client(server.address) as client:
        send_all(client, 5, outcome, expect=250)
        proxy.cut()  # the broker is gone: the connection drops, reconnecting fails
        send_all(client, 3, outcome, expect=451)
        proxy.resume()  # back: the handler reconnects by itself
        send_all(client, 5, outcome, expect=250)
    assert len(outcome.accepted) == 10
    in_broker = {tag_of(body) for _, body in drain(amqp_url, queue_name)}
    assert set(outcome.accepted) <= in_broker


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hung_broker_answers_451_in_bounded_time(
    transport: str,
    serve: Serve,
    amqp_url: str,
    queue_name: str,
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    proxy = tcp_proxy(target_of(amqp_url))
    handler = AmqpHandler(
        with_port(amqp_url, proxy.port),
        routing_key=queue_name,
        connect_timeout=2,
        publish_timeout=2,
        heartbeat=60,
    )
    outcome = Outcome()
    with serve(transport, handler) as server, Client(server.address) as client:
        send_all(client, 3, outcome, expect=250)
        proxy.freeze()  # connected, but no confirm comes back
        started = time.monotonic()
        send_all(client, 2, outcome, expect=451)
        assert time.monotonic() - started < 2 * 2 + 2
        proxy.resume()
        send_all(client, 3, outcome, expect=250)
    assert len(outcome.accepted) == 6
    in_broker = {tag_of(body) for _, body in drain(amqp_url, queue_name)}
    # At least once: what got 250 is there; a 451'd message whose confirm came late may be too.
    assert set(outcome.accepted) <= in_broker


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broker_closing_the_connection_is_survived(
    transport: str, serve: Serve, amqp_url: str, queue_name: str
) -> None:
    handler = AmqpHandler(amqp_url, routing_key=queue_name, connect_timeout=2, publish_timeout=5)
    outcome = Outcome()
    with serve(transport, handler) as server, Client(server.address) as client:
        send_all(client, 3, outcome, expect=250)
        subprocess.run(
            ["rabbitmqctl", "close_all_connections", "smtpcore test"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        send_all(client, 3, outcome, expect=250)  # reconnected, nothing refused
    in_broker = [tag_of(body) for _, body in drain(amqp_url, queue_name)]
    assert in_broker == outcome.accepted


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_idle_connection_kept_alive_and_a_dropped_one_noticed(
    serve: Serve, amqp_url: str, queue_name: str
) -> None:
    handler = AmqpHandler(amqp_url, routing_key=queue_name, heartbeat=1)
    outcome = Outcome()
    with serve("threads", handler) as server, Client(server.address) as client:
        send_all(client, 1, outcome, expect=250)
        connection = handler._connection
        assert connection is not None
        # Idle for four heartbeat timeouts: the broker closes a connection whose heartbeats
        # go unanswered, so the same connection still open means the worker answered them.
        time.sleep(4)
        assert handler._connection is connection and connection.is_open
        send_all(client, 1, outcome, expect=250)
        assert handler._connection is connection
        subprocess.run(
            ["rabbitmqctl", "close_all_connections", "smtpcore test"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 10
        while handler._connection is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handler._connection is None  # noticed while idle, not at the next message
        send_all(client, 1, outcome, expect=250)
    assert [tag_of(body) for _, body in drain(amqp_url, queue_name)] == outcome.accepted


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unroutable_message_answers_451(
    transport: str, serve: Serve, amqp_url: str, queue_name: str
) -> None:
    handler = AmqpHandler(amqp_url, exchange="amq.direct", routing_key=f"{queue_name}-nobody")
    with serve(transport, handler) as server, Client(server.address) as client:
        assert client.send(new_tag()) == 451  # returned by the broker: nobody would get it
        assert client.send(new_tag()) == 451


def test_missing_exchange_answers_451(serve: Serve, amqp_url: str, queue_name: str) -> None:
    handler = AmqpHandler(amqp_url, exchange=f"{queue_name}-no-such-exchange", queue="")
    with serve("asyncio", handler) as server, Client(server.address) as client:
        assert client.send(new_tag()) == 451


# ------------------------------------------------------------------ spec


def test_from_spec() -> None:
    handler = AmqpHandler.from_spec(
        "amqp://u:p@127.0.0.1:5673/vh?exchange=mail&routing_key=in&queue=q&publish_timeout=3"
        "&heartbeat=7"
    )
    assert (handler.exchange, handler.routing_key, handler.queue) == ("mail", "in", "q")
    assert handler.publish_timeout == 3.0
    assert handler._parameters.port == 5673 and handler._parameters.virtual_host == "vh"
    assert handler._parameters.heartbeat == handler.heartbeat == 7
    plain = AmqpHandler.from_spec("//127.0.0.1")  # "--handler amqp://127.0.0.1"
    assert plain._parameters.host == "127.0.0.1"
    assert (plain.exchange, plain.routing_key, plain.queue) == ("", "smtpcore", "smtpcore")
    assert plain.heartbeat == 10
    assert AmqpHandler.from_spec(None).url.startswith("amqp://guest:guest@127.0.0.1:5672/")
    with pytest.raises(ValueError):
        AmqpHandler.from_spec("amqp://127.0.0.1/?publish_timeout=soon")


def test_from_spec_without_pika_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pika", None)  # as if not installed
    with pytest.raises(ValueError, match=r"smtpcore\[amqp\]"):
        AmqpHandler.from_spec("amqp://127.0.0.1/")
