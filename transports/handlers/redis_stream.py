"""`RedisStreamHandler`: appends each message to a Redis stream (XADD) before answering 250.

Optional extra: ``pip install 'smtpcore[redis]'`` (the ``redis`` client). ``--handler
redis:redis://host:6379/0?stream=inbound&maxlen=100000`` on the command line.

The client is answered 250 only once Redis has answered the XADD with the entry's id; when
Redis is unreachable, fails or does not answer within ``timeout``, the client gets 451 4.3.0
and tries again later. Delivery is at-least-once: an XADD that Redis applied but whose answer
was lost (a timeout) is added again when the client retries.

"Redis answered" means the entry is in Redis's memory. That it survives a Redis crash is up
to Redis's persistence settings: ``appendonly yes`` with ``appendfsync always`` makes an
acknowledged entry durable; the default ``everysec`` may lose the last second. ``maxlen``
trims the stream (approximately, ``XADD MAXLEN ~``, by default): trimmed entries are gone, so
leave it None unless consumers keep up.

Each entry has the fields ``message`` (the raw message bytes, as ``ctx.message.as_bytes()``),
``sender`` (``""`` for ``<>``), ``recipients`` (a JSON array), ``helo``, ``remote_ip``,
``remote_port`` and ``received_at`` (ISO 8601, UTC); absent values are empty strings.

The XADD runs in a small pool of worker threads sharing the client's connection pool, so the
hook never blocks an event loop (see `transports.handlers.amqp.wait_for_hand_off`).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
from collections.abc import Coroutine
from types import ModuleType
from typing import Any

from transports.handler import Handler, Session

from .amqp import envelope_of, split_query, wait_for_hand_off

__all__ = ["DEFAULT_URL", "RedisStreamHandler"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_OUR_QUERY_KEYS = ("stream", "maxlen", "timeout")


class RedisStreamHandler(Handler):
    """Adds every message to a Redis stream with XADD.

    Args:
        url: the server, as ``redis.Redis.from_url`` takes it (``redis://``, ``rediss://``,
            ``unix://``).
        stream: the stream's key.
        maxlen: trim the stream to about this many entries (None: never trim).
        approximate: trim with ``MAXLEN ~`` (cheap) rather than exactly.
        timeout: seconds for connecting and for each answer; a client waits at most about
            twice that (one retry on a broken pooled connection) before it is answered 451.
        workers: worker threads running the XADDs.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        stream: str = "smtpcore",
        maxlen: int | None = None,
        *,
        approximate: bool = True,
        timeout: float = 5.0,
        workers: int = 4,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ValueError("maxlen must be at least 1 (or None)")
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.approximate = approximate
        self.timeout = timeout
        redis = _import_redis()
        retry = importlib.import_module("redis.retry").Retry
        no_backoff = importlib.import_module("redis.backoff").NoBackoff
        self.client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One retry, on connection errors only: a pooled connection the server dropped
            # (a restart) is replaced at once; a timeout is not retried (time is bounded).
            retry=retry(no_backoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="smtpcore-redis"
        )

    @classmethod
    def from_spec(cls, argument: str | None) -> RedisStreamHandler:
        """The handler a ``--handler redis:URL`` spec names.

        ``URL`` may carry ``stream``, ``maxlen`` and ``timeout`` as query parameters (the
        others are redis-py's); ``redis://...`` written straight after ``--handler`` works
        too, and no URL means `DEFAULT_URL`.
        """
        url = argument or DEFAULT_URL
        if url.startswith("//"):  # "--handler redis://host" was split at its first colon
            url = "redis:" + url
        clean, ours = split_query(url, _OUR_QUERY_KEYS)
        try:
            maxlen = ours.get("maxlen")
            return cls(
                clean,
                stream=ours.get("stream", "smtpcore"),
                maxlen=int(maxlen) if maxlen else None,
                timeout=float(ours.get("timeout", 5.0)),
            )
        except ImportError as exc:
            raise ValueError(str(exc)) from exc
        except ValueError as exc:
            raise ValueError(f"redis handler: bad URL {argument!r}: {exc}") from exc

    def on_message(self, ctx: Session) -> Coroutine[Any, Any, None] | None:
        envelope = envelope_of(ctx)
        fields: dict[str, bytes | str | int] = {
            "message": ctx.message.as_bytes(),
            "sender": envelope["sender"],
            "recipients": json.dumps(envelope["recipients"], ensure_ascii=False),
            "helo": envelope["helo"] or "",
            "remote_ip": envelope["remote_ip"],
            "remote_port": envelope["remote_port"],
            "received_at": envelope["received_at"] or "",
        }
        future = self._executor.submit(self._xadd, fields)
        return wait_for_hand_off(future, 2 * self.timeout + 1.0, "Redis")

    def _xadd(self, fields: dict[str, bytes | str | int]) -> None:
        self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=self.approximate)

    def close(self) -> None:
        """Wait for the XADDs under way and close the connection pool."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def _import_redis() -> ModuleType:
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise ImportError(
            "RedisStreamHandler needs the redis package: pip install 'smtpcore[redis]'"
        ) from exc
