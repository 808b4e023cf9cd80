"""A rule-based state machine drives `SmtpConnection` with commands in any order.

The machine keeps its own model of the session (phase, TLS, authentication, recipients) and
checks after every client step that:

* nothing raises (the machine never misuses the API; a separate rule misuses it on purpose and
  expects `LocalProtocolError` with the connection left untouched);
* every reply line is well formed (``NNN[ -]text CRLF``, one code per multi-line reply);
* exactly one reply comes back per command, in order (N per message in LMTP), plus at most a
  trailing 421 when the core closes the session on an error limit;
* every code is one RFC 5321/3030/4954/3207/2033 allows for that command in that state, and
  the order-sensitive ones get the 503/530 the RFCs prescribe;
* the core's state matches the model, and after QUIT (or any 421) the session reports closed.
"""

from __future__ import annotations

import re
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from smtpcore import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    AuthMode,
    CloseReason,
    ConnectionClosed,
    CrlfMode,
    DataChunk,
    Event,
    Greeting,
    HeadersComplete,
    Helo,
    LocalProtocolError,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageStart,
    RcptTo,
    Reply,
    SmtpConfig,
    SmtpConnection,
    StartTls,
    State,
    TlsMode,
    TlsUpgrade,
    UnknownCommand,
)

CRLF = b"\r\n"
MAX_LINE = 512
REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])([^\r\n]*)\Z")
ENHANCED_PREFIX = re.compile(r"([245])\.\d{1,3}\.\d{1,3} ")
MAX_RCPTS = 3
BEFORE_TLS = {"EHLO", "HELO", "LHLO", "NOOP", "RSET", "QUIT", "STARTTLS"}
NEEDS_AUTH = {"MAIL", "RCPT", "DATA", "BDAT"}

# Codes RFC 5321 §4.3.2 (and the extension RFCs) list per command, beyond the syntax errors.
HELO_CODES = {250, 504, 550, 502}
MAIL_CODES = {250, 552, 451, 452, 550, 553, 503, 455, 555}
RCPT_CODES = {250, 251, 550, 551, 552, 553, 450, 451, 452, 503, 455, 555}
DATA_CODES = {354, 503, 554, 450, 451, 550}
CONTENT_CODES = {250, 552, 554, 451, 452, 450, 550}
BDAT_CODES = {250, 503, 552, 554, 451, 452, 450, 550}
AUTH_CODES = {235, 334, 432, 454, 501, 503, 504, 534, 535, 538}
STARTTLS_CODES = {220, 454, 501}
SYNTAX = {500, 501}

# What the application may answer each decision with (all RFC-listed for the command).
REJECTIONS: dict[type[Event], list[int]] = {
    Greeting: [554],
    Helo: [550, 504, 502],
    MailFrom: [550, 451, 452, 553, 552, 455, 555],
    RcptTo: [550, 551, 552, 553, 450, 451, 452, 455, 555],
    MessageStart: [554, 451, 450, 550],
    MessageComplete: [552, 554, 451, 452, 450, 550],
    AuthAttempt: [535, 454, 534, 432],
    StartTls: [454],
    UnknownCommand: [500, 502, 504],
}
CONTENT_REJECTIONS = [451, 552, 554, 550, 421]


def _reply(code: int) -> Reply:
    cls = "2" if code < 400 else str(code)[0]
    return Reply(code, f"decided {code}", f"{cls}.0.0")


def parse_replies(out: bytes) -> list[int]:
    """Check every reply line is well formed; return one code per (multi-line) reply."""
    assert out == b"" or out.endswith(CRLF), out
    codes: list[int] = []
    continuing: int | None = None
    for raw in out.split(CRLF)[:-1]:
        m = REPLY_LINE.match(raw)
        assert m, f"malformed reply line {raw!r}"
        code = int(m.group(1))
        text = m.group(3).decode("utf-8")  # must be UTF-8 (RFC 6531)
        assert all(c >= " " and c != "\x7f" for c in text), raw
        enhanced = ENHANCED_PREFIX.match(text)
        if enhanced:
            assert enhanced.group(1) == ("2" if code < 400 else str(code)[0]), raw
        if continuing is not None:
            assert code == continuing, f"multi-line reply changes code: {raw!r}"
        if m.group(2) == b"-":
            continuing = code
        else:
            continuing = None
            codes.append(code)
    assert continuing is None, "unterminated multi-line reply"
    return codes


@dataclass
class Model:
    """What the client side believes about the session."""

    config: SmtpConfig
    phase: State = State.GREETING
    tls: bool = False
    authed: bool = False
    rcpts: int = 0
    rejected_rcpts: int = 0
    binarymime: bool = False
    helo_seen: bool = False

    @property
    def closed(self) -> bool:
        return self.phase is State.CLOSED

    def reset_transaction(self) -> None:
        self.rcpts = 0
        self.rejected_rcpts = 0
        self.binarymime = False

    def tls_blocks(self, verb: str) -> bool:
        """RFC 3207 §4: 530 for everything but the pre-TLS commands while TLS is required."""
        return self.config.tls_mode is TlsMode.REQUIRED and not self.tls and verb not in BEFORE_TLS

    def auth_blocks(self, verb: str) -> bool:
        """RFC 4954 §6: 530 5.7.0 while authentication is required and not done."""
        return (
            self.config.auth_mode is AuthMode.REQUIRED
            and not self.authed
            and verb in NEEDS_AUTH
            and self.phase is not State.HELO
        )


@dataclass
class Step:
    """One client step: the bytes sent and what the model allows back."""

    wire: bytes
    allowed: list[set[int]]  # one set per expected reply, in order
    verb: str = ""
    short_after_220: bool = False  # STARTTLS accepted: what was pipelined after it is dropped
    events: list[Event] = field(default_factory=list)


# --------------------------------------------------------------------------- strategies

configs = st.builds(
    SmtpConfig,
    hostname=st.just("mx.test"),
    lmtp=st.booleans(),
    crlf_mode=st.sampled_from(CrlfMode),
    tls_mode=st.sampled_from(TlsMode),
    auth_mode=st.sampled_from(AuthMode),
    auth_mechanisms=st.just(("PLAIN", "LOGIN", "CRAM-MD5")),
    allow_insecure_auth=st.booleans(),
    chunking=st.booleans(),
    max_recipients=st.just(MAX_RCPTS),
    max_errors=st.sampled_from([8, 1000]),
    max_auth_failures=st.sampled_from([2, 1000]),
    max_message_size=st.sampled_from([None, 64]),
    max_line_length=st.just(MAX_LINE),
    max_auth_line_length=st.just(MAX_LINE),
    max_buffer_size=st.just(4 * MAX_LINE),
)
domains = st.sampled_from(["client.example", "[192.0.2.1]", "", "two words"])
MAIL_ARGS = [
    "FROM:<a@b.example>",
    "FROM:<>",
    "from:<a@b.example> SIZE=10",
    "FROM:<a@b.example> SIZE=100000",
    "FROM:<a@b.example> BODY=8BITMIME",
    "FROM:<a@b.example> BODY=BINARYMIME",
    "FROM:<a@b.example> SMTPUTF8",
    "FROM:<a@b.example> RET=FULL ENVID=x",
    "FROM:<a@b.example> AUTH=<>",
    "FROM:<a@b.example> NOPE=1",
    "FROM:<bad",
    "FROM:",
    "",
]
RCPT_ARGS = [
    "TO:<r@x.example>",
    "TO:<Postmaster>",
    "TO:<r@x.example> NOTIFY=SUCCESS ORCPT=rfc822;r@x.example",
    "TO:<r@x.example> NOTIFY=BOGUS",
    "TO:<r@x.example> X=1",
    "TO:bad",
    "",
]
BODY_PIECES = [
    b"Subject: hi\r\n",
    b"\r\n",
    b"line\r\n",
    b".dot\r\n",
    b"..two\r\n",
    b"bare\n",
    b"cr\r",
    b"\n.\n",
    b"\r\n.\n",
    b"MAIL FROM:<x@y.example>\r\n",
    b"\x80\xff",
]
bodies = st.lists(st.sampled_from(BODY_PIECES), max_size=6).map(b"".join)
bdat_payloads = st.lists(
    st.sampled_from([*BODY_PIECES, b"NOOP\r\n", b"QUIT\r\n", b"RSET"]), max_size=5
).map(b"".join)
auth_responses = st.sampled_from(["*", "user", "secret", "!!", "", "cram"])
simple_commands = st.sampled_from(["NOOP", "RSET", "HELP", "VRFY someone", "NOOP x", "QUIT"])


def dot_stuff(body: bytes) -> bytes:
    """The client side of DATA: CRLF at the end, leading dots doubled, then the terminator."""
    if body and not body.endswith(CRLF):
        body += CRLF
    return (CRLF + body).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


# --------------------------------------------------------------------------- the machine


class SmtpSessionMachine(RuleBasedStateMachine):
    """Random client behaviour against one `SmtpConnection` and a random application."""

    def __init__(self) -> None:
        super().__init__()
        self.conn: SmtpConnection | None = None
        self.model: Model | None = None
        self.data: st.DataObject | None = None
        self.content_rejected = False
        self.healthy = True  # False while a check runs: teardown must not mask its failure

    # ---------------------------------------------------------------- plumbing

    @property
    def c(self) -> SmtpConnection:
        assert self.conn is not None
        return self.conn

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    def draw_int(self, hi: int, label: str) -> int:
        assert self.data is not None
        return self.data.draw(st.integers(0, hi), label=label)

    def decide(self, event: Event) -> None:
        """Accept or reject a decision, as a random application would (valid replies only)."""
        conn = self.c
        if isinstance(event, MessageComplete) and conn.config.lmtp and self.draw_int(1, "lmtp"):
            choices = [250, *REJECTIONS[MessageComplete]]
            answers = [
                _reply(choices[self.draw_int(len(choices) - 1, "per-rcpt")])
                for _ in event.envelope.rcpt_tos
            ]
            conn.reply_per_recipient(event, answers)
            return
        roll = self.draw_int(49, type(event).__name__)
        if roll < 30 or (isinstance(event, Greeting) and roll < 45):
            conn.accept(event)
        elif roll == 49:
            conn.reject(event, _reply(421))
        else:
            codes = REJECTIONS[type(event)]
            if roll == 30:
                conn.reject(event)  # the core's default rejection
            else:
                conn.reject(event, _reply(codes[roll % len(codes)]))

    def pump(self) -> list[Event]:
        """Take every event, answering decisions, TLS upgrades and (maybe) content."""
        events: list[Event] = []
        conn = self.c
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return events
            assert event is not PAUSED, "PAUSED with every decision answered"
            assert isinstance(event, Event), event
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
            if isinstance(event, DataChunk | HeadersComplete):
                assert not self.content_rejected, f"{event!r} after the content was rejected"
                if self.draw_int(5, "reject content") == 5:
                    codes = CONTENT_REJECTIONS
                    self.content_rejected = True
                    conn.reject(event, _reply(codes[self.draw_int(len(codes) - 1, "code")]))
            elif isinstance(event, MessageStart):
                self.content_rejected = False
            elif isinstance(event, TlsUpgrade):
                conn.tls_established()
            if event.needs_reply:
                self.decide(event)

    def send(self, step: Step, *, trailing_421_ok: bool = True) -> list[int]:
        """Send a step and check the replies against it; return the codes."""
        conn, model = self.c, self.m
        self.healthy = False
        if step.wire:
            conn.receive_data(step.wire)
        step.events = self.pump()
        codes = parse_replies(conn.data_to_send())
        closed_events = [e for e in step.events if isinstance(e, ConnectionClosed)]
        if conn.closed:
            assert closed_events, "closed without ConnectionClosed"
        reason = closed_events[0].reason if closed_events else None
        if (
            trailing_421_ok
            and reason in (CloseReason.TOO_MANY_ERRORS, CloseReason.TOO_MANY_AUTH_FAILURES)
            and codes[-1:] == [421]
        ):
            codes = codes[:-1]
        expected = step.allowed
        if step.short_after_220 and codes[:1] == [220]:
            expected = expected[:1]
        if conn.closed and reason is not CloseReason.QUIT:
            # the session ended part way (an application 421, an error limit): fewer replies
            assert 1 <= len(codes) <= len(expected), (step.wire, codes, expected)
        else:
            assert len(codes) == len(expected), (step.wire, codes, expected)
        for code, allowed in zip(codes, expected, strict=False):
            assert code in allowed | {421}, (step.wire, code, allowed, model.phase)
            if code == 421:
                assert conn.closed, "421 sent but the session is still open"
        if 221 in codes:
            assert conn.closed and reason is CloseReason.QUIT
        if conn.closed:
            model.phase = State.CLOSED
        self.healthy = True
        return codes

    def command(self, line: str | bytes, allowed: set[int], verb: str) -> int | None:
        wire = (line.encode("utf-8") if isinstance(line, str) else line) + CRLF
        codes = self.send(Step(wire, [allowed], verb))
        return codes[0] if codes else None

    # ---------------------------------------------------------------- state checks

    @invariant()
    def state_matches_model(self) -> None:
        if self.conn is None:
            return
        conn, model = self.c, self.m
        self.healthy = False
        assert conn.state is model.phase, (conn.state, model.phase)
        assert conn.closed == model.closed
        if not model.closed:
            assert conn.pending is None
            assert conn.tls_active == model.tls
            assert (conn.auth is not None) == model.authed
            assert len(conn.envelope.rcpt_tos) == model.rcpts
            in_transaction = (State.MAIL, State.RCPT, State.DATA, State.BDAT)
            assert conn.in_transaction == (model.phase in in_transaction)
        else:
            assert isinstance(conn.next_event(), ConnectionClosed)
            assert conn.data_to_send() == b""
        self.healthy = True

    def open_in(self, *phases: State) -> bool:
        return self.model is not None and self.model.phase in phases

    # ---------------------------------------------------------------- start

    @initialize(config=configs, data=st.data(), steps=st.integers(0, 8))
    def connect(self, config: SmtpConfig, data: st.DataObject, steps: int) -> None:
        self.data = data
        self.open(config)
        self.advance(steps)

    def reconnect(self) -> None:
        """After QUIT or a 421 the next client connects to the same endpoint."""
        while self.m.closed:  # (the new greeting may be answered 421 too)
            self.open(self.m.config)

    def open(self, config: SmtpConfig) -> None:
        self.conn = SmtpConnection(config)
        self.model = Model(config)
        self.content_rejected = False
        codes = self.send(Step(b"", [{220, 554}]))
        model = self.m
        if not model.closed:
            model.phase = State.HELO if codes == [220] else State.REFUSED

    # ---------------------------------------------------------------- commands

    COMMAND_PHASES = (
        State.REFUSED,
        State.HELO,
        State.READY,
        State.MAIL,
        State.RCPT,
        State.BDAT,
        State.CLOSED,  # the rule reconnects first
    )

    def refused(self, verb: str) -> set[int] | None:
        """RFC 5321 §3.1: after a 554 greeting only QUIT is served, all else gets 503."""
        if self.m.phase is State.REFUSED:
            return {221} if verb == "QUIT" else {503}
        return None

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(verb=st.sampled_from(["EHLO", "HELO", "LHLO"]), domain=domains)
    def helo(self, verb: str, domain: str) -> None:
        self.reconnect()
        model = self.m
        lmtp = model.config.lmtp
        allowed = self.refused(verb)
        greeting_verb = verb == "LHLO" if lmtp else verb != "LHLO"
        if allowed is None:
            if not greeting_verb:
                # LMTP refuses HELO/EHLO; SMTP does not know LHLO (the application decides)
                allowed = {500, 502, 503} if lmtp else {250, *REJECTIONS[UnknownCommand]}
            elif not domain or " " in domain:
                allowed = SYNTAX
            else:
                allowed = HELO_CODES
        code = self.command(f"{verb} {domain}".rstrip(" "), allowed, verb)
        if code == 250 and greeting_verb and model.phase is not State.REFUSED:
            model.phase = State.READY
            model.helo_seen = True
            model.reset_transaction()

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(arg=st.sampled_from(MAIL_ARGS))
    def mail(self, arg: str) -> None:
        self.reconnect()
        model = self.m
        allowed = self.refused("MAIL")
        if allowed is None:
            allowed = set()
            if model.tls_blocks("MAIL") or model.auth_blocks("MAIL"):
                allowed.add(530)
            if model.phase is not State.READY:
                allowed.add(503)  # no HELO yet, or a nested MAIL
            if not allowed:
                allowed = MAIL_CODES | SYNTAX
        code = self.command(f"MAIL {arg}".rstrip(" "), allowed, "MAIL")
        if code == 250:
            model.phase = State.MAIL
            model.reset_transaction()
            model.binarymime = "BINARYMIME" in arg

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(arg=st.sampled_from(RCPT_ARGS))
    def rcpt(self, arg: str) -> None:
        self.reconnect()
        model = self.m
        allowed = self.refused("RCPT")
        if allowed is None:
            allowed = set()
            if model.tls_blocks("RCPT") or model.auth_blocks("RCPT"):
                allowed.add(530)
            if model.phase not in (State.MAIL, State.RCPT):
                allowed.add(503)  # RCPT before MAIL, or during BDAT
            elif model.rcpts >= MAX_RCPTS:
                allowed.add(452)  # RFC 5321 §4.5.3.1.10
            if not allowed:
                allowed = RCPT_CODES | SYNTAX
        code = self.command(f"RCPT {arg}".rstrip(" "), allowed, "RCPT")
        if code in (250, 251):
            model.phase = State.RCPT
            model.rcpts += 1
        elif code is not None and code >= 400 and model.phase in (State.MAIL, State.RCPT):
            model.rejected_rcpts += 1

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(arg=st.sampled_from(["", "", "x"]))
    def data_command(self, arg: str) -> None:
        self.reconnect()
        model = self.m
        allowed = self.refused("DATA")
        if allowed is None:
            allowed = set()
            if model.tls_blocks("DATA") or model.auth_blocks("DATA"):
                allowed.add(530)
            if model.phase is not State.RCPT:
                allowed.add(503)  # DATA without a recipient (or during BDAT)
                if model.phase is State.MAIL:
                    allowed.add(554)  # RFC 5321 §3.3: "no valid recipients"
            elif arg:
                allowed.add(501)
            elif model.binarymime:
                allowed.add(503)  # RFC 3030 §3: BINARYMIME needs BDAT
            if not allowed:
                allowed = DATA_CODES
        code = self.command(f"DATA {arg}".rstrip(" "), allowed, "DATA")
        if code == 354:
            model.phase = State.DATA
        # a refused DATA leaves the transaction as it was (the client may RSET or retry)

    @precondition(lambda self: self.open_in(State.DATA))
    @rule(body=bodies)
    def data_content(self, body: bytes) -> None:
        model = self.m
        allowed = set(CONTENT_CODES)
        n = model.rcpts if model.config.lmtp else 1
        self.send(Step(dot_stuff(body), [allowed] * n, "content"))
        if not model.closed:
            model.phase = State.READY
            model.reset_transaction()

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(payload=bdat_payloads, last=st.booleans(), syntax=st.sampled_from(["ok", "ok", "bad"]))
    def bdat(self, payload: bytes, last: bool, syntax: str) -> None:
        """BDAT: whenever its syntax is right and CHUNKING is offered, its octets are read.

        RFC 3030 §2: the chunk follows the command line at once, so a server that refuses
        the command must still read (and drop) exactly that many octets; otherwise they would
        be taken as commands.
        """
        self.reconnect()
        model, config = self.m, self.m.config
        size = f"{len(payload)}{' LAST' if last else ''}"
        line = f"BDAT {size}" if syntax == "ok" else f"BDAT {size} EXTRA"
        in_sequence = model.phase in (State.RCPT, State.BDAT)
        blocked = model.tls_blocks("BDAT") or model.auth_blocks("BDAT")
        if model.phase is State.REFUSED or (model.phase is State.HELO and blocked):
            # no EHLO yet (or none possible), so CHUNKING was never offered: whether the core
            # reads the octets is moot, so none are sent (BDAT 0)
            line = line.replace(f"BDAT {len(payload)}", "BDAT 0")
            # (a malformed size may get 501: the core cannot know how many octets to skip)
            allowed = {503, 501} if model.phase is State.REFUSED else {503, 530, 501}
            self.send(Step(line.encode() + CRLF, [allowed], "BDAT"))
            return
        n = 1
        if not config.chunking:
            # not offered: the core does not know BDAT; the application answers it
            if model.tls_blocks("BDAT"):
                allowed = {530}
            else:
                allowed = {250, *REJECTIONS[UnknownCommand]} | ({530} if blocked else set())
            self.send(Step(line.encode() + CRLF, [allowed], "BDAT"))
            return
        if syntax == "bad":
            allowed = {501} | ({530} if blocked else set())  # (the size is not known)
            self.send(Step(line.encode() + CRLF, [allowed], "BDAT"))
            return
        if blocked:
            allowed = {530} | ({503} if not in_sequence else set())
        elif not in_sequence:
            allowed = {503} | ({554} if model.phase is State.MAIL else set())
        else:
            allowed = BDAT_CODES - {503}
            if last and config.lmtp:
                n = model.rcpts
        codes = self.send(Step(line.encode() + CRLF + payload, [allowed] * n, "BDAT"))
        if model.closed or not codes or blocked or not in_sequence:
            return
        if codes[0] == 250 and not last:
            model.phase = State.BDAT
        else:
            model.phase = State.READY
            model.reset_transaction()

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(commands=st.lists(simple_commands, min_size=1, max_size=4))
    def simple(self, commands: list[str]) -> None:
        """NOOP, RSET, HELP, VRFY, QUIT; several in one write (RFC 2920): a reply each, in order.

        Nothing after QUIT is answered (RFC 5321 §4.1.1.10: the server closes the channel).
        """
        self.reconnect()
        model = self.m
        if "QUIT" in commands:
            commands = commands[: commands.index("QUIT") + 1]
        allowed: list[set[int]] = []
        for command in commands:
            verb = command.split(" ")[0]
            refused = self.refused(verb)
            if refused is not None:
                allowed.append(refused)
            elif model.tls_blocks(verb) and verb != "QUIT":
                allowed.append({530})
            else:
                allowed.append(
                    {"NOOP": {250}, "RSET": {250}, "HELP": {214}, "VRFY": {252}, "QUIT": {221}}[
                        verb
                    ]
                )
        wire = b"".join(c.encode() + CRLF for c in commands)
        codes = self.send(Step(wire, allowed, "simple" if len(commands) == 1 else "pipelined"))
        if model.phase is State.REFUSED or model.closed:
            return
        reset = any(c.startswith("RSET") for c in commands) and 250 in codes
        if reset and model.phase is not State.HELO:
            model.phase = State.READY
            model.reset_transaction()

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(
        mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "XFOO"]),
        initial=st.sampled_from(["", "good", "bad64", "=", "badplain"]),
    )
    def auth(self, mechanism: str, initial: str) -> None:
        self.reconnect()
        model, config = self.m, self.m.config
        allowed = self.refused("AUTH")
        if allowed is None:
            allowed = set()
            if model.tls_blocks("AUTH"):
                allowed.add(530)
            if model.phase is not State.READY or model.authed:
                allowed.add(503)  # AUTH before EHLO, in a transaction, or a second time
            if config.auth_mode is AuthMode.FORBIDDEN:
                allowed.add(502)
            elif not allowed and not (model.tls or config.allow_insecure_auth):
                allowed.add(538)  # RFC 4954 §4 (and §6 for the enhanced code)
            if not allowed:
                allowed = AUTH_CODES | SYNTAX
        argument = {
            "": "",
            "good": b64encode(b"\0user\0secret").decode(),
            "bad64": "!!!",
            "=": "=",
            "badplain": b64encode(b"nonul").decode(),
        }[initial]
        code = self.command(f"AUTH {mechanism} {argument}".rstrip(" "), allowed, "AUTH")
        self._after_auth(code)

    def auth_offered(self) -> bool:
        model, config = self.m, self.m.config
        return (
            config.auth_mode is not AuthMode.FORBIDDEN
            and not model.authed
            and (model.tls or config.allow_insecure_auth)
        )

    @precondition(lambda self: self.open_in(State.AUTH))
    @rule(response=auth_responses)
    def auth_response(self, response: str) -> None:
        line = {
            "*": b"*",
            "user": b64encode(b"user"),
            "secret": b64encode(b"\0user\0secret"),
            "!!": b"!!",
            "": b"",
            "cram": b64encode(b"user " + b"0" * 32),
        }[response]
        allowed = {501} if response == "*" else {235, 334, 501, 535, 454, 534, 432}
        code = self.command(line, allowed, "AUTH response")
        self._after_auth(code)

    def _after_auth(self, code: int | None) -> None:
        model = self.m
        if model.closed or code is None:
            return
        if code == 334:
            model.phase = State.AUTH
        elif model.phase is State.AUTH or code in (235, 535, 501, 454, 534, 432, 504, 538):
            if model.phase in (State.AUTH, State.READY):
                model.phase = State.READY
            if code == 235:
                model.authed = True

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(arg=st.sampled_from(["", "", "x"]), injected=st.sampled_from([b"", b"NOOP\r\n"]))
    def starttls(self, arg: str, injected: bytes) -> None:
        """RFC 3207: plaintext pipelined after STARTTLS is dropped, never answered."""
        self.reconnect()
        model, config = self.m, self.m.config
        allowed = self.refused("STARTTLS")
        if allowed is None:
            allowed = set()
            if model.phase not in (State.HELO, State.READY) or model.tls:
                allowed.add(503)
            if config.tls_mode is TlsMode.FORBIDDEN:
                allowed.add(502)
            if arg:
                allowed.add(501)
            if not allowed:
                allowed = STARTTLS_CODES
        wire = f"STARTTLS {arg}".rstrip(" ").encode() + CRLF + injected
        noop = self.refused("NOOP") or {250}
        step = Step(wire, [allowed, noop] if injected else [allowed], "STARTTLS", True)
        codes = self.send(step)
        if codes[:1] == [220]:
            upgrades = [e for e in step.events if isinstance(e, TlsUpgrade)]
            assert upgrades and upgrades[0].discarded == len(injected)
            model.phase = State.HELO
            model.tls = True
            model.authed = False
            model.reset_transaction()

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES))
    @rule(
        junk=st.one_of(
            st.sampled_from([b"", b"   ", b"\x00NOOP", b"\xff\xfe", b"NO\rOP", b"XYZZY 1"]),
            st.binary(max_size=12).filter(lambda b: b"\n" not in b),
        )
    )
    def junk(self, junk: bytes) -> None:
        self.reconnect()
        model = self.m
        try:
            verb = junk.decode("utf-8").split(" ")[0].upper()
        except UnicodeDecodeError:
            verb = ""
        known = {"EHLO", "HELO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP"}
        known |= {"QUIT", "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH"}
        if verb in known:
            return  # real commands have their own rules
        bad = not verb or b"\0" in junk or b"\r" in junk
        refused = self.refused(verb)
        if refused is not None:
            allowed = refused | ({500} if bad else set())
        elif bad:
            allowed = {500}
        elif model.tls_blocks(verb):
            allowed = {530}
        else:
            allowed = {250, *REJECTIONS[UnknownCommand]}  # the application answers it
        self.command(junk, allowed, "junk")

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES, State.AUTH))
    @rule(size=st.integers(MAX_LINE - 1, 3 * MAX_LINE))
    def overlong(self, size: int) -> None:
        """A line over max_line_length gets 500 5.5.6 (a SASL exchange ends with it).

        (What is pipelined after such a line is test_chunking's and test_fuzz's business.)
        """
        self.reconnect()
        model = self.m
        self.send(Step(b"A" * size + CRLF, [{500}], "over-long line"))
        if not model.closed and model.phase is State.AUTH:
            model.phase = State.READY

    @rule(steps=st.integers(1, 8))
    def advance(self, steps: int) -> None:
        """Walk the happy path a few steps (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA/BDAT...).

        The other rules send anything in any order; this one gets sessions deep enough for
        them to act inside transactions, SASL exchanges and messages.
        """
        assert self.data is not None
        self.reconnect()
        for _ in range(steps):
            model, config = self.m, self.m.config
            phase = model.phase
            if phase is State.CLOSED:
                return
            if phase is State.REFUSED:
                self.quit()
            elif phase is State.HELO:
                self.helo("LHLO" if config.lmtp else "EHLO", "client.example")
            elif phase is State.AUTH and self.data.draw(st.integers(0, 3), label="bare LF") == 3:
                self.bare_lf()
            elif phase is State.AUTH:
                self.auth_response(self.data.draw(auth_responses, label="response"))
            elif phase is State.DATA:
                self.data_content(self.data.draw(bodies, label="body"))
            elif phase is State.READY and model.tls_blocks("MAIL"):
                self.starttls("", b"")
            elif phase is State.READY and (
                model.auth_blocks("MAIL") or (self.auth_offered() and self.data.draw(st.booleans()))
            ):
                mechanism = self.data.draw(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]))
                self.auth(mechanism, self.data.draw(st.sampled_from(["", "good"])))
            elif phase is State.READY:
                self.mail(MAIL_ARGS[0])
            elif phase is State.MAIL or (phase is State.RCPT and model.rcpts < 2 and steps > 5):
                self.rcpt(RCPT_ARGS[0])
            elif config.chunking and (phase is State.BDAT or self.data.draw(st.booleans())):
                payload = self.data.draw(bdat_payloads, label="chunk")
                self.bdat(payload, self.data.draw(st.booleans(), label="last"), "ok")
            else:
                self.data_command("")
            self.state_matches_model()

    @precondition(lambda self: self.open_in(*SmtpSessionMachine.COMMAND_PHASES, State.AUTH))
    @rule()
    def bare_lf(self) -> None:
        """``NOOP<LF>``: STRICT answers 500 (a SASL exchange ends with it); else it is a line.

        RFC 4954 §4: a 5xx to a SASL response ends the AUTH command, so what comes next is
        a command again, not another response.
        """
        self.reconnect()
        model = self.m
        in_auth = model.phase is State.AUTH
        if model.config.crlf_mode is CrlfMode.STRICT:
            allowed = {500}
        elif in_auth:
            allowed = {235, 334, 501, 535, 454, 534, 432}
        else:
            allowed = self.refused("NOOP") or {250}
        code = self.send(Step(b"NOOP\n", [allowed], "bare LF"))[0]
        if in_auth:
            if model.config.crlf_mode is CrlfMode.STRICT and not model.closed:
                model.phase = State.READY
            else:
                self._after_auth(code)

    def quit(self) -> None:
        self.command("QUIT", {221}, "QUIT")
        assert self.c.closed
        assert self.m.closed

    @rule(which=st.sampled_from(["stale", "positive-reject", "tls", "negative-accept"]))
    def misuse(self, which: str) -> None:
        """API misuse raises LocalProtocolError and changes nothing (closed sessions too)."""
        conn = self.c
        before = (conn.state, conn.pending, conn.error_count, len(conn._buffer))
        action: Callable[[], None] = {
            "stale": lambda: conn.accept(Helo(verb="EHLO", domain="x")),
            "positive-reject": lambda: conn.reject(Helo(verb="EHLO", domain="x"), Reply(250)),
            "tls": conn.tls_established,
            "negative-accept": lambda: conn.accept(Helo(verb="EHLO", domain="x"), Reply(550)),
        }[which]
        try:
            action()
        except LocalProtocolError:
            pass
        else:
            raise AssertionError(f"{which} misuse did not raise")
        assert (conn.state, conn.pending, conn.error_count, len(conn._buffer)) == before
        assert conn.data_to_send() == b""

    def teardown(self) -> None:
        """The peer goes away: the core ends the session quietly."""
        if self.conn is None or self.c.closed or not self.healthy:
            return  # nothing to close, or a failure is already on its way out
        self.c.receive_data(b"")
        events = self.pump()
        assert events and events[-1] == ConnectionClosed(reason=CloseReason.PEER_CLOSED)
        if self.m.phase in (State.DATA, State.BDAT) and not self.content_rejected:
            assert any(isinstance(e, MessageAborted) for e in events)
        assert self.c.data_to_send() == b""


STATEFUL_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=25,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestSmtpSession = SmtpSessionMachine.TestCase
TestSmtpSession.settings = STATEFUL_SETTINGS
