"""Ready-made handlers, and `resolve_handler` to pick one by name (as ``--handler`` does).

``debug`` prints every message (`Debug`), ``sink`` accepts and drops (`Sink`), ``memory``
keeps messages (`MemoryHandler`), ``maildir:DIR`` and ``mbox:FILE`` store them, ``relay:HOST:PORT``
forwards them, ``pipe:COMMAND`` and ``webhook:URL`` hand them to a program or a web service (see
`transports.handlers.specs`), and ``package.module:ClassName`` imports a class of your own and
instantiates it without arguments. `ChaosHandler` wraps any of them to inject failures.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from transports.handler import Handler

from . import specs
from .amqp import AmqpHandler
from .chaos import ChaosHandler, ChaosRule, parse_chaos
from .debug import Debug
from .maildir import MaildirHandler
from .mbox import MboxHandler
from .memory import MemoryHandler
from .pipe import PipeHandler
from .redis_stream import RedisStreamHandler
from .relay import RelayHandler
from .sink import Sink
from .stored import StoredMessage
from .webhook import WebhookHandler

__all__ = [
    "HANDLERS",
    "AmqpHandler",
    "ChaosHandler",
    "ChaosRule",
    "Debug",
    "MaildirHandler",
    "MboxHandler",
    "MemoryHandler",
    "PipeHandler",
    "RedisStreamHandler",
    "RelayHandler",
    "Sink",
    "StoredMessage",
    "WebhookHandler",
    "parse_chaos",
    "resolve_handler",
]

HandlerFactory = Callable[[str | None], Handler]
"""Makes a handler from the text after ``name:`` in a spec (None when there is no colon)."""


def _without_argument(cls: type[Handler]) -> HandlerFactory:
    def make(argument: str | None) -> Handler:
        if argument is not None:
            raise ValueError(f"{cls.__name__} takes no argument, not {argument!r}")
        return cls()

    return make


HANDLERS: dict[str, HandlerFactory] = {
    "debug": _without_argument(Debug),
    "sink": _without_argument(Sink),
    "memory": _without_argument(MemoryHandler),
    "maildir": specs.maildir,
    "mbox": specs.mbox,
    "relay": specs.relay,
    "pipe": specs.pipe,
    "webhook": specs.webhook,
    "amqp": AmqpHandler.from_spec,
    "redis": RedisStreamHandler.from_spec,
}
"""Built-in handler specs: ``name`` or ``name:ARGUMENT`` -> factory. Add entries here."""


def resolve_handler(spec: str) -> Handler:
    """The handler a spec names: a key of `HANDLERS` (``debug``, ``sink``...), optionally with
    ``:ARGUMENT``, or ``package.module:ClassName``.

    Raises:
        ValueError: for an unknown name, a module or class that cannot be found, or a class
            that cannot be instantiated without arguments or is not a `Handler`.
    """
    name, colon, argument = spec.partition(":")
    factory = HANDLERS.get(name)
    if factory is not None:
        return factory(argument if colon else None)
    if not (colon and name and argument):
        known = ", ".join(HANDLERS)
        raise ValueError(f"unknown handler {spec!r}: use one of {known} or package.module:Class")
    return _import_handler(name, argument)


def _import_handler(module_name: str, class_name: str) -> Handler:
    spec = f"{module_name}:{class_name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"handler {spec!r}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Handler):
        raise ValueError(f"handler {spec!r}: {class_name!r} is not a Handler subclass")
    try:
        return cls()
    except TypeError as exc:
        raise ValueError(f"handler {spec!r} cannot be made without arguments: {exc}") from exc
