"""gnutls-cli as the peer (another TLS stack than OpenSSL): ``--starttls-proto=smtp`` with the
server certificate verified, and an EHLO after TLS that no longer offers STARTTLS."""

from __future__ import annotations

import pytest

from ._support import CLIENT_NAME, PASSWORD, USER, Interactive, Recorder, plain, tool
from .conftest import CertFiles, Serve

pytestmark = pytest.mark.network


def gnutls_cli(address: tuple[str, int], cert_files: CertFiles, *args: str) -> list[str]:
    """gnutls-cli trusting only the test certificate, so the handshake verifies it (the name
    checked is the address: the certificate must carry 127.0.0.1 as an IP SAN). Lines are sent
    with CRLF by `Interactive`: ``--crlf`` converts only the last LF of what it reads at once."""
    return [
        tool("gnutls-cli"),
        "--x509cafile",
        str(cert_files.cert),
        "--port",
        str(address[1]),
        *args,
        address[0],
    ]


def test_gnutls_starttls_then_ehlo_and_auth(
    serve: Serve, recorder: Recorder, cert_files: CertFiles
) -> None:
    with serve(recorder) as running:
        argv = gnutls_cli(running.plain, cert_files, "--starttls-proto=smtp")
        with Interactive(argv, newline=b"\r\n") as peer:
            peer.expect(r"^- Status: The certificate is trusted")
            version = peer.expect(r"^- Description: \((TLS1\.[23])-").group(1)
            peer.expect(r"^- Handshake was completed")
            ehlo = peer.command(f"EHLO {CLIENT_NAME}", "250 ", first="250-mx.test greets")
            assert "STARTTLS" not in ehlo and "250-AUTH PLAIN LOGIN" in ehlo, ehlo
            peer.command(f"AUTH PLAIN {plain(USER, PASSWORD)}", "235 ")
            peer.command("MAIL FROM:<alice@example.org>", "250 ")
            peer.command("RCPT TO:<bob@example.org>", "250 ")
            peer.command("DATA", "354 ")
            peer.send("Subject: from gnutls")
            peer.send("")
            peer.command(".", "250 2.0.0")
            peer.command("QUIT", "221 ")
            peer.wait()
    data, seen = recorder.message()
    assert data == b"Subject: from gnutls\r\n\r\n"
    assert seen.version == version.replace("TLS1", "TLSv1") and seen.authentication_id == USER


def test_gnutls_implicit_tls(serve: Serve, recorder: Recorder, cert_files: CertFiles) -> None:
    with (
        serve(recorder, smtps=True) as running,
        Interactive(gnutls_cli(running.smtps, cert_files), newline=b"\r\n") as peer,
    ):
        peer.expect(r"^- Status: The certificate is trusted")
        peer.expect(r"^- Handshake was completed")
        peer.expect(r"^220 mx\.test ")
        ehlo = peer.command(f"EHLO {CLIENT_NAME}", "250 ", first="250-mx.test greets")
        assert "STARTTLS" not in ehlo and "AUTH PLAIN LOGIN" in ehlo, ehlo
        peer.command("QUIT", "221 ")
        peer.wait()
