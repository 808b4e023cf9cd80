"""Tests for transports.tls: presets, certificates, SNI and real handshakes on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil

# Real sockets are the point of these tests; the ban only protects the sans-IO core.
import socket
import ssl
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from transports.tls import (
    TlsFacts,
    TlsPreset,
    context_from,
    generate_self_signed,
    make_server_context,
    tls_facts,
)

TIMEOUT = 5.0  # every socket operation in this file is bounded by this
JOIN_TIMEOUT = 10.0
GREETING = b"220 tls-test ready\r\n"
OLD_TLS_CIPHERS = "ALL:@SECLEVEL=0"


# --------------------------------------------------------------------------- helpers


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _der(pem: bytes) -> bytes:
    return _cert(pem).public_bytes(serialization.Encoding.DER)


def _write(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def _client_context(
    *,
    maximum: ssl.TLSVersion | None = None,
    cadata: bytes | None = None,
    cert_file: Path | None = None,
) -> ssl.SSLContext:
    """A client context; unverified unless ``cadata`` is given, optionally capped at ``maximum``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cadata is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=cadata.decode("ascii"))
    if maximum is not None:
        with warnings.catch_warnings():  # old TLS versions are deprecated on purpose here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
        if maximum < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers(OLD_TLS_CIPHERS)
    if cert_file is not None:
        context.load_cert_chain(cert_file)
    return context


class OneShotServer:
    """Accept one TLS connection on 127.0.0.1 in a thread and record its facts or error."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.facts: TlsFacts | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tls-test-server", daemon=True)

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.facts = tls_facts(tls)
                    tls.sendall(GREETING)
                    # Wait for the client's QUIT/EOF so closing never resets unread data.
                    tls.recv(64)
            except (OSError, ssl.SSLError) as exc:
                if self.facts is None:
                    self.error = exc


@contextmanager
def serve(context: ssl.SSLContext) -> Iterator[OneShotServer]:
    """Run a :class:`OneShotServer` and make sure its thread has ended afterwards."""
    server = OneShotServer(context)
    server.thread.start()
    try:
        yield server
    finally:
        server.thread.join(JOIN_TIMEOUT)
        server.listener.close()
        assert not server.thread.is_alive(), "TLS test server did not stop in time"


def _connect(port: int, context: ssl.SSLContext, server_hostname: str | None) -> TlsFacts:
    """Handshake, read the greeting, say QUIT; returns the client-side facts."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        assert tls.recv(64) == GREETING
        facts = tls_facts(tls)
        tls.sendall(b"QUIT\r\n")
        return facts


def _handshake(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext | None = None,
    server_hostname: str | None = "localhost",
) -> tuple[TlsFacts, TlsFacts]:
    """One full connection; returns (server facts, client facts)."""
    with serve(server_context) as server:
        client = _connect(server.port, client_context or _client_context(), server_hostname)
    assert server.error is None, server.error
    assert server.facts is not None
    return server.facts, client


def _make_ca_and_client(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A tiny CA plus a client certificate it signed: (ca.pem, client cert+key pem, client DER)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtpcore test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.test")]))
        .issuer_name(ca_name)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = _write(tmp_path / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    client_file = _write(
        tmp_path / "client.pem",
        client_cert.public_bytes(serialization.Encoding.PEM),
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return ca_file, client_file, client_cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def combined_pem(tmp_path: Path) -> tuple[Path, bytes]:
    """A PEM file holding leaf certificate, an extra chain certificate and the key."""
    cert_pem, key_pem = generate_self_signed("combined.test")
    chain_pem, _ = generate_self_signed("intermediate.test")
    return _write(tmp_path / "combined.pem", cert_pem, chain_pem, key_pem), cert_pem


# --------------------------------------------------------------------------- presets

_MIN_VERSIONS = {
    TlsPreset.MODERN: ssl.TLSVersion.TLSv1_2,
    TlsPreset.ADVANCED: ssl.TLSVersion.TLSv1_2,
    TlsPreset.BROAD: ssl.TLSVersion.TLSv1_2,
    TlsPreset.WIDEST: ssl.TLSVersion.TLSv1,
    TlsPreset.LEGACY: ssl.TLSVersion.TLSv1,
}


def _tls12_ciphers(context: ssl.SSLContext) -> list[Mapping[str, object]]:
    return [c for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]


@pytest.mark.parametrize("preset", list(TlsPreset))
def test_each_preset_builds_a_hardened_context(preset: TlsPreset) -> None:
    context = make_server_context(preset=preset)
    assert context.minimum_version == _MIN_VERSIONS[preset]
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.verify_mode == ssl.CERT_NONE
    assert _tls12_ciphers(context)
    assert any(c["protocol"] == "TLSv1.3" for c in context.get_ciphers())


def test_modern_allows_only_forward_secret_aead_for_tls12() -> None:
    ciphers = _tls12_ciphers(make_server_context(preset=TlsPreset.MODERN))
    for cipher in ciphers:
        assert cipher["aead"] is True, cipher["name"]
        assert cipher["kea"] in {"kx-ecdhe", "kx-dhe"}, cipher["name"]
    names = {c["name"] for c in ciphers}
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in names
    assert "ECDHE-ECDSA-CHACHA20-POLY1305" in names


def test_presets_widen_in_order() -> None:
    def names(preset: TlsPreset) -> set[object]:
        return {c["name"] for c in _tls12_ciphers(make_server_context(preset=preset))}

    modern, advanced, broad = (
        names(p) for p in (TlsPreset.MODERN, TlsPreset.ADVANCED, TlsPreset.BROAD)
    )
    widest, legacy = names(TlsPreset.WIDEST), names(TlsPreset.LEGACY)
    assert modern < advanced <= broad <= widest <= legacy
    assert "ECDHE-ECDSA-AES256-SHA384" in advanced  # CBC with SHA-2 MAC
    assert all(str(name).startswith(("ECDHE-", "DHE-")) for name in advanced)
    assert "AES128-SHA" in legacy  # plain RSA key exchange only in the legacy end


def test_preset_accepts_names_and_values_case_insensitively() -> None:
    assert make_server_context(preset="advanced").minimum_version == ssl.TLSVersion.TLSv1_2
    assert TlsPreset("MODERN") is TlsPreset.MODERN
    assert TlsPreset(" Widest ") is TlsPreset.WIDEST
    assert str(TlsPreset.LEGACY) == "legacy"  # StrEnum: usable directly in config output
    with pytest.raises(ValueError, match="expected one of: modern, advanced"):
        make_server_context(preset="advanced_plus")


def test_weak_presets_log_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="smtpcore.tls"):
        make_server_context(preset=TlsPreset.LEGACY)
    assert any("TLS < 1.2" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- self-signed


def test_self_signed_certificate_names_validity_and_algorithms() -> None:
    addresses = ["192.0.2.10", "::1", "[2001:db8::25]", "0.0.0.0", "::", "*"]
    cert_pem, key_pem = generate_self_signed("mail.example.test", addresses)
    cert = _cert(cert_pem)

    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["mail.example.test"]
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("2001:db8::25"),
    ]

    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_before_utc + timedelta(minutes=2)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=90) <= lifetime <= timedelta(days=90, minutes=2)

    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    private_key = serialization.load_pem_private_key(key_pem, password=None)
    assert private_key.public_key() == public_key


@pytest.mark.parametrize(
    ("hostname", "dns", "ips"),
    [
        ("localhost", ["localhost"], []),
        ("localhost.localdomain", ["localhost.localdomain", "localhost"], []),
        ("127.0.0.1", ["localhost"], ["127.0.0.1"]),
        ("mx.example.test", ["mx.example.test"], []),
    ],
)
def test_self_signed_adds_localhost_only_for_loopback_names(
    hostname: str, dns: list[str], ips: list[str]
) -> None:
    san = (
        _cert(generate_self_signed(hostname)[0])
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.DNSName) == dns
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(i) for i in ips]


def test_self_signed_pem_loads_into_ssl(tmp_path: Path) -> None:
    cert_pem, key_pem = generate_self_signed("load.test", ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(
        _write(tmp_path / "c.pem", cert_pem), _write(tmp_path / "k.pem", key_pem)
    )


def test_fallback_warns_and_leaves_no_key_material_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # observe the scratch files
    logger = logging.getLogger("test.tls.custom")
    with caplog.at_level(logging.WARNING, logger="test.tls.custom"):
        make_server_context(hostname="fallback.test", logger=logger)
    warnings_logged = [r for r in caplog.records if r.name == "test.tls.custom"]
    assert any("self-signed" in r.getMessage() for r in warnings_logged)
    assert all(r.levelno == logging.WARNING for r in warnings_logged)
    assert list(scratch.iterdir()) == []


def test_default_logger_is_smtpcore_tls(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="smtpcore.tls"):
        make_server_context()
    assert any(r.name == "smtpcore.tls" and "self-signed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- certificate files


@pytest.mark.network
def test_cert_file_with_chain_and_key_needs_no_key_path(combined_pem: tuple[Path, bytes]) -> None:
    path, leaf_pem = combined_pem
    _, client = _handshake(make_server_context(cert_path=path))
    assert client.peer_certificate_der == _der(leaf_pem)


@pytest.mark.network
def test_key_first_then_chain_also_works(tmp_path: Path) -> None:
    cert_pem, key_pem = generate_self_signed("keyfirst.test")
    path = _write(tmp_path / "keyfirst.pem", key_pem, cert_pem)
    _, client = _handshake(make_server_context(cert_path=str(path)))
    assert client.peer_certificate_der == _der(cert_pem)


@pytest.mark.network
def test_separate_key_file_and_verifying_client(tmp_path: Path) -> None:
    cert_pem, key_pem = generate_self_signed("localhost", ["127.0.0.1"])
    context = make_server_context(
        cert_path=_write(tmp_path / "cert.pem", cert_pem),
        key_path=_write(tmp_path / "key.pem", key_pem),
    )
    # The client trusts exactly this certificate and checks the host name against its SAN.
    _, client = _handshake(context, _client_context(cadata=cert_pem), "localhost")
    assert client.peer_certificate is not None
    assert client.peer_certificate["subjectAltName"] == (
        ("DNS", "localhost"),
        ("IP Address", "127.0.0.1"),
    )


def test_missing_files_raise_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(FileNotFoundError, match="certificate file not found") as info:
        make_server_context(cert_path=missing)
    assert info.value.filename == str(missing)

    cert_pem, _ = generate_self_signed("x.test")
    cert_only = _write(tmp_path / "cert.pem", cert_pem)
    with pytest.raises(FileNotFoundError, match="private key file not found"):
        make_server_context(cert_path=cert_only, key_path=missing)
    with pytest.raises(FileNotFoundError, match="client CA file not found"):
        make_server_context(client_ca_path=missing)


def test_cert_without_key_raises_value_error(tmp_path: Path) -> None:
    cert_only = _write(tmp_path / "cert.pem", generate_self_signed("x.test")[0])
    with pytest.raises(ValueError, match="contains no private key; pass key_path"):
        make_server_context(cert_path=cert_only)


def test_key_file_without_key_or_garbage_cert_raise_value_error(tmp_path: Path) -> None:
    cert_pem, _ = generate_self_signed("x.test")
    cert_only = _write(tmp_path / "cert.pem", cert_pem)
    with pytest.raises(ValueError, match="contains no PEM private key"):
        make_server_context(cert_path=cert_only, key_path=cert_only)
    garbage = _write(tmp_path / "garbage.pem", b"not a certificate\n")
    with pytest.raises(ValueError, match="contains no PEM certificate"):
        make_server_context(cert_path=garbage)


def test_mismatched_key_raises_value_error(tmp_path: Path) -> None:
    cert_pem, _ = generate_self_signed("a.test")
    _, other_key = generate_self_signed("b.test")
    path = _write(tmp_path / "mismatch.pem", cert_pem, other_key)
    with pytest.raises(ValueError, match="does not match"):
        make_server_context(cert_path=path)


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path) -> None:
    cert_pem, key_pem = generate_self_signed("enc.test")
    key = serialization.load_pem_private_key(key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = _write(tmp_path / "enc.pem", cert_pem, encrypted)
    with pytest.raises(ValueError, match="encrypted"):
        make_server_context(cert_path=path)


def test_key_path_without_cert_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key_path given without cert_path"):
        make_server_context(key_path=tmp_path / "k.pem")


# --------------------------------------------------------------------------- context_from / facts


def test_context_from_passes_contexts_and_none_through() -> None:
    context = make_server_context()
    assert context_from(context) is context
    assert context_from(None) is None
    with pytest.raises(TypeError, match="make_server_context"):
        context_from("modern")  # type: ignore[call-overload]


def test_tls_facts_before_handshake_are_empty() -> None:
    ssl_object = make_server_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert tls_facts(ssl_object) == TlsFacts(None, None, None, None, None, None)


# --------------------------------------------------------------------------- handshakes


@pytest.mark.network
def test_modern_handshake_negotiates_tls12_or_13_and_reports_facts() -> None:
    server, client = _handshake(make_server_context(), server_hostname="localhost")
    assert server.version in {"TLSv1.2", "TLSv1.3"}
    assert server.version == client.version
    assert server.cipher is not None and server.cipher == client.cipher
    assert server.bits is not None and server.bits >= 128
    assert server.server_name == "localhost"
    assert server.peer_certificate is None and server.peer_certificate_der is None
    assert client.server_name == "localhost"
    assert client.peer_certificate_der is not None
    assert _cert_cn(client.peer_certificate_der) == "localhost"


def _cert_cn(der: bytes) -> str:
    attrs = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value)


@pytest.mark.network
def test_modern_tls12_client_gets_forward_secret_aead() -> None:
    server, _ = _handshake(make_server_context(), _client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert server.version == "TLSv1.2"
    assert server.cipher is not None
    assert server.cipher.startswith("ECDHE-")
    assert "GCM" in server.cipher or "CHACHA20" in server.cipher


@pytest.mark.network
def test_modern_refuses_tls11_client() -> None:
    with serve(make_server_context()) as server, pytest.raises(ssl.SSLError):
        _connect(server.port, _client_context(maximum=ssl.TLSVersion.TLSv1_1), "localhost")
    assert server.facts is None
    assert isinstance(server.error, ssl.SSLError)
    assert server.error.reason == "UNSUPPORTED_PROTOCOL", server.error


@pytest.mark.network
@pytest.mark.parametrize("preset", [TlsPreset.WIDEST, TlsPreset.LEGACY])
@pytest.mark.parametrize(
    ("maximum", "expected"),
    [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")],
)
def test_wide_presets_really_accept_old_tls(
    preset: TlsPreset, maximum: ssl.TLSVersion, expected: str
) -> None:
    if not (ssl.HAS_TLSv1 and ssl.HAS_TLSv1_1):
        pytest.skip("local OpenSSL was built without TLS 1.0/1.1")
    server, client = _handshake(
        make_server_context(preset=preset), _client_context(maximum=maximum)
    )
    assert server.version == client.version == expected


def _s_client(port: int, version_flag: str) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl binary not available")
    # SECLEVEL=0 on the client side so a refusal can only come from the server.
    command = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    command += [version_flag, "-cipher", "DEFAULT:@SECLEVEL=0"]
    return subprocess.run(
        command, input="", capture_output=True, text=True, timeout=JOIN_TIMEOUT, check=False
    )


@pytest.mark.network
def test_openssl_s_client_tls11_is_refused_under_modern() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl binary not available")
    with serve(make_server_context()) as server:
        result = _s_client(server.port, "-tls1_1")
    assert result.returncode != 0, result.stdout
    assert isinstance(server.error, ssl.SSLError), server.error
    assert server.error.reason == "UNSUPPORTED_PROTOCOL", server.error
    assert server.facts is None

    # Control: the same command with TLS 1.2 succeeds, so the refusal above is the policy.
    with serve(make_server_context()) as server:
        result = _s_client(server.port, "-tls1_2")
    assert result.returncode == 0, result.stderr
    assert server.facts is not None and server.facts.version == "TLSv1.2"
    assert re.search(r"Protocol\s*: TLSv1\.2", result.stdout), result.stdout


@pytest.mark.network
def test_required_client_certificate_is_verified_and_exposed(tmp_path: Path) -> None:
    ca_file, client_file, client_der = _make_ca_and_client(tmp_path)
    context = make_server_context(client_ca_path=ca_file, require_client_cert=True)
    server, _ = _handshake(context, _client_context(cert_file=client_file))
    assert server.peer_certificate_der == client_der
    assert server.peer_certificate is not None
    assert server.peer_certificate["subject"] == ((("commonName", "client.test"),),)


@pytest.mark.network
def test_required_client_certificate_missing_is_refused(tmp_path: Path) -> None:
    ca_file, _, _ = _make_ca_and_client(tmp_path)
    context = make_server_context(client_ca_path=ca_file, require_client_cert=True)
    assert context.verify_mode == ssl.CERT_REQUIRED
    with serve(context) as server, pytest.raises((ssl.SSLError, ConnectionError)):
        # TLS 1.3 reports the rejection at the first read, TLS 1.2 during the handshake.
        _connect(server.port, _client_context(), "localhost")
    assert server.facts is None
    assert isinstance(server.error, ssl.SSLError)


@pytest.mark.network
def test_optional_client_certificate(tmp_path: Path) -> None:
    ca_file, _, _ = _make_ca_and_client(tmp_path)
    context = make_server_context(client_ca_path=ca_file)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    server, _ = _handshake(context)
    assert server.peer_certificate is None and server.peer_certificate_der is None


def test_require_client_cert_needs_a_ca() -> None:
    with pytest.raises(ValueError, match="needs client_ca_path"):
        make_server_context(require_client_cert=True)


@pytest.fixture
def sni_context(tmp_path: Path) -> tuple[ssl.SSLContext, dict[str, bytes]]:
    """Default self-signed 'localhost' plus an exact and a wildcard SNI certificate."""
    mail_cert, mail_key = generate_self_signed("mail.example.test")
    wild_cert, wild_key = generate_self_signed("wild.example.test")
    context = make_server_context(
        sni_certificates={
            "Mail.Example.Test.": (_write(tmp_path / "mail.pem", mail_cert, mail_key), None),
            "*.wild.test": (
                _write(tmp_path / "wild.pem", wild_cert),
                _write(tmp_path / "wild.key", wild_key),
            ),
        }
    )
    return context, {"mail": _der(mail_cert), "wild": _der(wild_cert)}


@pytest.mark.network
@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("mail.example.test", "mail"),
        ("MAIL.example.TEST", "mail"),
        ("a.wild.test", "wild"),
        ("a.b.wild.test", "default"),
        ("other.test", "default"),
        (None, "default"),
    ],
)
def test_sni_selects_certificate_by_server_name(
    sni_context: tuple[ssl.SSLContext, dict[str, bytes]], server_name: str | None, expected: str
) -> None:
    context, ders = sni_context
    server, client = _handshake(context, server_hostname=server_name)
    assert client.peer_certificate_der is not None
    if expected == "default":
        assert client.peer_certificate_der not in ders.values()
        assert _cert_cn(client.peer_certificate_der) == "localhost"
    else:
        assert client.peer_certificate_der == ders[expected]
    assert server.server_name == (server_name.lower() if server_name else None)


def test_tls_facts_for_memory_bio_objects_used_by_async_transports() -> None:
    """asyncio/trio use ssl.SSLObject over memory BIOs; facts must work there too."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = make_server_context().wrap_bio(server_in, server_out, server_side=True)
    client = _client_context().wrap_bio(client_in, client_out, server_hostname="localhost")
    for _ in range(10):  # pump records between both sides until both finished
        done = 0
        for ssl_object in (client, server):
            try:
                ssl_object.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if done == 2:
            break
    facts = tls_facts(server)
    assert facts.version in {"TLSv1.2", "TLSv1.3"}
    assert facts.cipher is not None
    assert facts.server_name == "localhost"
    assert tls_facts(client).server_name == "localhost"
