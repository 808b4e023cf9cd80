"""A coverage-guided fuzzer for the sans-IO core (`smtpcore.SmtpConnection`), with atheris.

    pip install atheris
    python tests/fuzz/fuzz_core.py                     # runs until a crash (Ctrl-C to stop)
    python tests/fuzz/fuzz_core.py -runs=200000 -max_len=4096 corpus_dir/
    python tests/fuzz/fuzz_core.py --smoke 2000        # without atheris: random inputs

One input is one session. Its first bytes pick a configuration (CRLF mode, TLS and AUTH modes,
LMTP, small limits) and a starting sub-state (a fresh session, inside an AUTH exchange, right
after STARTTLS with bytes pipelined behind it, inside DATA, inside BDAT); the rest is read as
a sequence of "client sends these bytes in this many chunks" and "the application answers the
pending decision so" steps, including rejecting a message mid-stream, failing or finishing the
TLS handshake, timing out and closing. Everything the core writes is checked to be well-formed
replies, and the security invariants are checked after every step:

* nothing but `LocalProtocolError` ever raises, and that only where the API documents it
  (bytes during the TLS handshake, answering an event that is not pending);
* the receive buffer stays bounded (the line limit plus one read);
* with TLS required, no transaction starts before ``tls_established``; with AUTH required,
  none before an accepted `AuthAttempt`; bytes pipelined behind STARTTLS produce no event;
* ``ConnectionClosed`` is final.

Any other exception, or a broken invariant (AssertionError), is a crash. The pytest suite
runs `one_session` on Hypothesis-generated and random inputs (tests/security), so this file is
exercised in CI without atheris.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from smtpcore import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    AuthMode,
    ConnectionClosed,
    CrlfMode,
    DataChunk,
    Event,
    Greeting,
    HeadersComplete,
    LocalProtocolError,
    MailFrom,
    MessageComplete,
    MessageStart,
    RcptTo,
    Reply,
    SmtpConfig,
    SmtpConnection,
    State,
    TlsMode,
    TlsUpgrade,
)

REPLY_LINE = re.compile(rb"[2-5]\d\d[ -][^\r\n]*")
MAX_LINE = 512
MAX_AUTH_LINE = 600
MAX_BUFFER = 2048
MAX_STEPS = 400

PREFIXES = [
    b"",
    b"EHLO fuzz.test\r\n",
    b"EHLO fuzz.test\r\nAUTH LOGIN\r\n",
    b"EHLO fuzz.test\r\nAUTH PLAIN\r\n",
    b"EHLO fuzz.test\r\nAUTH CRAM-MD5\r\n",
    b"EHLO fuzz.test\r\nSTARTTLS\r\n",
    b"EHLO fuzz.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    b"EHLO fuzz.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 40\r\n",
    b"LHLO fuzz.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
    b"RCPT TO:<e@d.example>\r\nDATA\r\n",
]
"""Where a session starts: the sub-states worth reaching quickly."""

WORDS = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r\n..",
    b"\x00",
    b"\xff",
    b" ",
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"LHLO x\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n",
    b"*\r\n",
    b"dXNlcg==\r\n",
    b"=\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"XFOO\r\n",
]
"""Tokens a step may splice in, so short inputs reach deep states."""


class Input:
    """Consumes the fuzzer's bytes (an atheris-free FuzzedDataProvider)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, options: list) -> object:  # type: ignore[type-arg]
        return options[self.byte() % len(options)]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def make_config(inp: Input) -> tuple[SmtpConfig, bool]:
    flags = inp.byte()
    config = SmtpConfig(
        hostname="mx.fuzz",
        lmtp=bool(flags & 1),
        crlf_mode=inp.pick(list(CrlfMode)),  # type: ignore[arg-type]
        tls_mode=inp.pick(list(TlsMode)),  # type: ignore[arg-type]
        auth_mode=inp.pick(list(AuthMode)),  # type: ignore[arg-type]
        allow_insecure_auth=bool(flags & 2),
        auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"),
        chunking=not flags & 4,
        smtputf8=not flags & 8,
        max_line_length=MAX_LINE,
        max_auth_line_length=MAX_AUTH_LINE,
        max_buffer_size=MAX_BUFFER,
        max_recipients=1 + inp.byte() % 4,
        max_errors=1 + inp.byte() % 30,
        max_auth_failures=1 + inp.byte() % 4,
        max_message_size=inp.pick([None, 64, 1000, 100_000]),  # type: ignore[arg-type]
        relaxed_addresses=bool(flags & 16),
    )
    return config, bool(flags & 32)


def check_output(out: bytes) -> None:
    if not out:
        return
    assert out.endswith(b"\r\n"), out[-50:]
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.fullmatch(line), f"malformed reply line {line[:100]!r}"


class Session:
    """One fuzzed session and the invariants it must keep."""

    def __init__(self, inp: Input) -> None:
        self.inp = inp
        self.config, tls_active = make_config(inp)
        self.conn = SmtpConnection(self.config, tls_active=tls_active)
        self.tls = tls_active
        self.authed = False
        self.closed = False
        self.in_handshake = False
        self.discarded = -1

    def decide(self, event: Event) -> None:
        conn, inp = self.conn, self.inp
        choice = inp.byte()
        if choice % 17 == 16:  # misuse on purpose: answering what is not pending
            other = Greeting()
            before = (conn.state, conn.pending)
            try:
                conn.accept(other)
            except LocalProtocolError:
                assert (conn.state, conn.pending) == before
            else:
                raise AssertionError("accepting a non-pending event did not raise")
        if choice % 5 == 0 and not isinstance(event, MessageComplete):
            code = inp.pick([421, 450, 451, 452, 550, 554, 535, 454, 500, 502, 504])
            cls = str(code)[0]
            conn.reject(event, Reply(code, "fuzz says no", f"{cls}.0.0"))
            return
        if isinstance(event, MessageComplete):
            if self.config.lmtp and choice % 3 == 0:
                replies = [
                    Reply(250, "ok", "2.0.0") if inp.byte() % 2 else Reply(550, "no", "5.0.0")
                    for _ in event.envelope.rcpt_tos
                ]
                conn.reply_per_recipient(event, replies)
                return
            if choice % 5 == 0:
                conn.reject(event, Reply(451, "later", "4.0.0"))
                return
        if isinstance(event, MailFrom | RcptTo | MessageStart):
            if self.config.tls_mode is TlsMode.REQUIRED:
                assert self.tls, f"{type(event).__name__} before TLS with TLS required"
            if self.config.auth_mode is AuthMode.REQUIRED:
                assert self.authed, f"{type(event).__name__} before AUTH with AUTH required"
        if isinstance(event, AuthAttempt):
            if choice % 3:
                conn.reject(event)
                return
            self.authed = True
        rewrite = (
            "x@y.example" if isinstance(event, MailFrom | RcptTo) and choice % 7 == 3 else None
        )
        conn.accept(event, rewrite=rewrite)

    def events(self) -> None:
        conn, inp = self.conn, self.inp
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if event is PAUSED:
                assert conn.state is State.TLS_HANDSHAKE, "PAUSED with nothing to answer"
                return
            assert isinstance(event, Event)
            if self.closed:
                assert isinstance(event, ConnectionClosed)
                return
            if isinstance(event, ConnectionClosed):
                self.closed = True
                assert conn.closed
                return
            if isinstance(event, TlsUpgrade):
                self.in_handshake = True
                self.discarded = event.discarded
                assert conn.state is State.TLS_HANDSHAKE
                return
            if isinstance(event, DataChunk | HeadersComplete) and inp.byte() % 23 == 0:
                conn.reject(event, Reply(inp.pick([451, 552, 554, 421]), "stop", None))
                continue
            if event.needs_reply:
                self.decide(event)

    def step(self) -> bool:
        """One client or transport action; False when the input or the session is over."""
        conn, inp = self.conn, self.inp
        if self.closed or inp.left() == 0:
            return False
        if self.in_handshake:
            try:
                conn.receive_data(b"x")
            except LocalProtocolError:
                pass  # documented: those bytes belong to the TLS layer
            else:
                raise AssertionError("receive_data during the TLS handshake did not raise")
            if inp.byte() % 4:
                conn.tls_established()
                self.tls = True
                self.authed = False
            else:
                conn.tls_failed()
            self.in_handshake = False
            self.events()
            return True
        kind = inp.byte() % 16
        if kind == 0:
            conn.timed_out()
        elif kind == 1:
            conn.close()
        elif kind == 2:
            conn.receive_data(b"")
            self.events()
            check_output(conn.data_to_send())
            return False
        else:
            size = inp.byte()
            data = (
                inp.take(size)
                if kind < 10
                else b"".join(
                    inp.pick(WORDS)
                    for _ in range(1 + size % 8)  # type: ignore[misc]
                )
            )
            pieces = 1 + inp.byte() % 4
            cut = max(1, len(data) // pieces)
            for i in range(0, len(data), cut):
                if conn.closed:
                    break
                conn.receive_data(data[i : i + cut])
                self.events()
                if self.in_handshake:
                    break
        self.events()
        check_output(conn.data_to_send())
        assert len(conn._buffer) <= MAX_BUFFER + 2 * 256 + 8, len(conn._buffer)
        return True


def one_session(data: bytes) -> None:
    """Run one fuzzed session; raises on a crash or a broken invariant."""
    inp = Input(data)
    session = Session(inp)
    session.events()
    prefix = inp.pick(PREFIXES)
    assert isinstance(prefix, bytes)
    if prefix:
        # the sub-state's commands and whatever the client pipelined behind them, in one read
        injected = inp.take(inp.byte() % 64)
        session.conn.receive_data(prefix + injected)
        session.events()
        if session.in_handshake and prefix.endswith(b"STARTTLS\r\n"):
            # bytes pipelined behind an accepted STARTTLS are dropped unread (CVE-2011-0411)
            assert session.discarded == len(injected), (session.discarded, len(injected))
        check_output(session.conn.data_to_send())
    for _ in range(MAX_STEPS):
        if not session.step():
            break


def fuzz_one_input(data: bytes) -> None:
    """The atheris entry point."""
    one_session(data)


def smoke(runs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(runs):
        size = rng.choice([8, 32, 128, 512, 2048])
        data = bytes(rng.getrandbits(8) for _ in range(size))
        try:
            one_session(data)
        except Exception:
            print(f"crash on run {i}: {data!r}", file=sys.stderr)
            raise
    print(f"{runs} random sessions, no crash")


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--smoke":
        smoke(int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
        return
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris (or use --smoke N)")
    atheris.instrument_all()
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
