"""The self-signed fallback certificate (no certificate configured) as a client sees it, and the
TLS facts of the session as a hook sees them."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ._support import (
    HOSTNAME,
    RawClient,
    Recorder,
    peer_certificate,
    smtp,
    smtps,
    unverified_context,
)
from .conftest import Serve

pytestmark = pytest.mark.network


def test_self_signed_fallback_names_and_validity(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, self_signed=True, smtps=True) as running:
        with smtp(running.plain) as client:
            client.starttls(context=unverified_context())
            der = peer_certificate(client)
        with smtps(running.smtps) as client:
            assert peer_certificate(client) == der  # one context for STARTTLS and SMTPS
        cert = x509.load_der_x509_certificate(der)

        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOSTNAME
        assert cert.issuer == cert.subject
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert HOSTNAME in sans.get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
        now = datetime.now(UTC)
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=89) < lifetime < timedelta(days=91)

        # A client that trusts this certificate verifies it by name and by address.
        for name in (HOSTNAME, "127.0.0.1"):
            with RawClient(running.smtps) as client:
                client.start_tls(_trusting(der), server_hostname=name)
                assert client.reply()[0] == 220
        # ... and by no other name.
        with RawClient(running.smtps) as client, pytest.raises(ssl.SSLCertVerificationError):
            client.start_tls(_trusting(der), server_hostname="other.test")


def test_tls_facts_reach_the_hooks(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, smtps=True) as running:
        for address, implicit in ((running.plain, False), (running.smtps, True)):
            with RawClient(address, implicit_tls=implicit) as client:
                client.expect(220)
                client.ehlo()
                if not implicit:
                    client.command("MAIL FROM:<before@example.org>", 250)
                    client.command("RSET", 250)
                    client.starttls()
                    client.ehlo()
                client.command("MAIL FROM:<alice@example.org>", 250)
                assert isinstance(client.sock, ssl.SSLSocket)
                version, cipher = client.sock.version(), client.sock.cipher()
    before, starttls, implicit_tls = (seen for _, seen in recorder.senders)
    assert not before.tls_active and before.version is None and before.cipher is None
    for seen in (starttls, implicit_tls):
        assert seen.tls_active and seen.version in ("TLSv1.2", "TLSv1.3")
        assert seen.cipher is not None
    assert cipher is not None and (implicit_tls.version, implicit_tls.cipher) == (
        version,
        cipher[0],
    )


def _trusting(der: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=der)
    return context
