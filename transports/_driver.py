"""The session driver: turns core events into handler hook calls, once for all transports.

A transport feeds bytes in, calls `SessionDriver.pump`, writes `output()` and does what the
returned `Action` says. `pump` runs synchronous hooks inline and returns an awaitable only when
a hook is ``async`` (or a pause is due), so plain-``def`` handlers never touch the event loop.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar

from smtpcore import (
    NEED_DATA,
    AuthAttempt,
    CloseReason,
    ConnectionClosed,
    DataChunk,
    Event,
    Greeting,
    HeadersComplete,
    Helo,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageStart,
    ProtocolViolation,
    RcptTo,
    Reply,
    Reset,
    SmtpConfig,
    SmtpConnection,
    StartTls,
    TlsUpgrade,
    UnknownCommand,
)
from smtpcore._compile import mypyc_attr

from .errors import SmtpError
from .handler import Handler, Message, Session, per_recipient

__all__ = ["Action", "SessionDriver"]

_LOGGER = logging.getLogger("smtpcore.server")
_LOCAL_ERROR = Reply(451, "Requested action aborted: local error in processing", "4.3.0")
_GREETING_ERROR = Reply(421, "Service not available, closing transmission channel", "4.3.0")
_ACCEPTED = Reply(250, "Message accepted", "2.0.0")

Sleep = Callable[[float], Awaitable[None] | None]
OnResult = Callable[[Any, Any], None]


class Action(enum.Enum):
    """What the transport must do after `SessionDriver.pump` (always after writing output)."""

    READ = "read"
    """Read more bytes from the peer and `feed` them."""
    FLUSH = "flush"
    """Replies pile up: write them, then `pump` again before reading (backpressure)."""
    START_TLS = "start tls"
    """Run the server-side TLS handshake, then call `tls_started` or `tls_failed`."""
    CLOSE = "close"
    """Close the connection (the output may hold a final 221/421)."""


Step = Action | Awaitable[None] | None
"""What handling one event leads to: an action for the transport, a hook to await, or go on."""


_NO_OP_HOOKS = frozenset(
    (
        "on_logging",
        "on_connect",
        "on_helo",
        "on_mail_from",
        "on_rcpt_to",
        "on_message_start",
        "on_message_headers",
        "on_message_data",
        "on_message",
    )
)


_live_hooks: dict[type, frozenset[str]] = {}


def live_hooks(handler: Handler) -> frozenset[str]:
    """The no-op hooks a handler's class overrides; the driver skips calling the others.

    Decided once per class (the cache holds classes, never handlers, so a handler and what
    it keeps are freed with its server).
    """
    cls = type(handler)
    live = _live_hooks.get(cls)
    if live is None:
        live = _live_hooks[cls] = frozenset(
            name
            for name in _NO_OP_HOOKS
            if getattr(cls, name, None) not in (None, getattr(Handler, name))
        )
    return live


@mypyc_attr(allow_interpreted_subclasses=True)  # ObservedDriver, in Python, extends it
class SessionDriver:
    """One client session: the core, the handler and the session context together.

    Args:
        handler: the user's handler.
        config: the core's configuration.
        ctx: the session context, already filled with addresses.
        sleep: the transport's sleep (blocking for threads, awaitable for async transports),
            used to slow down failed AUTH attempts.
        auth_failure_delay: seconds to wait after the n-th failed AUTH, times n.
    """

    __slots__ = (
        "_sleep",
        "_steps",
        "auth_failure_delay",
        "conn",
        "ctx",
        "handler",
        "live",
        "logger",
        "output",
    )

    connection_class: ClassVar[type[SmtpConnection]] = SmtpConnection
    """The core's class (a subclass may report what the core does). A ClassVar, so that the
    compiled build too reads the subclass's value."""

    def __init__(
        self,
        handler: Handler,
        config: SmtpConfig,
        ctx: Session,
        *,
        sleep: Sleep,
        auth_failure_delay: float = 0.0,
        tls_active: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        self.handler = handler
        self.live = live = live_hooks(handler)
        self._steps, auto = _steps_of(handler, live)
        self.ctx = ctx
        self.conn = conn = self.connection_class(config, tls_active=tls_active, auto_accept=auto)
        ctx.connection = conn
        self.output: Callable[[], bytes] = conn.data_to_send
        """The bytes to write now (the core's own `data_to_send`)."""
        self._sleep = sleep
        self.auth_failure_delay = auth_failure_delay
        self.logger = logger or _LOGGER
        self.log(logging.DEBUG, "connected")

    # ---------------------------------------------------------------- transport side

    def feed(self, data: bytes) -> None:
        """Bytes from the peer (``b""`` when it closed); a closed core ignores them."""
        if data or not self.conn.closed:  # bytes after the end are dropped by the core itself
            self.conn.receive_data(data)

    def lost(self) -> Action | Awaitable[Action]:
        """The connection is gone, in whatever state the session was (even mid-handshake or
        while a hook runs): end it, reporting an unfinished message as aborted."""
        self.conn.close(None, CloseReason.PEER_CLOSED)
        return self.pump()

    def pump(self) -> Action | Awaitable[Action]:
        """Handle events until the transport must act (or an async hook must be awaited)."""
        step = self._advance()
        return step if isinstance(step, Action) else self._pump_async(step)

    async def _pump_async(self, pending: Awaitable[None]) -> Action:
        while True:
            await pending
            step = self._advance()
            if isinstance(step, Action):
                return step
            pending = step

    def tls_started(self, facts: Any) -> None:
        """The handshake succeeded; ``facts`` (a `TlsFacts`) go into the session context."""
        self.ctx.tls = facts
        self.conn.tls_established()

    def tls_failed(self, exc: BaseException) -> None:
        self.log(logging.WARNING, f"TLS handshake failed: {exc}")
        self.conn.tls_failed()

    def timed_out(self) -> None:
        self.log(logging.INFO, "timeout, closing")
        self.conn.timed_out()

    def shutdown(self) -> None:
        """Close now with 421 4.3.2 (a graceful stop's deadline passed, or an immediate stop)."""
        self.conn.close()

    def disconnected(self) -> Any:
        """Call `Handler.on_disconnect` (its result may need awaiting)."""
        try:
            return self.handler.on_disconnect(self.ctx)
        except Exception as exc:
            self.log(logging.ERROR, f"on_disconnect failed: {exc!r}", exc)
            return None

    def log(self, level: int, message: str, exc: BaseException | None = None) -> None:
        hooked = "on_logging" in self.live
        if not (hooked or self.logger.isEnabledFor(level)):
            return  # all Logger.log would do, without formatting the line first
        ctx = self.ctx
        line = f"[{ctx.remote_ip}:{ctx.remote_port}] {message}"
        if hooked:
            self.handler.on_logging(ctx, level, line, exc)
        else:
            self.logger.log(level, line, exc_info=exc)

    # ---------------------------------------------------------------- events

    def _advance(self) -> Action | Awaitable[None]:
        conn = self.conn
        steps = self._steps
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return _FLUSH if conn.output_full else _READ
            step = steps.get(type(event))
            if step is None:  # PAUSED cannot come back: every decision is answered
                raise RuntimeError(f"unexpected {event!r} from the core")
            pending = step(self, event)
            if pending is not None:
                return pending

    def _call(
        self, event: Event, name: str, args: tuple[Any, ...], then: OnResult | None
    ) -> Awaitable[None] | None:
        """Call hook ``name`` (skipped when left at its no-op default) and apply its result."""
        if name in _NO_OP_HOOKS and name not in self.live:
            if then is not None:
                then(event, None)
            return None
        hook = getattr(self.handler, name, None) or partial(getattr(Handler, name), self.handler)
        try:
            result = hook(self.ctx, *args)
        except Exception as exc:
            return self._failed(event, exc)
        if isinstance(result, Awaitable):
            return self._await(event, result, then)
        if then is not None:
            then(event, result)
        return None

    async def _await(self, event: Event, result: Awaitable[Any], then: OnResult | None) -> None:
        try:
            value = await result
        except Exception as exc:
            pending = self._failed(event, exc)
            if pending is not None:
                await pending
            return
        if then is not None and not self.conn.closed:  # the session may have ended meanwhile
            then(event, value)

    def _failed(self, event: Event, exc: Exception) -> Awaitable[None] | None:
        """A hook raised: answer with its reply, or 451 after logging the traceback."""
        if isinstance(exc, SmtpError):
            reply = exc.reply
            self.log(logging.INFO, f"{type(event).__name__} refused: {reply.code} {reply.text}")
        else:
            reply = _GREETING_ERROR if isinstance(event, Greeting) else _LOCAL_ERROR
            self.log(logging.ERROR, f"hook for {type(event).__name__} raised {exc!r}", exc)
        if reply.is_positive:
            self.log(logging.ERROR, f"{type(exc).__name__} carries a positive reply; using 451")
            reply = _LOCAL_ERROR
        if event.needs_reply or isinstance(event, DataChunk | HeadersComplete):
            self.conn.reject(event, reply)
        if isinstance(event, AuthAttempt) and self.auth_failure_delay > 0 and not self.conn.closed:
            return self._sleep(self.auth_failure_delay * self.conn.auth_failures)
        return None

    # ---- steps: what each kind of event leads to (see `_STEPS` and `_UNHOOKED`)

    def _accept(self, event: Event, result: object = None) -> None:
        self.conn.accept(event)

    def _accept_rewrite(self, event: Event, result: object) -> None:
        self.conn.accept(event, rewrite=result if isinstance(result, str) and result else None)

    def _on_greeting(self, event: Greeting) -> Step:
        return self._call(event, "on_connect", (), self._accept)

    def _on_helo(self, event: Helo) -> Step:
        return self._call(event, "on_helo", (event.domain,), self._accept)

    def _on_mail(self, event: MailFrom) -> Step:
        return self._call(event, "on_mail_from", (event.address, event), self._accept_rewrite)

    def _on_rcpt(self, event: RcptTo) -> Step:
        return self._call(event, "on_rcpt_to", (event.address, event), self._accept_rewrite)

    def _on_auth(self, event: AuthAttempt) -> Step:
        args = (event.authorization_id, event.authentication_id, event.password, event)
        return self._call(event, "on_auth", args, self._accept_rewrite)

    def _on_message_start(self, event: MessageStart) -> Step:
        self.ctx.message = Message(received_at=datetime.now(UTC))
        return self._call(event, "on_message_start", (), self._accept)

    def _start_unhooked(self, event: MessageStart) -> Step:
        self.ctx.message = Message(received_at=datetime.now(UTC))
        self.conn.accept(event)
        return None

    def _on_data(self, event: DataChunk) -> Step:
        self._collect(event)
        return self._call(event, "on_message_data", (event.data,), None)

    def _collect(self, event: DataChunk) -> Step:
        self.ctx.message.data += event.data  # a bytearray: appending stays linear
        return None

    def _on_headers(self, event: HeadersComplete) -> Step:
        return self._call(event, "on_message_headers", (), None)

    def _on_message(self, event: MessageComplete) -> Step:
        self.ctx.message.delivered_at = datetime.now(UTC)
        return self._call(event, "on_message", (), self._answer_message)

    def _complete_unhooked(self, event: MessageComplete) -> Step:
        self.ctx.message.delivered_at = datetime.now(UTC)
        self.conn.accept(event)  # what `_answer_message` does with no result
        return None

    def _answer_message(self, event: Event, result: object) -> None:
        assert isinstance(event, MessageComplete)
        answers = per_recipient(result, len(event.envelope.rcpt_tos))
        if answers is None or not self.conn.config.lmtp:
            self.conn.accept(event)
        else:
            replies = [_ACCEPTED if a is None else a.reply for a in answers]
            self.conn.reply_per_recipient(event, replies)

    def _on_aborted(self, event: MessageAborted) -> Step:
        self.log(logging.INFO, f"message dropped: {event.reason}")
        self.ctx.message = Message()
        return None

    def _on_unknown(self, event: UnknownCommand) -> Step:
        args = (event.verb, event.argument)
        return self._call(event, "on_unknown_command", args, self._answer_unknown)

    def _answer_unknown(self, event: Event, result: object) -> None:
        reply = Reply(250, result, "2.0.0") if isinstance(result, str) and result else None
        self.conn.accept(event, reply)

    def _on_starttls(self, event: StartTls) -> Step:
        self.conn.accept(event)
        return None

    def _on_violation(self, event: ProtocolViolation) -> Step:
        self.log(logging.DEBUG, f"client error: {event.reply.code} {event.reply.text}")
        return None

    def _ignore(self, event: Event) -> Step:
        return None

    def _on_tls_upgrade(self, event: TlsUpgrade) -> Step:
        return Action.START_TLS

    def _on_closed(self, event: ConnectionClosed) -> Step:
        return Action.CLOSE


_READ = Action.READ
_FLUSH = Action.FLUSH

StepFunction = Callable[[SessionDriver, Any], Step]
_STEPS: dict[type, StepFunction] = {
    Greeting: SessionDriver._on_greeting,
    Helo: SessionDriver._on_helo,
    MailFrom: SessionDriver._on_mail,
    RcptTo: SessionDriver._on_rcpt,
    AuthAttempt: SessionDriver._on_auth,
    MessageStart: SessionDriver._on_message_start,
    DataChunk: SessionDriver._on_data,
    HeadersComplete: SessionDriver._on_headers,
    MessageComplete: SessionDriver._on_message,
    MessageAborted: SessionDriver._on_aborted,
    UnknownCommand: SessionDriver._on_unknown,
    StartTls: SessionDriver._on_starttls,
    ProtocolViolation: SessionDriver._on_violation,
    Reset: SessionDriver._ignore,
    TlsUpgrade: SessionDriver._on_tls_upgrade,
    ConnectionClosed: SessionDriver._on_closed,
}
"""The step for each kind of event the core hands out."""
_AUTO: dict[type[Event], str] = {
    Greeting: "on_connect",
    Helo: "on_helo",
    MailFrom: "on_mail_from",
    RcptTo: "on_rcpt_to",
}
"""The decisions the core takes by itself (`SmtpConnection`'s ``auto_accept``) when their
hook is left at its default, which accepts."""
_UNHOOKED: dict[type, tuple[str, StepFunction]] = {
    MessageStart: ("on_message_start", SessionDriver._start_unhooked),
    DataChunk: ("on_message_data", SessionDriver._collect),
    HeadersComplete: ("on_message_headers", SessionDriver._ignore),
    MessageComplete: ("on_message", SessionDriver._complete_unhooked),
}
"""The steps of the frequent events whose hook is left at its no-op default: the effect of
their `_STEPS` step (whose `_call` would skip the hook and pass None on), minus the detour."""
_step_tables: dict[type, tuple[dict[type, StepFunction], frozenset[type[Event]]]] = {}


def _steps_of(
    handler: Handler, live: frozenset[str]
) -> tuple[dict[type, StepFunction], frozenset[type[Event]]]:
    """The steps for a handler's class and the decisions left to the core, worked out once
    per class (as `live_hooks`)."""
    cls = type(handler)
    known = _step_tables.get(cls)
    if known is None:
        unhooked = {kind: step for kind, (hook, step) in _UNHOOKED.items() if hook not in live}
        auto = frozenset(kind for kind, hook in _AUTO.items() if hook not in live)
        known = _step_tables[cls] = ({**_STEPS, **unhooked}, auto)
    return known
