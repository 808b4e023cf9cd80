"""`ChaosHandler`: injects SMTP failures in front of another handler, to test the programs
that send mail (do they retry a 451, give up on a 550, survive a 421 mid-transaction?).

    chaos = ChaosHandler(MemoryHandler(), [parse_chaos("rcpt=451:0.2")], seed=1)
    chaos.fail_next("DATA", 452)          # the next message gets 452, whatever the rates

A rule fails one verb (MAIL, RCPT, DATA, AUTH) with one reply code at a rate; draws come
from a `random.Random` seeded by ``seed``, so a run can be repeated exactly (given the same
order of commands). DATA failures are answered at the end of the data, the point where a
real server's storage or content check fails; the wrapped handler never sees a failed
command, so a message refused here is not stored either.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

from transports import errors
from transports.errors import SmtpError
from transports.handler import Handler

__all__ = ["VERBS", "ChaosHandler", "ChaosRule", "Verb", "parse_chaos"]

Verb = Literal["MAIL", "RCPT", "DATA", "AUTH"]
VERBS: tuple[Verb, ...] = ("MAIL", "RCPT", "DATA", "AUTH")
_ALIASES: dict[str, Verb] = {
    "mail": "MAIL",
    "rcpt": "RCPT",
    "data": "DATA",
    "message": "DATA",
    "auth": "AUTH",
}
_HOOK_OF: dict[str, Verb] = {
    "on_mail_from": "MAIL",
    "on_rcpt_to": "RCPT",
    "on_message": "DATA",
    "on_auth": "AUTH",
}
_HOOK_NAMES = tuple(name for name in vars(Handler) if name.startswith("on_"))
_ENHANCED: dict[int, str | None] = {
    cls.code: cls.enhanced
    for cls in (getattr(errors, name) for name in errors.__all__)
    if cls is not SmtpError
}


@dataclass(frozen=True, slots=True)
class ChaosRule:
    """Fail ``verb`` with ``code`` on a ``rate`` share of attempts (1.0: always)."""

    verb: Verb
    code: int
    rate: float = 1.0

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ValueError(f"chaos verb must be one of {', '.join(VERBS)}, not {self.verb!r}")
        if not 400 <= self.code <= 599:
            raise ValueError(f"chaos code must be a 4xx or 5xx reply, not {self.code}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"chaos rate must be from 0 to 1, not {self.rate}")

    def __str__(self) -> str:
        return f"{self.verb.lower()}={self.code}:{self.rate:g}"


def parse_chaos(spec: str) -> ChaosRule:
    """``VERB=CODE[:RATE]`` (as for a ``--chaos`` option) as a rule: ``rcpt=451:0.2`` fails
    a fifth of RCPTs with 451; ``mail=421`` every MAIL with 421. VERB is ``mail``, ``rcpt``,
    ``data`` (or ``message``) or ``auth``, in any case.

    Raises:
        ValueError: naming what is wrong with ``spec``.
    """
    verb_text, eq, rest = spec.strip().partition("=")
    verb = _ALIASES.get(verb_text.strip().lower())
    if not eq or verb is None:
        known = ", ".join(_ALIASES)
        raise ValueError(f"chaos spec {spec!r}: use VERB=CODE[:RATE] with VERB one of {known}")
    code_text, colon, rate_text = rest.partition(":")
    try:
        code = int(code_text)
        rate = float(rate_text) if colon else 1.0
    except ValueError:
        raise ValueError(
            f"chaos spec {spec!r}: CODE must be a number and RATE a fraction, as rcpt=451:0.2"
        ) from None
    try:
        return ChaosRule(verb, code, rate)
    except ValueError as exc:
        raise ValueError(f"chaos spec {spec!r}: {exc}") from None


class ChaosHandler(Handler):
    """Wraps ``handler``, failing MAIL, RCPT, DATA and AUTH as the rules (and `fail_next`)
    say, and passing every hook through otherwise.

    Args:
        handler: the handler that does the real work.
        rules: `ChaosRule`s or their ``VERB=CODE[:RATE]`` texts.
        seed: seeds the draws; None for an unrepeatable run.

    Hooks keep their nature: a hook of ``handler`` that is ``async def`` is awaited through
    an ``async def`` here (so the threads transport still refuses such a handler at start-up),
    and a plain one's result, awaitable or not, is returned as is. Hooks ``handler`` leaves
    at their defaults stay absent here too, so the driver still skips them.
    """

    _wrapper_classes: ClassVar[dict[type[Handler], type[ChaosHandler]]] = {}

    def __new__(
        cls,
        handler: Handler,
        rules: Iterable[ChaosRule | str] = (),
        *,
        seed: int | None = None,
    ) -> ChaosHandler:
        if cls is ChaosHandler:
            cls = cls._wrapper_for(type(handler))
        return super().__new__(cls)

    def __init__(
        self,
        handler: Handler,
        rules: Iterable[ChaosRule | str] = (),
        *,
        seed: int | None = None,
    ) -> None:
        self.handler = handler
        self.rules = [parse_chaos(r) if isinstance(r, str) else r for r in rules]
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._queued: dict[Verb, list[int]] = {verb: [] for verb in VERBS}
        self._injected: Counter[Verb] = Counter()

    def fail_next(self, verb: str, code: int, count: int = 1) -> None:
        """Fail the next ``count`` attempts of ``verb`` with ``code``, before any rate."""
        rule = ChaosRule(_ALIASES.get(verb.lower(), cast(Verb, verb.upper())), code)
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._queued[rule.verb] += [code] * count

    @property
    def injected(self) -> dict[Verb, int]:
        """How many failures were injected so far, per verb."""
        with self._lock:
            return dict(self._injected)

    def inject(self, verb: Verb) -> None:
        """Raise the failure due for this attempt of ``verb``, if any (hooks call this)."""
        code = self._draw(verb)
        if code is not None:
            raise SmtpError(code, f"Injected {verb} failure (chaos)", _enhanced(code))

    def _draw(self, verb: Verb) -> int | None:
        with self._lock:
            queued = self._queued[verb]
            code = queued.pop(0) if queued else None
            if code is None:
                for rule in self.rules:
                    if (
                        rule.verb == verb
                        and rule.rate > 0
                        and (rule.rate >= 1 or self._random.random() < rule.rate)
                    ):
                        code = rule.code
                        break
            if code is not None:
                self._injected[verb] += 1
            return code

    @classmethod
    def _wrapper_for(cls, handler_class: type[Handler]) -> type[ChaosHandler]:
        """A subclass with the hooks this wrapping needs: the four that may fail, and those
        ``handler_class`` overrides (the driver calls only the hooks a class overrides)."""
        wrapper = cls._wrapper_classes.get(handler_class)
        if wrapper is None:
            namespace: dict[str, Any] = {"__module__": __name__}
            for name in _HOOK_NAMES:
                own = getattr(handler_class, name)
                overridden = own is not getattr(Handler, name)
                if name in _HOOK_OF or overridden:
                    is_async = inspect.iscoroutinefunction(own)
                    namespace[name] = _hook(name, _HOOK_OF.get(name), is_async)
            wrapper = type(f"Chaos{handler_class.__name__}", (cls,), namespace)
            cls._wrapper_classes[handler_class] = wrapper
        return wrapper


def _hook(name: str, verb: Verb | None, is_async: bool) -> Callable[..., Any]:
    """The hook ``name``: inject a failure for ``verb`` (if any), then call the wrapped
    handler's; ``async def`` when the wrapped one is."""
    if is_async:

        async def forward_async(self: ChaosHandler, *args: Any) -> Any:
            if verb is not None:
                self.inject(verb)
            return await getattr(self.handler, name)(*args)

        forward_async.__name__ = forward_async.__qualname__ = name
        return forward_async

    def forward(self: ChaosHandler, *args: Any) -> Any:
        if verb is not None:
            self.inject(verb)
        return getattr(self.handler, name)(*args)

    forward.__name__ = forward.__qualname__ = name
    return forward


def _enhanced(code: int) -> str:
    """The enhanced code our own errors use with ``code`` (a 452 is 4.3.1...), else X.0.0."""
    return _ENHANCED.get(code) or f"{code // 100}.0.0"
