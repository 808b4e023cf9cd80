"""What TLS and AUTH must withstand: STARTTLS command injection, AUTH on a cleartext channel,
mail before STARTTLS when TLS is required, password guessing, broken or stalled handshakes, a
first command riding with the client's Finished, and the close after QUIT."""

from __future__ import annotations

import socket
import ssl
import time
from contextlib import suppress

import pytest

from ._support import (
    CLIENT_NAME,
    PASSWORD,
    USER,
    RawClient,
    Recorder,
    client_hello,
    handshake_then_send,
    plain,
    smtp,
    smtps,
    unverified_context,
)
from .conftest import Serve

pytestmark = pytest.mark.network


def serves_next_client(address: tuple[str, int], *, implicit_tls: bool = False) -> None:
    """A whole TLS session with a fresh client: the server survived whatever came before."""
    if implicit_tls:
        with smtps(address) as client:
            assert client.noop()[0] == 250
        return
    with smtp(address) as client:
        client.starttls(context=unverified_context())
        client.login(USER, PASSWORD)
        assert (
            client.sendmail("alice@example.org", ["bob@example.org"], b"Subject: ok\r\n\r\n") == {}
        )


# ---------------------------------------------------------------- STARTTLS command injection


@pytest.mark.parametrize(
    "injected",
    [b"RSET\r\n", b"MAIL FROM:<mallory@example.org>\r\n", b"NOOP\r\nMAIL FROM:<m@example.org>\r\n"],
    ids=["rset", "mail", "noop+mail"],
)
def test_commands_sent_with_starttls_are_never_executed(
    serve: Serve, recorder: Recorder, injected: bytes
) -> None:
    """CVE-2011-0411: plaintext after STARTTLS in the same write must be dropped, not read as
    if it had come over TLS. Its reply never arrives, in clear (the handshake would fail) or
    inside TLS (it would come before the EHLO reply), and the handler sees no MAIL."""
    with serve(recorder) as running, RawClient(running.plain) as client:
        client.expect(220)
        client.ehlo()
        client.send(b"STARTTLS\r\n" + injected)
        assert client.expect(220) == ["2.0.0 Ready to start TLS"]
        client.start_tls()  # fails on any plaintext reply queued behind the 220
        extensions = client.ehlo()  # the first reply inside TLS is this EHLO's
        assert "STARTTLS" not in extensions and "AUTH PLAIN LOGIN" in extensions
        client.command("NOOP", 250)
        client.command("MAIL FROM:<alice@example.org>", 250)  # so no MAIL was pending
        client.command("QUIT", 221)
    recorder.wait_for(lambda: recorder.disconnects == 1, "the session's end")
    assert [sender for sender, _ in recorder.senders] == ["alice@example.org"]


def test_first_command_in_the_same_segment_as_the_finished(
    serve: Serve, recorder: Recorder
) -> None:
    """A TLS 1.3 client may send its first command right behind its Finished message, so the
    server reads both at once: the command must be answered, after the handshake."""
    with serve(recorder) as running, RawClient(running.plain) as client:
        client.expect(220)
        client.ehlo()
        client.command("STARTTLS", 220)
        reply = handshake_then_send(client.sock, f"EHLO {CLIENT_NAME}\r\n".encode())
    assert reply.startswith(b"250-mx.test greets client.test\r\n"), reply
    assert b"STARTTLS" not in reply


# ---------------------------------------------------------------- AUTH needs TLS


def test_auth_is_refused_in_cleartext_and_not_advertised(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder) as running, RawClient(running.plain) as client:
        client.expect(220)
        extensions = client.ehlo()
        assert "STARTTLS" in extensions
        assert not any(e.startswith("AUTH") for e in extensions), extensions
        assert client.command(f"AUTH PLAIN {plain(USER, PASSWORD)}", 538) == [
            "5.7.11 Encryption required for requested authentication mechanism"
        ]
        client.command("AUTH LOGIN", 538)
        client.starttls()
        assert "AUTH PLAIN LOGIN" in client.ehlo()
        client.command(f"AUTH PLAIN {plain(USER, PASSWORD)}", 235)
        client.command("MAIL FROM:<alice@example.org>", 250)
    _, seen = recorder.senders[0]
    assert seen.authentication_id == USER and seen.tls_active


def test_tls_required_blocks_mail_before_starttls(serve: Serve, recorder: Recorder) -> None:
    with (
        serve(recorder, tls_mode="required", auth_mode="forbidden") as running,
        RawClient(running.plain) as client,
    ):
        client.expect(220)
        assert "STARTTLS" in client.ehlo()
        for command in ("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.org>", "DATA"):
            assert client.command(command, 530) == ["5.7.0 Must issue a STARTTLS command first"]
        client.command("NOOP", 250)  # allowed before TLS, as are EHLO, RSET and QUIT
        client.starttls()
        client.ehlo()
        client.command("MAIL FROM:<alice@example.org>", 250)
    assert [sender for sender, _ in recorder.senders] == ["alice@example.org"]
    assert recorder.senders[0][1].tls_active


def test_auth_required_blocks_mail_until_auth(serve: Serve, recorder: Recorder) -> None:
    with (
        serve(recorder, tls_mode="required", auth_mode="required") as running,
        RawClient(running.plain) as client,
    ):
        client.expect(220)
        client.ehlo()
        client.starttls()
        client.ehlo()
        assert client.command("MAIL FROM:<alice@example.org>", 530) == [
            "5.7.0 Authentication required"
        ]
        client.command(f"AUTH PLAIN {plain(USER, PASSWORD)}", 235)
        client.command("MAIL FROM:<alice@example.org>", 250)
    assert len(recorder.senders) == 1


def test_authorization_identity_of_someone_else_is_refused(
    serve: Serve, recorder: Recorder
) -> None:
    with serve(recorder, smtps=True) as running, RawClient(running.smtps, implicit_tls=True) as c:
        c.expect(220)
        c.ehlo()
        assert c.command(f"AUTH PLAIN {plain(USER, PASSWORD, authzid='bob')}", 535) == [
            "5.7.8 Authentication credentials invalid"
        ]
        c.command(f"AUTH PLAIN {plain(USER, PASSWORD, authzid=USER)}", 235)


# ---------------------------------------------------------------- password guessing


def test_failures_up_to_the_limit_then_421_and_close(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, smtps=True, max_auth_failures=3) as running:
        with RawClient(running.smtps, implicit_tls=True) as client:
            client.expect(220)
            client.ehlo()
            for guess in ("one", "two"):
                client.command(f"AUTH PLAIN {plain(USER, guess)}", 535)
            client.command(f"AUTH PLAIN {plain(USER, PASSWORD)}", 235)  # below the limit: fine
        with RawClient(running.smtps, implicit_tls=True) as client:
            client.expect(220)
            client.ehlo()
            client.command(f"AUTH PLAIN {plain(USER, 'one')}", 535)
            client.send(b"AUTH LOGIN\r\n")  # the limit counts every mechanism
            client.expect(334)
            client.send(b"YWxpY2U=\r\n")
            client.expect(334)
            client.command("d3Jvbmc=", 535)
            client.send(f"AUTH PLAIN {plain(USER, 'three')}\r\n".encode())
            assert client.expect(535) == ["5.7.8 Authentication credentials invalid"]
            assert client.expect(421) == ["4.7.0 Too many authentication failures, closing channel"]
            assert client.closed_by_server()
        serves_next_client(running.smtps, implicit_tls=True)
    assert recorder.senders == []


def test_a_limit_of_one_closes_at_the_first_failure(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, max_auth_failures=1) as running, RawClient(running.plain) as client:
        client.expect(220)
        client.ehlo()
        client.starttls()
        client.ehlo()
        client.send(f"AUTH PLAIN {plain(USER, 'guess')}\r\n".encode())
        client.expect(535)
        client.expect(421)
        assert client.closed_by_server()


# ---------------------------------------------------------------- broken handshakes


GARBAGE = {
    "http": b"GET / HTTP/1.0\r\n\r\n",
    "bad-record": b"\x16\x03\x01\x00\x05hello",
    "half-client-hello": b"",  # filled in by the test: client_hello()[:40]
    "nothing": b"",
}


def closed_or_reset(sock: socket.socket) -> bool:
    """Read until the server closes (EOF or reset); data before is allowed (an alert)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("garbage", list(GARBAGE))
@pytest.mark.parametrize("where", ["smtps", "starttls"])
def test_aborted_handshake_leaves_the_server_serving(
    serve: Serve, recorder: Recorder, garbage: str, where: str
) -> None:
    """Connect, send garbage or half a ClientHello (or nothing), close: the server drops that
    client and serves the next ones, on both listeners."""
    data = client_hello()[:40] if garbage == "half-client-hello" else GARBAGE[garbage]
    with serve(recorder, smtps=True) as running:
        if where == "smtps":
            sock = socket.create_connection(running.smtps, timeout=5)
        else:
            client = RawClient(running.plain)
            client.expect(220)
            client.ehlo()
            client.command("STARTTLS", 220)
            sock = client.sock
        with sock:
            sock.sendall(data)
            if garbage in ("http", "bad-record"):  # not TLS at all: the server gives up at once
                assert closed_or_reset(sock)
            with suppress(OSError):  # not connected any more if the server closed already
                sock.shutdown(socket.SHUT_WR)  # the rest of the hello never comes
            assert closed_or_reset(sock)
        serves_next_client(running.plain)
        serves_next_client(running.smtps, implicit_tls=True)
        # A session had begun before STARTTLS: on_disconnect runs for it too.
        sessions = 3 if where == "starttls" else 2
        recorder.wait_for(lambda: recorder.disconnects == sessions, f"{sessions} sessions' ends")


def test_stalled_handshake_is_dropped(serve: Serve, recorder: Recorder) -> None:
    """A client that never says hello is closed after tls_handshake_timeout (SMTPS and
    STARTTLS); the 5 s socket timeout only bounds the test."""
    with serve(recorder, smtps=True, tls_handshake_timeout=0.3) as running:
        with socket.create_connection(running.smtps, timeout=5) as idle:
            assert closed_or_reset(idle)
        with RawClient(running.plain) as client:
            client.expect(220)
            client.ehlo()
            client.command("STARTTLS", 220)
            assert closed_or_reset(client.sock)
        serves_next_client(running.smtps, implicit_tls=True)


def test_failed_starttls_handshake_frees_the_connection_slot(
    serve: Serve, recorder: Recorder
) -> None:
    """With max_connections=1, a client that stalls after STARTTLS is dropped at the handshake
    timeout; its session must end (on_disconnect) and its slot serve the next client."""
    with serve(recorder, tls_handshake_timeout=0.3, max_connections=1) as running:
        with RawClient(running.plain) as client:
            client.expect(220)
            client.ehlo()
            client.command("STARTTLS", 220)
            assert closed_or_reset(client.sock)
        assert greeted_soon(running.plain), "the dropped session still holds the only slot"
        recorder.wait_for(lambda: recorder.disconnects >= 1, "on_disconnect")


def greeted_soon(address: tuple[str, int], within: float = 2.0) -> bool:
    """True once a new client gets the 220 banner (not 421 too busy) within ``within`` s:
    the server frees a slot just after closing, so the first try may come too early."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with RawClient(address) as probe:
            if probe.reply()[0] == 220:
                return True
        time.sleep(0.05)
    return False


def test_client_refusing_the_certificate_leaves_the_server_serving(
    serve: Serve, recorder: Recorder
) -> None:
    strict = ssl.create_default_context()  # trusts the system CAs only: our cert is unknown
    with serve(recorder) as running, RawClient(running.plain) as client:
        client.expect(220)
        client.ehlo()
        client.command("STARTTLS", 220)
        with pytest.raises(ssl.SSLCertVerificationError):
            client.start_tls(strict)
        serves_next_client(running.plain)


# ---------------------------------------------------------------- the end of a TLS session


@pytest.mark.parametrize("where", ["starttls", "smtps"])
def test_close_notify_after_quit(serve: Serve, recorder: Recorder, where: str) -> None:
    """RFC 8446 §6.1: each party MUST send close_notify before closing its write side.
    (gnutls-cli says "The TLS connection was non-properly terminated", s_client exits 1.)"""
    with serve(recorder, smtps=True) as running:
        if where == "smtps":
            client = RawClient(running.smtps, implicit_tls=True)
            client.expect(220)
        else:
            client = RawClient(running.plain)
            client.expect(220)
            client.ehlo()
            client.starttls()
        with client:
            client.command("QUIT", 221)
            assert client.sock.recv(65536) == b""  # SSLEOFError without close_notify
