"""SMTP smuggling (CVE-2023-51764/51765/51766 family): only ``CRLF . CRLF`` ends DATA.

For every end-of-data look-alike, the client sends a message whose body holds the look-alike,
then a whole smuggled transaction (MAIL FROM/RCPT TO/DATA/body), then the real terminator.
Whatever the CRLF mode, at most one message may be accepted; its content must be exactly what
the client sent, dot-unstuffed and normalised per the mode (computed here by an independent
line-by-line model), and the smuggled commands must never run.
"""

from __future__ import annotations

import re

import pytest

from smtpcore import CrlfMode, DataChunk, MailFrom, MessageComplete, SmtpConfig, SmtpConnection
from tests.helpers import feed

from . import figures
from ._support import EHLO, RCPT, Client, Recorder

# Every look-alike a vulnerable server (or a relay in front of it) might take for the end.
VARIANTS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\r\n.\r\r\n",
    b"\n\r.\r\n",
    b"\r\n \r\n.\n",
    b"\r\n.\x20\r\n",
]

SMUGGLED = (
    b"MAIL FROM:<attacker@evil.example>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"From: boss@example.net\r\nSubject: smuggled\r\n\r\nWire the money.\r\n"
)
MODES = [CrlfMode.STRICT, CrlfMode.NORMALIZE, CrlfMode.LEAVE]


def smuggling_body(variant: bytes) -> bytes:
    """What the client sends after 354, up to (not including) the genuine terminator."""
    return b"From: a@example.org\r\nSubject: hello\r\n\r\nfirst line" + variant + SMUGGLED


def model(sent: bytes, mode: CrlfMode) -> bytes | None:
    """The content a correct server delivers for ``sent`` (None: the message is refused).

    Independent of the core's code: split into CRLF lines, drop one leading dot per line
    (RFC 5321 §4.5.2), then apply the mode to any CR or LF left inside a line.
    """
    lines = sent.split(b"\r\n")
    assert lines[-1] == b"", "the content ends with CRLF before the terminator"
    unstuffed = [line[1:] if line.startswith(b".") else line for line in lines[:-1]]
    bare = any(b"\r" in line or b"\n" in line for line in unstuffed)
    if mode is CrlfMode.STRICT:
        return None if bare else b"".join(line + b"\r\n" for line in unstuffed)
    if mode is CrlfMode.NORMALIZE:
        unstuffed = [re.sub(rb"\n", b"\r\n", line) for line in unstuffed]
    return b"".join(line + b"\r\n" for line in unstuffed)


@pytest.mark.parametrize("variant", VARIANTS, ids=repr)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_core_never_ends_data_on_a_look_alike(
    variant: bytes, mode: CrlfMode, chunking: str
) -> None:
    """The sans-IO core, fed whole or one byte at a time (every split point)."""
    sent = smuggling_body(variant)
    wire = EHLO + b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n" + sent + b".\r\nQUIT\r\n"
    conn = SmtpConnection(SmtpConfig(hostname="mx.test", crlf_mode=mode))
    chunks = [wire] if chunking == "whole" else [wire[i : i + 1] for i in range(len(wire))]
    events, out = feed(conn, chunks)
    figures.count("attacks.smuggling.core")
    mails = [e for e in events if isinstance(e, MailFrom)]
    completes = [e for e in events if isinstance(e, MessageComplete)]
    content = b"".join(e.data for e in events if isinstance(e, DataChunk))
    codes = [int(line[:3]) for line in out.decode().split("\r\n")[:-1]]
    expected = model(sent, mode)
    assert [m.address for m in mails] == ["a@example.org"], "a smuggled MAIL FROM ran"
    if expected is None:
        assert completes == [] and codes[-2:] == [550, 221], codes
    else:
        assert len(completes) == 1 and codes[-2:] == [250, 221], codes
        assert content == expected


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_transport_accepts_at_most_one_message(transport: str, serve, mode: CrlfMode) -> None:
    """Over a real socket, for every variant, sent in one write and in three writes."""
    handler = Recorder()
    config = SmtpConfig(hostname="mx.test", crlf_mode=mode)
    with serve(handler, config=config) as server:
        expected_messages: list[bytes] = []
        for variant in VARIANTS:
            sent = smuggling_body(variant)
            cut = sent.index(variant)
            for writes in (
                [sent + b".\r\n"],
                [sent[:cut], sent[cut : cut + 2], sent[cut + 2 :] + b".\r\n"],
            ):
                with Client(server.address) as client:
                    client.greet()
                    client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT + b"DATA\r\n")
                    assert client.codes(3) == [250, 250, 354]
                    for write in writes:
                        client.send(write)
                    final = client.reply()
                    client.send(b"QUIT\r\n")
                    assert client.code() == 221
                    # nothing else: no reply to a smuggled command ever comes back
                    assert client.rest(timeout=2.0) == ([], "eof")
                figures.count("attacks.smuggling.transport")
                expected = model(sent, mode)
                if expected is None:
                    assert (final.code, final.enhanced) == (550, "5.6.0"), (variant, final)
                else:
                    assert final.code == 250, (variant, final)
                    expected_messages.append(expected)
        assert handler.wait_for(lambda: len(handler.messages) >= len(expected_messages))
        with handler.cond:
            assert [m.data for m in handler.messages] == expected_messages
            assert {a for a, _ in handler.mail_froms} == {"a@example.org"}
            assert "victim@example.net" not in handler.rcpts


def test_bdat_content_holding_a_terminator_is_content(transport: str, serve) -> None:
    """BDAT counts octets: a ``CRLF . CRLF`` inside a chunk is content, not an end."""
    handler = Recorder()
    with serve(handler) as server, Client(server.address) as client:
        client.greet()
        chunk = b"Subject: x\r\n\r\nbody\r\n.\r\n" + SMUGGLED
        client.send(b"MAIL FROM:<a@example.org>\r\n" + RCPT)
        client.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        assert client.codes(3) == [250, 250, 250]
        client.send(b"QUIT\r\n")
        assert client.code() == 221
        assert handler.wait_for(lambda: len(handler.messages) == 1)
        assert handler.messages[0].data == chunk
        assert {a for a, _ in handler.mail_froms} == {"a@example.org"}
        figures.count("attacks.smuggling.transport")
