"""openssl s_client as the peer: ``-starttls smtp`` and implicit TLS, the protocol versions a
preset allows, and a whole session typed into s_client after the handshake."""

from __future__ import annotations

import pytest

from ._support import (
    CLIENT_NAME,
    PASSWORD,
    USER,
    Interactive,
    Recorder,
    old_tls_client_flags,
    plain,
    s_client,
    smtp,
    unverified_context,
)
from .conftest import Serve

pytestmark = pytest.mark.network

HANDSHAKE = r"^Protocol version: (TLSv1\.\d)\s*$"
GREETS = f"250-mx.test greets {CLIENT_NAME}"


def test_starttls_session_typed_after_the_handshake(serve: Serve, recorder: Recorder) -> None:
    with (
        serve(recorder, auth_mode="required") as running,
        Interactive(s_client(running.plain, "-starttls", "smtp", "-name", CLIENT_NAME)) as peer,
    ):
        version = peer.expect(HANDSHAKE).group(1)
        cipher = peer.expect(r"^Ciphersuite: (\S+)").group(1)
        assert version in ("TLSv1.2", "TLSv1.3")
        # s_client echoes the last line of the EHLO reply it read before STARTTLS: skip it.
        ehlo = peer.command(f"EHLO {CLIENT_NAME}", "250 ", first=GREETS)
        assert "250-AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo, ehlo
        peer.command(f"AUTH PLAIN {plain(USER, PASSWORD)}", "235 2.7.0")
        peer.command("MAIL FROM:<alice@example.org>", "250 ")
        peer.command("RCPT TO:<bob@example.org>", "250 ")
        peer.command("DATA", "354 ")
        peer.send("Subject: typed into s_client")
        peer.send("")
        peer.send("Hi.")
        peer.command(".", "250 2.0.0")
        peer.command("QUIT", "221 ")
        peer.wait()  # the server closed (its close_notify is test_security's business)
    data, seen = recorder.message()
    assert data == b"Subject: typed into s_client\r\n\r\nHi.\r\n"
    assert seen.authentication_id == USER
    assert (seen.version, seen.cipher) == (version, cipher)


def test_implicit_tls_session(serve: Serve, recorder: Recorder) -> None:
    with (
        serve(recorder, smtps=True) as running,
        Interactive(s_client(running.smtps)) as peer,
    ):
        assert peer.expect(HANDSHAKE).group(1) in ("TLSv1.2", "TLSv1.3")
        peer.expect(r"^220 mx\.test ")
        ehlo = peer.command(f"EHLO {CLIENT_NAME}", "250 ", first=GREETS)
        assert "AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo, ehlo
        peer.command("QUIT", "221 ")
        peer.wait()


@pytest.mark.parametrize(
    ("preset", "client_flag", "negotiated"),
    [
        ("modern", "-tls1_1", None),
        ("modern", "-tls1", None),
        ("modern", "-tls1_2", "TLSv1.2"),
        ("modern", "-tls1_3", "TLSv1.3"),
        ("widest", "-tls1_1", "TLSv1.1"),  # control: the refusals above are the preset's
    ],
)
def test_preset_decides_the_protocol_version(
    serve: Serve, recorder: Recorder, preset: str, client_flag: str, negotiated: str | None
) -> None:
    with serve(recorder, preset=preset) as running:
        argv = s_client(running.plain, "-starttls", "smtp", *old_tls_client_flags(client_flag))
        with Interactive(argv) as peer:
            if negotiated is None:
                # No session. (Only the threads transport sends a protocol_version alert; the
                # memory-BIO TLS of asyncio, trio and anyio closes without flushing it.)
                assert peer.wait() != 0, peer.text()
                assert "Protocol version" not in peer.text(), peer.text()
            else:
                assert peer.expect(HANDSHAKE).group(1) == negotiated
                cipher = peer.expect(r"^Ciphersuite: (\S+)").group(1)
                if negotiated == "TLSv1.2":  # modern: forward secret AEAD only
                    assert cipher.startswith("ECDHE-"), cipher
                    assert "GCM" in cipher or "CHACHA" in cipher, cipher
                peer.command("QUIT", "221 ")
                peer.wait()  # its status is left alone: without close_notify s_client fails
        # Whatever happened to that client, the server still serves the next one.
        with smtp(running.plain) as client:
            client.starttls(context=unverified_context())
            assert client.noop()[0] == 250
