"""``--handler amqp:URL`` and ``--handler redis:URL`` through `resolve_handler` (once their
lines are in the `HANDLERS` table)."""

from __future__ import annotations

import pytest

from transports.handlers import HANDLERS, resolve_handler
from transports.handlers.amqp import AmqpHandler
from transports.handlers.redis_stream import RedisStreamHandler


@pytest.mark.skipif("amqp" not in HANDLERS, reason="amqp not in the HANDLERS table yet")
@pytest.mark.parametrize("spec", ["amqp:amqp://127.0.0.1:5672/%2F?exchange=x", "amqp://127.0.0.1"])
def test_amqp_spec(spec: str) -> None:
    handler = resolve_handler(spec)
    assert isinstance(handler, AmqpHandler)
    assert handler._parameters.host == "127.0.0.1"


@pytest.mark.skipif("redis" not in HANDLERS, reason="redis not in the HANDLERS table yet")
@pytest.mark.parametrize("spec", ["redis:redis://127.0.0.1:6379/0?stream=in", "redis://127.0.0.1"])
def test_redis_spec(spec: str) -> None:
    handler = resolve_handler(spec)
    assert isinstance(handler, RedisStreamHandler)
    handler.close()
