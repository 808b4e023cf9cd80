"""`AmqpHandler`: hands each message to an AMQP 0-9-1 broker (RabbitMQ) before answering 250.

Optional extra: ``pip install 'smtpcore[amqp]'`` (the ``pika`` client). ``--handler
amqp:amqp://user:pass@host:5672/vhost?exchange=mail&routing_key=inbound`` on the command line.

The client is answered 250 only once the broker has *confirmed* the message (publisher
confirms): persistent, routed (``mandatory``: a message no queue would take is refused too)
and, for durable queues, written to disk. Anything else -- broker unreachable, connection lost,
no confirm within ``publish_timeout``, nack, unroutable -- answers 451 4.3.0, and the client
tries again later. Delivery is therefore at-least-once: a message that reached the broker
after its client was told 451 (a confirm arriving too late) is published again when the client
retries; the ``message_id`` property differs, the ``Message-ID`` header does not.

The message body is the raw message as received (``ctx.message.as_bytes()``: what the client
sent after DATA/BDAT, plus headers hooks added); the envelope travels in the AMQP headers
table: ``sender`` (``""`` for ``<>``), ``recipients`` (an array), ``helo``, ``remote_ip``,
``remote_port`` and ``received_at`` (ISO 8601, UTC).

One AMQP connection per handler, used only by the handler's own worker thread: every publish
goes through it in turn, it reconnects after any failure (once per message) and keeps the
connection's heartbeats while idle. The hook itself never blocks an event loop: under the
asyncio, trio and anyio transports it hands back an awaitable; under the threads transport it
waits in the session's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Collection, Coroutine
from queue import Empty, SimpleQueue
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from transports._blocking import event_loop_library
from transports.errors import Smtp451Error, SmtpError
from transports.handler import Handler, Session

__all__ = ["DEFAULT_URL", "AmqpHandler", "envelope_of", "split_query", "wait_for_hand_off"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_LOG = logging.getLogger("smtpcore.handlers.amqp")
_OUR_QUERY_KEYS = ("exchange", "routing_key", "queue", "publish_timeout", "connect_timeout")


def split_query(url: str, ours: Collection[str]) -> tuple[str, dict[str, str]]:
    """Take the query parameters named in ``ours`` out of ``url`` (for a handler's options);
    the rest stay in the URL for the client library."""
    parts = urlsplit(url)
    mine: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ours:
            mine[key] = value
        else:
            theirs.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), mine


def envelope_of(ctx: Session) -> dict[str, Any]:
    """The envelope and session facts that travel with a message handed to a broker."""
    received = ctx.message.received_at
    return {
        "sender": ctx.sender or "",
        "recipients": list(ctx.recipients),
        "helo": ctx.helo,
        "remote_ip": ctx.remote_ip,
        "remote_port": ctx.remote_port,
        "received_at": received.isoformat() if received is not None else None,
    }


class AmqpHandler(Handler):
    """Publishes every message to an AMQP exchange, with publisher confirms.

    Args:
        url: the broker, as pika's `URLParameters` takes it (``amqp://`` or ``amqps://``).
        exchange: the exchange (``""``, the default exchange, routes to the queue named
            ``routing_key``).
        routing_key: the routing key of every message.
        queue: a durable queue to make sure of on each (re)connect: left as it is if it exists,
            created durable if not, and bound to ``exchange`` with ``routing_key`` when the
            exchange is a named one. None (the default) means ``routing_key`` with the default
            exchange and nothing with a named exchange (its bindings are the broker admin's);
            ``""`` declares nothing.
        publish_timeout: seconds a client waits, at most, for its message to be confirmed
            (connecting included) before it is answered 451.
        connect_timeout: seconds for the TCP connect and the AMQP handshake.
        heartbeat: the AMQP heartbeat in seconds (a broker gone silent is given up within
            about that plus 5 s, even mid-publish); None: the URL's ``heartbeat=``, else 10.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        exchange: str = "",
        routing_key: str = "smtpcore",
        *,
        queue: str | None = None,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        heartbeat: int | None = None,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue = (routing_key if exchange == "" else "") if queue is None else queue
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self._pika = _import_pika()
        self._parameters = self._pika.URLParameters(url)
        self._parameters.socket_timeout = connect_timeout
        self._parameters.stack_timeout = connect_timeout
        self._parameters.blocked_connection_timeout = publish_timeout
        if heartbeat is not None or "heartbeat" not in dict(parse_qsl(urlsplit(url).query)):
            self._parameters.heartbeat = 10 if heartbeat is None else heartbeat
        self.heartbeat: int = self._parameters.heartbeat or 0
        self._parameters.connection_attempts = 1
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._lock = threading.Lock()  # guards starting and stopping the worker
        self._worker: threading.Thread | None = None
        self._connection: Any = None  # only the worker thread touches these two
        self._channel: Any = None

    @classmethod
    def from_spec(cls, argument: str | None) -> AmqpHandler:
        """The handler a ``--handler amqp:URL`` spec names.

        ``URL`` may carry ``exchange``, ``routing_key``, ``queue``, ``publish_timeout`` and
        ``connect_timeout`` as query parameters (the others are pika's); ``amqp://...``
        written straight after ``--handler`` works too, and no URL means `DEFAULT_URL`.
        """
        url = argument or DEFAULT_URL
        if url.startswith("//"):  # "--handler amqp://host" was split at its first colon
            url = "amqp:" + url
        clean, ours = split_query(url, _OUR_QUERY_KEYS)
        try:
            return cls(
                clean,
                exchange=ours.get("exchange", ""),
                routing_key=ours.get("routing_key", "smtpcore"),
                queue=ours.get("queue"),
                publish_timeout=float(ours.get("publish_timeout", 10.0)),
                connect_timeout=float(ours.get("connect_timeout", 5.0)),
            )
        except ImportError as exc:
            raise ValueError(str(exc)) from exc
        except ValueError as exc:
            raise ValueError(f"amqp handler: bad URL {argument!r}: {exc}") from exc

    # ---------------------------------------------------------------- the hook

    def on_message(self, ctx: Session) -> Any:
        body = ctx.message.as_bytes()
        envelope = envelope_of(ctx)
        received = ctx.message.received_at
        properties = self._pika.BasicProperties(
            content_type="message/rfc822",
            delivery_mode=2,  # persistent
            headers=envelope,
            message_id=uuid.uuid4().hex,
            timestamp=int(received.timestamp()) if received is not None else None,
            app_id="smtpcore",
        )
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(_Job(body, properties, future))
        return wait_for_hand_off(future, self.publish_timeout, "AMQP broker")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker and close the broker connection (waits up to ``timeout``)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._jobs.put(None)
            worker.join(timeout)

    # ---------------------------------------------------------------- the worker thread

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="smtpcore-amqp", daemon=True)
                self._worker.start()
            self._jobs.put(job)

    def _run(self) -> None:
        idle_tick = max(self.heartbeat / 2, 0.5) if self.heartbeat else None
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=idle_tick)
                except Empty:
                    self._keep_alive()
                    continue
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue  # its client was already answered 451
                try:
                    self._publish(job)
                except BaseException as exc:
                    job.future.set_exception(exc)
                else:
                    job.future.set_result(None)
        finally:
            self._disconnect()

    def _keep_alive(self) -> None:
        """While idle: answer heartbeats, and notice a connection the broker dropped."""
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(0)
        except Exception as exc:
            _LOG.info("AMQP connection lost while idle: %r", exc)
            self._disconnect()

    def _publish(self, job: _Job) -> None:
        errors = self._pika.exceptions
        for attempt in (1, 2):
            reused = self._channel is not None
            try:
                channel = self._open()
                channel.basic_publish(
                    self.exchange, self.routing_key, job.body, job.properties, mandatory=True
                )
                return
            except (errors.UnroutableError, errors.NackError) as exc:
                # The broker answered, and the connection is fine: it will not take it.
                raise Smtp451Error(
                    f"Message not accepted by the AMQP broker ({_name(exc)})"
                ) from exc
            except Exception as exc:
                self._disconnect()
                if not reused or attempt == 2:
                    raise
                _LOG.info("AMQP publish failed on a reused connection, reconnecting: %r", exc)

    def _open(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._disconnect()
        connection = self._pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            if self.queue:
                channel = self._ensure_queue(connection, channel)
            channel.confirm_delivery()
        except BaseException:
            _close_quietly(connection)
            raise
        self._connection, self._channel = connection, channel
        return channel

    def _ensure_queue(self, connection: Any, channel: Any) -> Any:
        """Declare the queue unless it exists (whatever its arguments); the open channel."""
        try:
            channel.queue_declare(self.queue, passive=True)
        except self._pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            channel = connection.channel()  # a failed passive declare closes the channel
            channel.queue_declare(self.queue, durable=True)
        if self.exchange:
            channel.queue_bind(self.queue, self.exchange, routing_key=self.routing_key)
        return channel

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            _close_quietly(connection)


class _Job:
    __slots__ = ("body", "future", "properties")

    def __init__(self, body: bytes, properties: Any, future: concurrent.futures.Future[None]):
        self.body = body
        self.properties = properties
        self.future = future


def _import_pika() -> ModuleType:
    try:
        return importlib.import_module("pika")
    except ImportError as exc:
        raise ImportError(
            "AmqpHandler needs the pika package: pip install 'smtpcore[amqp]'"
        ) from exc


def _close_quietly(connection: Any) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        pass


def _name(exc: BaseException) -> str:
    return type(exc).__name__


# -------------------------------------------------------------------- shared with redis_stream


def wait_for_hand_off(
    future: concurrent.futures.Future[Any], timeout: float, what: str
) -> Coroutine[Any, Any, None] | None:
    """Wait for a hand-off running in a worker thread, the way the calling transport can.

    From an asyncio or trio event loop thread this returns a coroutine for the transport to
    await (the loop keeps serving other sessions); from a plain thread it waits right there.
    Either way: the future's result means the broker has the message; its failure, or no
    result within ``timeout`` seconds, raises `Smtp451Error` (an `SmtpError` the hand-off
    raised itself is kept as it is). A hand-off not yet started when time runs out is
    cancelled.
    """
    library = event_loop_library()
    if library == "asyncio":
        return _wait_asyncio(future, timeout, what)
    if library == "trio":
        return _wait_trio(future, timeout, what)
    _wait_blocking(future, timeout, what)
    return None


def _wait_blocking(future: concurrent.futures.Future[Any], timeout: float, what: str) -> None:
    try:
        future.result(timeout)
    except SmtpError:
        raise
    except Exception as exc:
        raise _failure(future, exc, timeout, what) from exc


async def _wait_asyncio(future: concurrent.futures.Future[Any], timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except SmtpError:
        raise
    except asyncio.CancelledError:
        future.cancel()  # the session itself is being cancelled (server stopping)
        raise
    except Exception as exc:
        raise _failure(future, exc, timeout, what) from exc


async def _wait_trio(future: concurrent.futures.Future[Any], timeout: float, what: str) -> None:
    trio = sys.modules["trio"]
    wait: Callable[[], None] = lambda: _wait_blocking(future, timeout, what)  # noqa: E731
    await trio.to_thread.run_sync(wait, abandon_on_cancel=True)


def _failure(
    future: concurrent.futures.Future[Any], exc: Exception, timeout: float, what: str
) -> SmtpError:
    if not future.done() or future.cancelled():
        future.cancel()
        _LOG.warning("%s did not confirm within %s s", what, timeout)
        return Smtp451Error(f"{what} did not confirm in time, try again later")
    _LOG.warning("hand-off to %s failed: %r", what, exc)
    return Smtp451Error(f"{what} unavailable, try again later")
