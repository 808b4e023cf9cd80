"""`SmtpConnection`: the server side of one SMTP or LMTP session, without any I/O.

Bytes go in with `receive_data`, events come out of `next_event`, decisions go back with
`accept`/`reject`, and every byte to write comes out of `data_to_send`, in command order.
"""

from __future__ import annotations

import binascii
import dataclasses
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import replies as R
from ._buffer import ReceiveBuffer
from ._compile import mypyc_attr
from ._content import DataReader, HeaderTracker
from ._state import IN_TRANSACTION, State
from ._transaction import parse_mail, parse_rcpt
from .config import AuthMode, CrlfMode, SmtpConfig, TlsMode
from .errors import LocalProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    CloseReason,
    ConnectionClosed,
    DataChunk,
    Envelope,
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
    Reset,
    StartTls,
    TlsUpgrade,
    UnknownCommand,
)
from .replies import Reply
from .sasl import SaslExchange, SaslSyntaxError

__all__ = ["AuthInfo", "SmtpConnection"]

# Enum member lookups cost ~60 ns each on CPython 3.11: the hot paths use these aliases.
_GREETING = State.GREETING
_REFUSED = State.REFUSED
_HELO = State.HELO
_READY = State.READY
_MAIL = State.MAIL
_RCPT = State.RCPT
_DATA = State.DATA
_BDAT = State.BDAT
_BDAT_CHUNK = State.BDAT_CHUNK
_AUTH = State.AUTH
_TLS_HANDSHAKE = State.TLS_HANDSHAKE
_CLOSED = State.CLOSED

_BEFORE_TLS = frozenset({"EHLO", "HELO", "LHLO", "NOOP", "RSET", "QUIT", "STARTTLS"})
_NEEDS_AUTH = frozenset({"MAIL", "RCPT", "DATA", "BDAT"})
_MAX_BDAT_DIGITS = 18


@dataclasses.dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who authenticated, and how."""

    mechanism: str
    authorization_id: str
    authentication_id: str


@mypyc_attr(allow_interpreted_subclasses=True)  # programs may subclass it, compiled or not
class SmtpConnection:
    """One SMTP/LMTP server session as a pure state machine.

    Args:
        config: the endpoint's settings.
        tls_active: True when the transport already runs TLS (implicit TLS, RFC 8314).
        auto_accept: kinds of decision (`Greeting`, `Helo`, `MailFrom`, `RcptTo`) the core
            accepts by itself with its default reply instead of handing them out, for an
            application that would accept them unseen anyway: it saves a round trip through
            `next_event` and `accept` per command. The envelope records them as usual.

    Raises:
        ValueError: ``auto_accept`` names another kind of event.

    The first event is `Greeting`; see README for a complete driving loop.
    """

    __slots__ = (
        "_auth",
        "_auth_failures",
        "_auto",
        "_buffer",
        "_chunk_last",
        "_chunk_left",
        "_chunk_size",
        "_close_reason",
        "_content_failure",
        "_data_reader",
        "_discarding",
        "_enhanced",
        "_envelope",
        "_eof",
        "_error_count",
        "_esmtp",
        "_events",
        "_facts",
        "_guarded",
        "_headers",
        "_held_cr",
        "_helo",
        "_last_content",
        "_message_size",
        "_offers_auth",
        "_orphan_chunk_state",
        "_outbox",
        "_pending",
        "_received",
        "_rejected_rcpts",
        "_sasl",
        "_state",
        "_tls_active",
        "config",
    )

    def __init__(
        self,
        config: SmtpConfig | None = None,
        *,
        tls_active: bool = False,
        auto_accept: Iterable[type[Event]] = (),
    ) -> None:
        # A frozenset is kept as given: transports pass one shared set, and a copy per
        # connection would cost memory (the compiled build does not skip such a copy).
        auto = auto_accept if isinstance(auto_accept, frozenset) else frozenset(auto_accept)
        self._auto = auto
        if not auto <= AUTO_ACCEPTABLE:
            names = ", ".join(
                sorted(getattr(k, "__name__", repr(k)) for k in auto - AUTO_ACCEPTABLE)
            )
            raise ValueError(f"auto_accept takes Greeting, Helo, MailFrom, RcptTo; not {names}")
        self.config = config = config or SmtpConfig()
        self._facts = facts = _facts_of(config)
        self._enhanced = config.enhanced_status_codes
        self._offers_auth = facts.auth_possible and (tls_active or config.allow_insecure_auth)
        self._buffer = ReceiveBuffer()
        self._received = self._buffer.raw  # the same bytearray: emptiness tests stay in C
        self._guarded = facts.guarded
        self._outbox = bytearray()
        self._events: list[Event] = []  # rarely more than three: a list beats a deque here
        self._state = _GREETING
        self._pending: Event | None = None
        self._eof = False
        self._close_reason: CloseReason | None = None
        self._discarding = 0  # octets of an over-long line dropped so far
        self._tls_active = tls_active
        self._helo: str | None = None
        self._esmtp = False
        self._auth: AuthInfo | None = None
        self._sasl: SaslExchange | None = None
        self._envelope = _NO_ENVELOPE
        self._rejected_rcpts = 0
        self._error_count = 0
        self._auth_failures = 0
        # message content in progress
        self._message_size = 0
        self._content_failure: Reply | None = None
        self._data_reader: DataReader | None = None
        self._held_cr = b""
        self._headers = HeaderTracker()
        self._last_content: Event | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_size = 0
        self._orphan_chunk_state: State | None = None  # a BDAT out of sequence, being skipped

    # ------------------------------------------------------------------ facts

    @property
    def state(self) -> State:
        return self._state

    @property
    def pending(self) -> Event | None:
        """The decision event waiting for `accept`/`reject`, if any."""
        return self._pending

    @property
    def helo_name(self) -> str | None:
        return self._helo

    @property
    def esmtp(self) -> bool:
        """True after EHLO or LHLO, False after HELO or before any."""
        return self._esmtp

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def auth(self) -> AuthInfo | None:
        """The authenticated identity, or None."""
        return self._auth

    @property
    def envelope(self) -> Envelope:
        """The transaction so far (empty outside a transaction)."""
        return self._envelope

    @property
    def message_size(self) -> int:
        """Octets of the current (or last) message's content received so far."""
        return self._message_size

    @property
    def output_full(self) -> bool:
        """True when `next_event` returned `NEED_DATA` to have the replies written before it
        parses more: send `data_to_send()`, then call `next_event` again before reading."""
        return len(self._outbox) >= OUTPUT_LIMIT

    @property
    def error_count(self) -> int:
        return self._error_count

    @property
    def auth_failures(self) -> int:
        return self._auth_failures

    @property
    def closed(self) -> bool:
        return self._state is _CLOSED

    @property
    def in_transaction(self) -> bool:
        """True from an accepted MAIL until the message is answered or the transaction reset.

        A graceful shutdown lets such sessions finish and closes the others at once.
        """
        return self._state in IN_TRANSACTION

    @property
    def reading_data(self) -> bool:
        """True while message content is being read (RFC 5321 §4.5.3.2 data-block timeout)."""
        return self._state in (_DATA, _BDAT_CHUNK)

    # ------------------------------------------------------------------ I/O side

    def receive_data(self, data: bytes) -> None:
        """Store bytes from the peer; ``b""`` means the peer closed its side.

        Raises:
            LocalProtocolError: after EOF, or during the TLS handshake (those bytes belong to
                the TLS layer, not to SMTP).
        """
        if self._eof:
            raise LocalProtocolError("receive_data() after the peer's EOF")
        if self._state is _TLS_HANDSHAKE:
            raise LocalProtocolError("bytes during the TLS handshake belong to the TLS layer")
        if not data:
            self._eof = True
        elif self._state is not _CLOSED:
            self._received += data

    def data_to_send(self) -> bytes:
        """Every byte the core wants written, in order; empties the outbox."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> Event | type[NEED_DATA] | type[PAUSED]:
        """Parse until something happens.

        Returns:
            An event; `PAUSED` while a decision is unanswered (or the TLS handshake runs);
            `NEED_DATA` when the buffer holds nothing more to act on. Never raises on peer
            input: errors are answered and reported as `ProtocolViolation` events.
        """
        events = self._events  # updated in place, never rebound
        while True:
            if self._pending is not None:
                return PAUSED
            if events:
                event = events.pop(0)
                if event.needs_reply:
                    self._pending = event
                elif type(event) is DataChunk or type(event) is HeadersComplete:
                    self._last_content = event
                return event
            state = self._state
            if state is _CLOSED:
                assert self._close_reason is not None
                return ConnectionClosed(reason=self._close_reason)
            if state is _TLS_HANDSHAKE:
                return PAUSED
            if state is _GREETING:
                self._ask(Greeting())
                continue
            if len(self._outbox) >= OUTPUT_LIMIT:
                return NEED_DATA  # write first (see output_full): a client that never reads
                # cannot make the core hold megabytes of replies
            # Act on what the buffer holds; fall through when it holds nothing actionable.
            if state is _DATA:
                if self._received and self._read_data():
                    continue
            elif state is _BDAT_CHUNK:
                if self._received or not self._chunk_left:
                    self._read_chunk()
                    continue
            elif self._received:
                line = self._take_line()
                if line is not None:
                    self._on_line(line)
                    continue
                if events or self._state is not state:  # refused: a violation, or closed
                    continue
            if not self._eof:
                return NEED_DATA
            self._close(CloseReason.PEER_CLOSED)

    # ------------------------------------------------------------------ decisions

    def accept(
        self, event: Event, reply: Reply | None = None, *, rewrite: str | None = None
    ) -> None:
        """Say yes to the pending decision ``event``.

        Args:
            reply: a 2xx/3xx reply to send instead of the default one.
            rewrite: for `MailFrom`/`RcptTo` the address to record instead of the client's;
                for `AuthAttempt` the authorization identity to record.

        Raises:
            LocalProtocolError: ``event`` is not the pending decision, or ``reply`` is negative.
        """
        if event is not self._pending or event is None:
            raise self._not_pending(event)
        if reply is not None and not reply.is_positive:
            raise LocalProtocolError(f"accept() needs a 2xx/3xx reply, not {reply.code}")
        if rewrite is not None and not isinstance(event, MailFrom | RcptTo | AuthAttempt):
            raise LocalProtocolError(f"rewrite= has no meaning for {type(event).__name__}")
        self._pending = None
        _ON_ACCEPT[type(event)](self, event, reply, rewrite)

    def _accepted_greeting(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        self._send(reply or self._facts.banner, enhanced=False)
        self._state = _HELO

    def _accepted_helo(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        self._reset_transaction()
        self._helo, self._esmtp = event.domain, event.verb != "HELO"
        self._send(reply or self._helo_reply(event), enhanced=False)
        self._state = _READY

    def _accepted_mail(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        if rewrite is not None:
            event = dataclasses.replace(event, address=rewrite)
        self._envelope = Envelope(mail_from=event)
        self._send(reply or R.SENDER_OK)
        self._state = _MAIL

    def _accepted_rcpt(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        if rewrite is not None:
            event = dataclasses.replace(event, address=rewrite)
        env = self._envelope
        self._envelope = Envelope(mail_from=env.mail_from, rcpt_tos=(*env.rcpt_tos, event))
        self._send(reply or R.RECIPIENT_OK)
        self._state = _RCPT

    def _accepted_start(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        self._start_message()
        if event.command == "DATA":
            self._send(reply or R.START_DATA)
            self._data_reader = DataReader(self._buffer, self.config.crlf_mode)
            self._state = _DATA
        else:
            self._state = _BDAT_CHUNK

    def _accepted_message(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        answer = reply or R.MESSAGE_ACCEPTED
        self._send_per_recipient([answer] * len(self._envelope.rcpt_tos))
        self._finish_message()

    def _accepted_auth(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        self._auth = AuthInfo(
            event.mechanism, rewrite or event.authorization_id, event.authentication_id
        )
        self._send(reply or R.AUTH_SUCCEEDED)
        self._state = _READY

    def _accepted_starttls(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        self._send(reply or R.READY_FOR_TLS)
        self._state = _TLS_HANDSHAKE
        self._events.append(TlsUpgrade(discarded=self._buffer.clear()))

    def _accepted_unknown(self, event: Any, reply: Reply | None, rewrite: str | None) -> None:
        self._send(reply or R.OK)

    def reject(self, event: Event, reply: Reply | None = None) -> None:
        """Say no to the pending decision ``event``, or abort the message in progress.

        ``event`` may also be the latest `DataChunk`/`HeadersComplete` of a message: the rest
        of its content is then read and dropped, and ``reply`` is sent once it has ended.
        A 421 reply closes the session after it is sent.

        Args:
            reply: a 4xx/5xx reply; the default suits the event (550, 535, 500, 554...).

        Raises:
            LocalProtocolError: ``event`` is not the pending decision (or the current
                message's latest content event), or ``reply`` is positive.
        """
        if reply is not None and reply.is_positive:
            raise LocalProtocolError(f"reject() needs a 4xx/5xx reply, not {reply.code}")
        if event is self._last_content and event is not None:
            complete = next((e for e in self._events if isinstance(e, MessageComplete)), None)
            if complete is None:
                self._abort_message("rejected by the application", reply or R.LOCAL_ERROR)
                return
            # The data has already ended: this is the answer to the message, and the content
            # still queued is dropped with it.
            self._events[:] = [
                e for e in self._events if e is not complete and type(e) not in _CONTENT_EVENTS
            ]
            self._pending = event = complete
        if event is not self._pending or event is None:
            raise self._not_pending(event)
        self._pending = None
        answer = reply or self._default_rejection(event)
        if isinstance(event, MessageComplete):
            self._send_per_recipient([answer] * len(self._envelope.rcpt_tos))
            self._finish_message()
        elif isinstance(event, MessageStart) and event.command == "BDAT" and not answer.closes:
            self._start_message()
            self._state = _BDAT_CHUNK
            self._abort_message("rejected by the application", answer)
        else:
            if isinstance(event, RcptTo):
                self._rejected_rcpts += 1
            elif isinstance(event, AuthAttempt):
                self._state = _READY
                self._auth_failures += 1
                if self._auth_failures >= self.config.max_auth_failures and not answer.closes:
                    self._send(answer)
                    self._send(R.TOO_MANY_AUTH_FAILURES)
                    self._close(CloseReason.TOO_MANY_AUTH_FAILURES)
                    return
            elif isinstance(event, UnknownCommand):
                self._error_count += 1
            self._send(answer)
            if isinstance(event, Greeting) and not answer.closes:
                self._state = _REFUSED
        if answer.closes:
            refused = isinstance(event, Greeting)
            self._close(CloseReason.REFUSED if refused else CloseReason.SERVER_CLOSED)
        elif isinstance(event, UnknownCommand):
            self._check_error_limit()

    def reply_per_recipient(self, event: MessageComplete, replies: Sequence[Reply]) -> None:
        """LMTP (RFC 2033 §4.2): answer the message with one reply per accepted recipient.

        Raises:
            LocalProtocolError: not in LMTP mode, ``event`` not pending, or a wrong count.
        """
        if event is not self._pending or event is None:
            raise self._not_pending(event)
        if not self.config.lmtp:
            raise LocalProtocolError("reply_per_recipient() is for LMTP; use accept/reject")
        if len(replies) != len(self._envelope.rcpt_tos):
            raise LocalProtocolError(
                f"{len(self._envelope.rcpt_tos)} recipients but {len(replies)} replies"
            )
        self._pending = None
        self._send_per_recipient(replies)
        self._finish_message()

    # ------------------------------------------------------------------ transport signals

    def tls_established(self) -> None:
        """The transport finished the TLS handshake: the session starts afresh (RFC 3207 §4.2).

        Raises:
            LocalProtocolError: no STARTTLS was accepted.
        """
        if self._state is not _TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established() without an accepted STARTTLS")
        self._tls_active = True
        self._offers_auth = self._facts.auth_possible
        self._helo, self._esmtp, self._auth = None, False, None
        self._reset_transaction()
        self._state = _HELO

    def tls_failed(self) -> None:
        """The TLS handshake failed: the session is over, nothing more can be said."""
        if self._state is not _TLS_HANDSHAKE:
            raise LocalProtocolError("tls_failed() without an accepted STARTTLS")
        self._close(CloseReason.TLS_FAILED)

    def timed_out(self) -> None:
        """The transport's idle or data timeout fired: queue 421 4.4.2 and end the session."""
        self.close(R.TIMEOUT, CloseReason.TIMEOUT)

    def close(
        self, reply: Reply | None = R.SHUTTING_DOWN, reason: CloseReason = CloseReason.SERVER_CLOSED
    ) -> None:
        """End the session now, e.g. on shutdown: queue ``reply`` (default 421 4.3.2).

        A message in progress is aborted. Calling it on a closed session does nothing.
        """
        if self._state is _CLOSED:
            return
        self._pending = None
        if reply is not None and self._state is not _TLS_HANDSHAKE:
            self._send(reply)
        self._close(reason, reply)

    # ------------------------------------------------------------------ internals

    def _not_pending(self, event: Event) -> LocalProtocolError:
        """The error for answering ``event`` when it is not the pending decision."""
        what = "nothing" if self._pending is None else type(self._pending).__name__
        return LocalProtocolError(f"{type(event).__name__} is not pending (pending: {what})")

    def _ask(self, event: Event) -> None:
        """Queue a decision, or take it now if the application left its kind to the core
        (nothing else is queued when a command is parsed, so the order stays the same)."""
        if type(event) in self._auto:
            _ON_ACCEPT[type(event)](self, event, None, None)
        else:
            self._events.append(event)

    def _send(self, reply: Reply, *, enhanced: bool = True) -> None:
        self._outbox += reply._wire[enhanced and self._enhanced]  # what to_bytes() returns

    def _send_per_recipient(self, replies: Sequence[Reply]) -> None:
        if self.config.lmtp:
            for reply in replies:
                self._send(reply)
        else:
            self._send(replies[0])

    def _close(self, reason: CloseReason, reply: Reply | None = None) -> None:
        """End the session; a message still being received is reported aborted first."""
        if self._message_in_progress() and self._content_failure is None:
            self._events.append(MessageAborted(reason=reason.value, reply=reply))
        self._state = _CLOSED
        self._close_reason = reason
        self._pending = None
        self._buffer.clear()

    def _violation(self, reply: Reply, line: bytes = b"") -> None:
        """Answer a client error, report it, and end the session past the error limit."""
        self._send(reply)
        self._events.append(ProtocolViolation(reply=reply, line=line))
        self._error_count += 1
        self._check_error_limit()

    def _check_error_limit(self) -> None:
        if self._error_count >= self.config.max_errors and self._state is not _CLOSED:
            self._send(R.TOO_MANY_ERRORS)
            self._close(CloseReason.TOO_MANY_ERRORS)

    def _reset_transaction(self) -> None:
        if self._state is _BDAT:
            self._events.append(MessageAborted(reason="transaction reset"))
        self._last_content = None
        had = self._envelope.mail_from is not None
        self._envelope = _NO_ENVELOPE
        self._rejected_rcpts = 0
        if had:
            self._events.append(Reset())

    def _start_message(self) -> None:
        self._message_size = 0
        self._content_failure = None
        self._held_cr = b""
        self._headers = HeaderTracker()
        self._last_content = None

    def _finish_message(self) -> None:
        self._last_content = None
        self._data_reader = None
        self._envelope = _NO_ENVELOPE
        self._rejected_rcpts = 0
        self._state = _READY

    def _message_in_progress(self) -> bool:
        state = self._state
        return (
            state is _DATA
            or state is _BDAT
            or (state is _BDAT_CHUNK and self._orphan_chunk_state is None)
        )

    def _abort_message(self, reason: str, reply: Reply | None) -> None:
        """Drop the message in progress; ``reply`` goes out when its data has ended."""
        if self._content_failure is None:
            # content already parsed but not yet handed out is dropped with the message
            self._events[:] = [e for e in self._events if type(e) not in _CONTENT_EVENTS]
            self._events.append(MessageAborted(reason=reason, reply=reply))
            self._content_failure = reply or R.LOCAL_ERROR
        self._last_content = None

    # ---- lines

    def _take_line(self) -> bytes | None:
        """The next command or SASL line without its line end; handles over-long lines."""
        config = self.config
        limit = config.max_auth_line_length if self._state is _AUTH else config.max_line_length
        line = self._buffer.take_line()
        if line is None:
            if len(self._received) > limit:
                self._discarding += self._buffer.clear()
                self._check_overflow(0)
            return None
        if self._discarding or len(line) > limit:
            # However the line arrived, more than max_buffer_size octets before its LF end it
            # (a line within the limit cannot be: max_buffer_size is at least every limit).
            if self._check_overflow(len(line) - 1):
                return None
            self._discarding = 0
            self._refuse_line(R.LINE_TOO_LONG, b"")
            return None
        if line.endswith(b"\r\n"):
            return line[:-2]
        if config.crlf_mode is CrlfMode.STRICT:
            self._refuse_line(R.BARE_LF_COMMAND, line)
            return None
        return line[:-1]

    def _refuse_line(self, reply: Reply, line: bytes) -> None:
        """Refuse a malformed line; inside AUTH the 5xx also ends the exchange (RFC 4954 §4)."""
        if self._state is _AUTH:
            self._end_sasl()
        self._violation(reply, line)

    def _check_overflow(self, more: int) -> bool:
        """End the session once a line runs past max_buffer_size octets without a line end."""
        if self._discarding + more <= self.config.max_buffer_size:
            return False
        self._send(R.BUFFER_OVERFLOW)
        self._close(CloseReason.BUFFER_OVERFLOW)
        return True

    def _on_line(self, raw: bytes) -> None:
        if self._state is _AUTH:
            self._on_sasl_response(raw)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._violation(R.BAD_SYNTAX.with_text("Invalid UTF-8 in command"), raw)
            return
        if "\0" in line or "\r" in line:
            self._violation(R.BAD_SYNTAX.with_text("Invalid character in command"), raw)
            return
        verb, _, arg = line.partition(" ")
        verb, arg = verb.upper(), arg.strip(" ")
        if not verb:
            self._violation(R.BAD_SYNTAX, raw)
            return
        refusal = self._refusal(verb) if self._guarded or self._state is _REFUSED else None
        if refusal is not None:
            if verb == "BDAT" and self.config.chunking:
                self._cmd_bdat(verb, arg, raw, refusal)  # its octets must still be read
            else:
                self._violation(refusal, raw)
            return
        handler = _HANDLERS.get(verb)
        if verb in _GREETINGS and (verb == "LHLO") != self.config.lmtp:
            if self.config.lmtp:
                self._violation(R.UNKNOWN_COMMAND.with_text("This is LMTP: use LHLO"), raw)
                return
            handler = None  # LHLO means nothing in SMTP: the application may answer it
        if handler is None:
            self._events.append(UnknownCommand(verb=verb, argument=arg, line=raw))
        elif verb in _SEQUENCE and self._state not in _SEQUENCE[verb] and verb != "BDAT":
            reply = self._sequence_reply(verb)
            assert reply is not None
            self._violation(reply, raw)
        else:
            handler(self, verb, arg, raw)

    def _refusal(self, verb: str) -> Reply | None:
        """Why the session refuses ``verb`` whatever its place: no service, no TLS, no AUTH."""
        if self._state is _REFUSED:
            return (
                None if verb == "QUIT" else R.BAD_SEQUENCE.with_text("No service here, send QUIT")
            )
        if (
            self.config.tls_mode is TlsMode.REQUIRED
            and not self._tls_active
            and verb not in _BEFORE_TLS
        ):
            return R.TLS_REQUIRED
        if (
            self.config.auth_mode is AuthMode.REQUIRED
            and self._auth is None
            and verb in _NEEDS_AUTH
            and self._state is not _HELO
        ):
            return R.AUTH_REQUIRED
        return None

    def _sequence_reply(self, verb: str) -> Reply | None:
        """The 503 for ``verb`` out of order (RFC 5321 §4.3.2), or None if it is in order."""
        state = self._state
        if state in _SEQUENCE[verb]:
            return None
        if state is _HELO:
            return R.BAD_SEQUENCE.with_text(f"Send {_greeting_verb(self)} first")
        rejected_all = state is _MAIL and verb in ("DATA", "BDAT") and self._rejected_rcpts
        if rejected_all and not self.config.lmtp:  # RFC 2033 §4.2: LMTP says a plain 503
            return R.NO_VALID_RECIPIENTS
        return R.BAD_SEQUENCE.with_text(
            _SEQUENCE_TEXT.get((verb, state), "Bad sequence of commands")
        )

    # ---- commands (each called only in a state `_SEQUENCE` allows; BDAT checks itself)

    def _cmd_helo(self, verb: str, arg: str, raw: bytes) -> None:
        if not arg or " " in arg:
            self._violation(R.BAD_ARGUMENTS.with_text(f"Syntax: {verb} hostname"), raw)
            return
        self._ask(Helo(verb=verb, domain=arg))  # type: ignore[arg-type]  # one of the three

    def _cmd_mail(self, verb: str, arg: str, raw: bytes) -> None:
        parsed = parse_mail(arg, self.config, auth_offered=self._offers_auth)
        if isinstance(parsed, Reply):
            self._violation(parsed, raw)
        else:
            self._ask(parsed)

    def _cmd_rcpt(self, verb: str, arg: str, raw: bytes) -> None:
        if len(self._envelope.rcpt_tos) >= self.config.max_recipients:
            self._send(R.TOO_MANY_RECIPIENTS)
            return
        mail = self._envelope.mail_from
        parsed = parse_rcpt(arg, self.config, smtputf8=mail is not None and mail.smtputf8)
        if isinstance(parsed, Reply):
            self._violation(parsed, raw)
        else:
            self._ask(parsed)

    def _cmd_data(self, verb: str, arg: str, raw: bytes) -> None:
        mail = self._envelope.mail_from
        if arg:
            self._violation(R.BAD_ARGUMENTS.with_text("Syntax: DATA"), raw)
        elif mail is not None and mail.body == "BINARYMIME":
            self._violation(R.BAD_SEQUENCE.with_text("BODY=BINARYMIME requires BDAT"), raw)
        else:
            self._events.append(MessageStart(command="DATA", envelope=self._envelope))

    def _cmd_bdat(self, verb: str, arg: str, raw: bytes, refusal: Reply | None = None) -> None:
        if not self.config.chunking:
            self._events.append(UnknownCommand(verb=verb, argument=arg, line=raw))
            return
        words = arg.split(" ")
        last = len(words) == 2 and words[1].upper() == "LAST"
        size = words[0]
        if (
            len(words) > 2
            or (len(words) == 2 and not last)
            or not (size.isascii() and size.isdigit() and len(size) <= _MAX_BDAT_DIGITS)
        ):
            self._violation(R.BAD_ARGUMENTS.with_text("Syntax: BDAT size [LAST]"), raw)
            return
        self._chunk_left = self._chunk_size = int(size)
        self._chunk_last = last
        failure = refusal or self._sequence_reply(verb)
        if failure is not None:
            # Refused: the chunk's octets must still be read (RFC 3030 §2, §4.2).
            self._content_failure = failure
            self._error_count += 1
            self._events.append(ProtocolViolation(reply=failure, line=raw))
            self._orphan_chunk_state = self._state
            self._state = _BDAT_CHUNK
        elif self._state is _BDAT:
            self._state = _BDAT_CHUNK
        else:
            self._events.append(MessageStart(command="BDAT", envelope=self._envelope))

    def _cmd_rset(self, verb: str, arg: str, raw: bytes) -> None:
        if arg:
            self._violation(R.BAD_ARGUMENTS.with_text("Syntax: RSET"), raw)
            return
        self._reset_transaction()
        self._send(R.OK)
        if self._state is not _HELO:
            self._state = _READY

    def _cmd_noop(self, verb: str, arg: str, raw: bytes) -> None:
        self._send(R.OK)

    def _cmd_quit(self, verb: str, arg: str, raw: bytes) -> None:
        self._quit()

    def _quit(self) -> None:
        self._send(R.BYE)
        self._close(CloseReason.QUIT)

    def _cmd_vrfy(self, verb: str, arg: str, raw: bytes) -> None:
        if not arg:
            self._violation(R.BAD_ARGUMENTS.with_text("Syntax: VRFY address"), raw)
        else:
            self._send(R.CANNOT_VRFY)

    def _cmd_expn(self, verb: str, arg: str, raw: bytes) -> None:
        self._violation(R.NOT_IMPLEMENTED.with_text("EXPN not available"), raw)

    def _cmd_help(self, verb: str, arg: str, raw: bytes) -> None:
        self._send(R.HELP)

    def _cmd_starttls(self, verb: str, arg: str, raw: bytes) -> None:
        if arg:
            self._violation(R.BAD_ARGUMENTS.with_text("Syntax: STARTTLS"), raw)
        elif self.config.tls_mode is TlsMode.FORBIDDEN:
            self._violation(R.NOT_IMPLEMENTED.with_text("STARTTLS not available"), raw)
        elif self._tls_active:
            self._violation(R.BAD_SEQUENCE.with_text("TLS already active"), raw)
        else:
            self._events.append(StartTls())

    def _cmd_auth(self, verb: str, arg: str, raw: bytes) -> None:
        if self.config.auth_mode is AuthMode.FORBIDDEN:
            self._violation(R.NOT_IMPLEMENTED.with_text("AUTH not available"), raw)
            return
        if self._auth is not None:
            self._violation(R.BAD_SEQUENCE.with_text("Already authenticated"), raw)
            return
        if not (self._tls_active or self.config.allow_insecure_auth):
            self._violation(R.ENCRYPTION_REQUIRED, raw)
            return
        name, _, initial = arg.partition(" ")
        if not name:
            self._violation(R.BAD_ARGUMENTS.with_text("Syntax: AUTH mechanism [response]"), raw)
            return
        mechanism = self._facts.mechanisms.get(name.upper())
        if mechanism is None or " " in initial:
            self._violation(R.UNKNOWN_MECHANISM, raw)
            return
        self._sasl = mechanism.start(self.config.hostname)
        if not initial:
            self._sasl_step(None)
        elif initial == "=":
            self._sasl_step(b"")
        else:
            self._sasl_decode_and_step(initial.encode("ascii", "replace"))

    def _on_sasl_response(self, raw: bytes) -> None:
        if raw == b"*":
            self._end_sasl()
            self._violation(R.AUTH_CANCELLED, raw)
        else:
            self._sasl_decode_and_step(raw)

    def _end_sasl(self) -> None:
        self._sasl = None
        self._state = _READY

    def _sasl_decode_and_step(self, encoded: bytes) -> None:
        try:
            decoded = b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._end_sasl()
            self._violation(R.BAD_BASE64)
            return
        self._sasl_step(decoded)

    def _sasl_step(self, response: bytes | None) -> None:
        assert self._sasl is not None
        try:
            result = self._sasl.step(response)
        except SaslSyntaxError as exc:
            self._end_sasl()
            self._violation(R.BAD_BASE64.with_text(" ".join(str(exc).split())))
            return
        if isinstance(result, bytes):
            self._outbox += b"334 " + b64encode(result) + b"\r\n"
            self._state = _AUTH
        else:
            self._end_sasl()
            self._events.append(result)

    def _helo_reply(self, event: Helo) -> Reply:
        first = f"{self.config.hostname} greets {event.domain}"
        if event.verb == "HELO":
            return Reply(250, first)
        lines = [first, *self._facts.extensions]
        if self.config.tls_mode is not TlsMode.FORBIDDEN and not self._tls_active:
            lines.append("STARTTLS")
        if self._offers_auth and self._auth is None:
            lines.append("AUTH " + " ".join(self._facts.mechanisms))
        lines.append("HELP")
        return Reply(250, tuple(lines))

    def _default_rejection(self, event: Event) -> Reply:
        if isinstance(event, AuthAttempt):
            return R.AUTH_FAILED
        if isinstance(event, UnknownCommand):
            return R.UNKNOWN_COMMAND
        if isinstance(event, Greeting):
            return R.NO_SERVICE
        if isinstance(event, StartTls):
            return Reply(454, "TLS not available due to temporary reason", "4.7.0")
        if isinstance(event, Helo):
            return Reply(550, "Access denied", "5.7.1")
        if isinstance(event, MessageStart | MessageComplete):
            return Reply(554, "Transaction failed", "5.0.0")
        if isinstance(event, MailFrom):
            return Reply(550, "Sender address rejected", "5.7.1")
        return R.MAILBOX_UNAVAILABLE

    # ---- content

    def _deliver(self, content: bytes) -> None:
        """Account for and emit content, splitting it where the header block ends."""
        if not content or self._content_failure is not None:
            return
        self._message_size += len(content)
        limit = self.config.max_message_size
        if limit is not None and self._message_size > limit:
            self._abort_message("message too large", R.MESSAGE_TOO_LARGE)
            return
        headers = self._headers
        if not headers.done:
            cut = headers.split(content)
            if cut is not None:
                if cut:
                    self._events.append(DataChunk(data=content[:cut]))
                self._events.append(HeadersComplete())
                content = content[cut:]
        if content:
            self._events.append(DataChunk(data=content))

    def _end_of_content(self) -> None:
        """The message's data has ended: ask about it, or send the reply already decided."""
        if self._held_cr:  # a BDAT chunk's final CR (see _read_chunk)
            self._deliver(self._held_cr)
            self._held_cr = b""
        if self._content_failure is None:
            if not self._headers.done:
                self._events.append(HeadersComplete())
            self._events.append(MessageComplete(envelope=self._envelope, size=self._message_size))
        else:
            self._answer_failed_content(per_recipient=True)

    def _answer_failed_content(self, *, per_recipient: bool) -> None:
        """Send the reply decided while the content streamed; 421 also ends the session."""
        failure = self._content_failure
        assert failure is not None
        count = len(self._envelope.rcpt_tos) if per_recipient else 1
        self._send_per_recipient([failure] * max(1, count))
        if failure.closes:
            self._close(CloseReason.SERVER_CLOSED)
        else:
            self._content_failure = None
            self._finish_message()

    def _read_data(self) -> bool:
        assert self._data_reader is not None
        taken = self._data_reader.read()
        if taken is None:
            return False
        content, finished, had_bare = taken
        if had_bare and self.config.crlf_mode is CrlfMode.STRICT:
            self._abort_message("bare CR or LF", R.BARE_CR_LF)
        self._deliver(content)
        if finished:
            self._end_of_content()
        return True

    def _read_chunk(self) -> None:
        content = self._buffer.take(self._chunk_left)
        self._chunk_left -= len(content)
        if self._orphan_chunk_state is None:
            # A blank line's CR may end this chunk and its LF start the next: while the header
            # block is open, hold a final CR back so HeadersComplete lands before the blank
            # line (DATA never splits a CRLF). A held CR always goes out first next time.
            content, self._held_cr = self._held_cr + content, b""
            if not self._headers.done and content.endswith(b"\r"):
                content, self._held_cr = content[:-1], b"\r"
            self._deliver(content)
        if self._chunk_left:
            return
        if self._orphan_chunk_state is not None:
            # a BDAT out of sequence: its octets are read, now say why it failed
            assert self._content_failure is not None
            self._send(self._content_failure)
            self._content_failure = None
            self._state, self._orphan_chunk_state = self._orphan_chunk_state, None
            self._check_error_limit()
        elif self._chunk_last:
            self._end_of_content()
        elif self._content_failure is not None:
            self._answer_failed_content(per_recipient=False)
        else:
            self._send(Reply(250, f"{self._chunk_size} octets received", "2.0.0"))
            self._state = _BDAT


_NO_ENVELOPE = Envelope()
OUTPUT_LIMIT = 64 * 1024
"""Octets of replies after which parsing waits until they are taken (see `output_full`)."""
_CONTENT_EVENTS = (DataChunk, HeadersComplete)
AUTO_ACCEPTABLE = frozenset({Greeting, Helo, MailFrom, RcptTo})
"""The decisions `SmtpConnection` can take by itself (its ``auto_accept``)."""
_ON_ACCEPT: dict[type, Callable[[SmtpConnection, Any, Reply | None, str | None], None]] = {
    Greeting: SmtpConnection._accepted_greeting,
    Helo: SmtpConnection._accepted_helo,
    MailFrom: SmtpConnection._accepted_mail,
    RcptTo: SmtpConnection._accepted_rcpt,
    MessageStart: SmtpConnection._accepted_start,
    MessageComplete: SmtpConnection._accepted_message,
    AuthAttempt: SmtpConnection._accepted_auth,
    StartTls: SmtpConnection._accepted_starttls,
    UnknownCommand: SmtpConnection._accepted_unknown,
}
"""What accepting each kind of decision does (state changes and the default reply)."""


class _ConfigFacts:
    """What a configuration alone decides, worked out once for all its connections."""

    __slots__ = ("auth_possible", "banner", "config", "extensions", "guarded", "mechanisms")

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.mechanisms = config.sasl_mechanisms()
        self.auth_possible = config.auth_mode is not AuthMode.FORBIDDEN and bool(self.mechanisms)
        self.guarded = config.tls_mode is TlsMode.REQUIRED or config.auth_mode is AuthMode.REQUIRED
        text = config.greeting or ("LMTP" if config.lmtp else "ESMTP") + " ready"
        self.banner = Reply(220, f"{config.hostname} {text}")
        size = f"SIZE {config.max_message_size}" if config.max_message_size else "SIZE"
        offered = (
            (config.pipelining, "PIPELINING"),
            (config.size_extension, size),
            (config.eightbitmime, "8BITMIME"),
            (config.smtputf8, "SMTPUTF8"),
            (config.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (config.chunking, "CHUNKING"),
            (config.binarymime, "BINARYMIME"),
            (config.dsn, "DSN"),
        )
        self.extensions = tuple(name for on, name in offered if on)  # EHLO's fixed part


_FACTS: dict[int, _ConfigFacts] = {}


def _facts_of(config: SmtpConfig) -> _ConfigFacts:
    """The facts of ``config``, by identity (no hashing of its many fields per connection):
    an entry holds its configuration, so no other object can take the id it is kept under."""
    facts = _FACTS.get(id(config))
    if facts is None:
        if len(_FACTS) >= 64:
            _FACTS.clear()
        facts = _FACTS[id(config)] = _ConfigFacts(config)
    return facts


def _greeting_verb(conn: SmtpConnection) -> str:
    return "LHLO" if conn.config.lmtp else "HELO/EHLO"


_GREETINGS = frozenset({"HELO", "EHLO", "LHLO"})
_SEQUENCE: dict[str, tuple[State, ...]] = {
    "MAIL": (_READY,),
    "RCPT": (_MAIL, _RCPT),
    "DATA": (_RCPT,),
    "BDAT": (_RCPT, _BDAT),
    "STARTTLS": (_HELO, _READY),
    "AUTH": (_READY,),
}
"""The states each order-sensitive command is valid in; elsewhere it gets a 503.

Tuples, not sets: membership by identity avoids hashing Enum members in Python code."""
_SEQUENCE_TEXT: dict[tuple[str, State], str] = {
    **{("MAIL", s): "Nested MAIL command" for s in (_MAIL, _RCPT, _BDAT)},
    **{(v, _READY): "Need MAIL command" for v in ("RCPT", "DATA", "BDAT")},
    **{(v, _MAIL): "Need RCPT command" for v in ("DATA", "BDAT")},
    ("RCPT", _BDAT): "RCPT not allowed during BDAT",
    ("DATA", _BDAT): "DATA not allowed during BDAT",
    **{
        (v, s): f"{v} not allowed in a transaction"
        for v in ("STARTTLS", "AUTH")
        for s in (_MAIL, _RCPT, _BDAT)
    },
}
_HANDLERS = {
    "HELO": SmtpConnection._cmd_helo,
    "EHLO": SmtpConnection._cmd_helo,
    "LHLO": SmtpConnection._cmd_helo,
    "MAIL": SmtpConnection._cmd_mail,
    "RCPT": SmtpConnection._cmd_rcpt,
    "DATA": SmtpConnection._cmd_data,
    "BDAT": SmtpConnection._cmd_bdat,
    "RSET": SmtpConnection._cmd_rset,
    "NOOP": SmtpConnection._cmd_noop,
    "QUIT": SmtpConnection._cmd_quit,
    "VRFY": SmtpConnection._cmd_vrfy,
    "EXPN": SmtpConnection._cmd_expn,
    "HELP": SmtpConnection._cmd_help,
    "STARTTLS": SmtpConnection._cmd_starttls,
    "AUTH": SmtpConnection._cmd_auth,
}
