"""Chunking invariance: how the wire bytes are split into reads never changes what happens.

A session is generated as a realistic client script (greetings, envelopes with and without
parameters, DATA bodies with dot lines, bare LF/CR and SMTP smuggling sequences, BDAT chunks,
RSET, NOOP, AUTH exchanges, junk and over-long lines, QUIT). Its bytes fed whole, cut at
arbitrary points, or one byte at a time must give the same (merged) events and the same output.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpcore import (
    AuthAttempt,
    AuthMode,
    CrlfMode,
    DataChunk,
    Event,
    Greeting,
    HeadersComplete,
    Helo,
    MailFrom,
    MessageAborted,
    MessageComplete,
    RcptTo,
    Reply,
    SmtpConfig,
    SmtpConnection,
    UnknownCommand,
)
from tests.helpers import feed, merged, pump

CRLF = b"\r\n"
MAX_LINE = 512
MAX_AUTH_LINE = 1024
MAX_BUFFER = 4096

MODES = [
    pytest.param(CrlfMode.STRICT, False, id="strict"),
    pytest.param(CrlfMode.NORMALIZE, False, id="normalize"),
    pytest.param(CrlfMode.LEAVE, False, id="leave"),
    pytest.param(CrlfMode.NORMALIZE, True, id="lmtp"),
]

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def make_config(crlf_mode: CrlfMode, lmtp: bool) -> SmtpConfig:
    return SmtpConfig(
        hostname="mx.test",
        lmtp=lmtp,
        crlf_mode=crlf_mode,
        auth_mode=AuthMode.OPTIONAL,
        allow_insecure_auth=True,
        max_line_length=MAX_LINE,
        max_auth_line_length=MAX_AUTH_LINE,
        max_buffer_size=MAX_BUFFER,
        max_recipients=5,
        max_errors=30,
        max_auth_failures=3,
    )


# --------------------------------------------------------------------------- the decider


def decide(conn: SmtpConnection, event: Event) -> None:
    """Answer decisions as a function of the event only, so every chunking sees the same."""
    refused = (
        (isinstance(event, RcptTo) and event.address.startswith("no"))
        or (isinstance(event, AuthAttempt) and not event.verify("secret"))
        or isinstance(event, UnknownCommand)
    )
    if refused:
        conn.reject(event)
    elif isinstance(event, MessageComplete) and conn.config.lmtp:
        ok, full = Reply(250, "Delivered", "2.0.0"), Reply(452, "Mailbox full", "4.2.2")
        answers = [ok if i % 2 == 0 else full for i in range(len(event.envelope.rcpt_tos))]
        conn.reply_per_recipient(event, answers)
    else:
        conn.accept(event)


# --------------------------------------------------------------------------- script strategies


def _line(text: bytes) -> bytes:
    return text + CRLF


def _b64(raw: bytes) -> bytes:
    return b64encode(raw)


greetings = st.sampled_from(
    [b"EHLO client.example", b"HELO client.example", b"LHLO client.example", b"EHLO", b"ehlo a b"]
).map(_line)

MAIL_PARAMS = [
    b" SIZE=100",
    b" SIZE=99999999999",
    b" SIZE=x",
    b" BODY=8BITMIME",
    b" BODY=7BIT",
    b" BODY=BINARYMIME",
    b" SMTPUTF8",
    b" RET=HDRS",
    b" ENVID=abc+2B",
    b" AUTH=<>",
    b" FOO=bar",
]
mail_cmds = st.builds(
    lambda path, params: _line(b"MAIL FROM:" + path + b"".join(params)),
    st.sampled_from([b"<a@b.example>", b"<>", b" <x@y.example>", b"<bad", b"a@b.example"]),
    st.lists(st.sampled_from(MAIL_PARAMS), max_size=3),
)
RCPT_PARAMS = [b" NOTIFY=SUCCESS,FAILURE", b" NOTIFY=NEVER", b" ORCPT=rfc822;r@x.example", b" X=1"]
rcpt_cmds = st.builds(
    lambda path, params: _line(b"RCPT TO:" + path + b"".join(params)),
    st.sampled_from(
        [b"<r@x.example>", b"<no@x.example>", b"<Postmaster>", b"bad", b"<q@y.example>"]
    ),
    st.lists(st.sampled_from(RCPT_PARAMS), max_size=2),
)

BODY_PIECES = [
    b"Subject: test\r\n",
    b"From: a@b.example\r\n",
    b"\r\n",
    b"body line\r\n",
    b"..leading dot\r\n",
    b".hidden\r\n",
    b"\n",
    b"\r",
    b"bare LF\n",
    b"bare CR\r",
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n..\r\n",
    b"MAIL FROM:<smuggled@x.example>\r\n",
    b"\x00\xff\x80",
]
body_bytes = st.lists(
    st.one_of(st.sampled_from(BODY_PIECES), st.binary(max_size=12)), max_size=12
).map(b"".join)

data_blocks = st.builds(lambda body: b"DATA\r\n" + body + b"\r\n.\r\n", body_bytes)


@st.composite
def bdat_blocks(draw: st.DrawFn) -> bytes:
    """One or more BDAT chunks (the last one usually LAST), sizes usually exact."""
    out = b""
    count = draw(st.integers(1, 3))
    for i in range(count):
        payload = draw(body_bytes)
        size = len(payload) + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
        size = max(size, 0)
        last = b" LAST" if i == count - 1 and draw(st.integers(0, 4)) else b""
        out += b"BDAT %d%s\r\n" % (size, last) + payload
    return out


envelopes = st.builds(
    lambda mail, rcpts, content: mail + b"".join(rcpts) + content,
    mail_cmds,
    st.lists(rcpt_cmds, min_size=0, max_size=3),
    st.one_of(data_blocks, bdat_blocks(), st.just(b"")),
)

auth_exchanges = st.sampled_from(
    [
        b"AUTH PLAIN " + _b64(b"\0user\0secret") + CRLF,
        b"AUTH PLAIN " + _b64(b"\0user\0wrong") + CRLF,
        b"AUTH PLAIN\r\n" + _b64(b"\0user\0secret") + CRLF,
        b"AUTH LOGIN\r\n" + _b64(b"user") + CRLF + _b64(b"secret") + CRLF,
        b"AUTH LOGIN " + _b64(b"user") + CRLF + _b64(b"nope") + CRLF,
        b"AUTH PLAIN\r\n*\r\n",
        b"AUTH PLAIN !!!notbase64\r\n",
        b"AUTH PLAIN =\r\n",
        b"AUTH FOO\r\n",
        b"AUTH PLAIN\r\n" + b"A" * (MAX_AUTH_LINE + 10) + CRLF,
        b"AUTH PLAIN\r\n" + b"A" * (MAX_LINE + 8) + CRLF,
    ]
)

simple_cmds = st.sampled_from(
    [
        b"RSET\r\n",
        b"NOOP\r\n",
        b"NOOP x\r\n",
        b"HELP\r\n",
        b"VRFY x\r\n",
        b"EXPN y\r\n",
        b"RSET x\r\n",
    ]
)

junk_lines = st.one_of(
    st.binary(max_size=30).filter(lambda b: b"\n" not in b).map(_line),
    st.sampled_from([b"\r\n", b"NOOP\n", b"\x00NOOP\r\n", b"XYZZY arg\r\n", b"\xff\xfe\r\n"]),
)


def overlong(limit: int) -> st.SearchStrategy[bytes]:
    """A line longer than the line limit but never longer than ``limit`` octets."""
    return st.integers(MAX_LINE - 4, limit - 2).map(lambda n: b"X" * n + CRLF)


quits = st.just(b"QUIT\r\n")


def scripts(max_overlong: int = MAX_BUFFER) -> st.SearchStrategy[bytes]:
    """A whole client script: a list of steps, usually starting with a greeting."""
    step = st.one_of(
        greetings,
        envelopes,
        simple_cmds,
        auth_exchanges,
        mail_cmds,
        rcpt_cmds,
        data_blocks,
        bdat_blocks(),
        junk_lines,
        overlong(max_overlong),
        quits,
    )
    return st.builds(
        lambda first, steps: first + b"".join(steps),
        st.one_of(greetings, st.just(b"")),
        st.lists(step, max_size=8),
    )


# --------------------------------------------------------------------------- driving


def run(
    config: SmtpConfig, chunks: Sequence[bytes], auto_accept: Sequence[type[Event]] = ()
) -> tuple[list[Event], bytes]:
    """Feed ``chunks`` (none empty), then the peer's EOF; every event and output byte."""
    assert all(chunks), "an empty chunk would mean EOF"
    conn = SmtpConnection(config, auto_accept=auto_accept)
    events, out = feed(conn, chunks, decide)
    if not conn.closed:
        conn.receive_data(b"")
        events += pump(conn, decide)
        out += conn.data_to_send()
    assert conn.closed
    return events, out


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p for p in points if 0 < p < len(wire)}), len(wire)]
    return [wire[a:b] for a, b in pairwise(bounds) if b > a]


def canonical(events: list[Event]) -> list[Event]:
    """`merged` events, minus the content of messages that end in `MessageAborted`.

    The core streams content, so how much of an aborted message was handed out before the
    abort (bare CR/LF in STRICT mode, size limit) depends on where reads end; the application
    drops all of it (`MessageAborted`), so only that content is exempt from the comparison.
    """
    out: list[Event] = []
    held: list[Event] = []
    for event in merged(events):
        if isinstance(event, DataChunk | HeadersComplete):
            held.append(event)
            continue
        if not isinstance(event, MessageAborted):
            out += held
        held = []
        out.append(event)
    return merged(out + held)


def check_same(config: SmtpConfig, wire: bytes, chunks: list[bytes]) -> None:
    assert b"".join(chunks) == wire
    whole_events, whole_out = run(config, [wire] if wire else [])
    split_events, split_out = run(config, chunks)
    assert split_out == whole_out
    assert canonical(split_events) == canonical(whole_events)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize(("crlf_mode", "lmtp"), MODES)
@SETTINGS
@given(wire=scripts(max_overlong=MAX_BUFFER), data=st.data())
def test_arbitrary_cut_points(
    crlf_mode: CrlfMode, lmtp: bool, wire: bytes, data: st.DataObject
) -> None:
    points = data.draw(st.lists(st.integers(0, max(len(wire), 1)), max_size=40), label="cuts")
    check_same(make_config(crlf_mode, lmtp), wire, cut(wire, points))


@pytest.mark.parametrize(("crlf_mode", "lmtp"), MODES)
@settings(SETTINGS, max_examples=25)
@given(wire=scripts(max_overlong=MAX_BUFFER))
def test_byte_at_a_time(crlf_mode: CrlfMode, lmtp: bool, wire: bytes) -> None:
    check_same(make_config(crlf_mode, lmtp), wire, [wire[i : i + 1] for i in range(len(wire))])


ALWAYS_ACCEPTED = (Greeting, Helo, MailFrom)
"""The decisions `decide` accepts whatever they hold: the core may take them by itself."""


@pytest.mark.parametrize(("crlf_mode", "lmtp"), MODES)
@SETTINGS
@given(wire=scripts(max_overlong=MAX_BUFFER), data=st.data())
def test_auto_accept_is_accepting_unseen(
    crlf_mode: CrlfMode, lmtp: bool, wire: bytes, data: st.DataObject
) -> None:
    """Left to the core, those decisions give the bytes and events of accepting them by hand,
    minus the events themselves, however the input is cut."""
    config = make_config(crlf_mode, lmtp)
    points = data.draw(st.lists(st.integers(0, max(len(wire), 1)), max_size=40), label="cuts")
    by_hand_events, by_hand_out = run(config, [wire] if wire else [])
    auto_events, auto_out = run(config, cut(wire, points), auto_accept=ALWAYS_ACCEPTED)
    assert auto_out == by_hand_out
    unseen = [e for e in by_hand_events if not isinstance(e, ALWAYS_ACCEPTED)]
    assert canonical(auto_events) == canonical(unseen)
    assert not any(isinstance(e, ALWAYS_ACCEPTED) for e in auto_events)


@st.composite
def message_sessions(draw: st.DrawFn, lmtp: bool) -> bytes:
    """Only well-formed transactions: every byte after the greeting is envelope or content."""
    wire = b"LHLO client.example\r\n" if lmtp else b"EHLO client.example\r\n"
    for _ in range(draw(st.integers(1, 3))):
        wire += b"MAIL FROM:<a@b.example>\r\n"
        wire += b"".join(draw(st.lists(st.sampled_from(RCPTS), min_size=1, max_size=3)))
        if draw(st.booleans()):
            wire += b"DATA\r\n" + draw(stuffed_bodies) + b".\r\n"
        else:
            chunks = draw(st.lists(body_bytes, min_size=1, max_size=3))
            for i, chunk in enumerate(chunks):
                last = b" LAST" if i == len(chunks) - 1 else b""
                wire += b"BDAT %d%s\r\n" % (len(chunk), last) + chunk
        wire += draw(st.sampled_from([b"", b"NOOP\r\n", b"RSET\r\n"]))
    return wire + draw(st.sampled_from([b"", b"QUIT\r\n"]))


RCPTS = [b"RCPT TO:<r@x.example>\r\n", b"RCPT TO:<s@x.example>\r\n", b"RCPT TO:<t@y.example>\r\n"]


def dot_stuff(body: bytes) -> bytes:
    """What a client sends for ``body``: CRLF-terminated, leading dots doubled."""
    if body and not body.endswith(CRLF):
        body += CRLF
    return (CRLF + body).replace(b"\r\n.", b"\r\n..")[2:]


stuffed_bodies = body_bytes.map(dot_stuff)


@pytest.mark.parametrize(("crlf_mode", "lmtp"), MODES)
@SETTINGS
@given(data=st.data())
def test_message_content_cut_points(crlf_mode: CrlfMode, lmtp: bool, data: st.DataObject) -> None:
    """Envelopes and contents only (no junk lines), cut anywhere or fed byte by byte."""
    wire = data.draw(message_sessions(lmtp), label="wire")
    if data.draw(st.integers(0, 3), label="byte at a time") == 3:
        chunks = [wire[i : i + 1] for i in range(len(wire))]
    else:
        points = data.draw(st.lists(st.integers(0, len(wire)), max_size=60), label="cuts")
        chunks = cut(wire, points)
    check_same(make_config(crlf_mode, lmtp), wire, chunks)


@SETTINGS
@given(
    before=st.lists(st.one_of(greetings, simple_cmds), max_size=3).map(b"".join),
    size=st.integers(MAX_BUFFER - 2, 2 * MAX_BUFFER),
    after=st.lists(simple_cmds, max_size=3).map(b"".join),
    data=st.data(),
)
def test_line_longer_than_buffer_limit(
    before: bytes, size: int, after: bytes, data: st.DataObject
) -> None:
    """A command line longer than max_buffer_size gets the same answer however it arrives."""
    wire = before + b"X" * size + CRLF + after
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=10), label="cuts")
    check_same(make_config(CrlfMode.NORMALIZE, False), wire, cut(wire, points))
