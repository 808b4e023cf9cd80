"""TLS configuration shared by every smtpcore transport.

The SMTP core is sans-IO and never touches ``ssl``; transports call
:func:`make_server_context` once at start-up so that every transport (thread,
asyncio, trio, anyio) offers the same protocol versions, ciphers, certificate
handling and client-certificate policy, and :func:`tls_facts` so that they all
report the negotiated session the same way.

Only the standard library ``ssl`` module and ``cryptography`` (for the
self-signed fallback certificate) are used.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, overload

if TYPE_CHECKING:
    from cryptography import x509


__all__ = [
    "StrPath",
    "TlsFacts",
    "TlsPreset",
    "context_from",
    "generate_self_signed",
    "make_server_context",
    "tls_facts",
]

StrPath: TypeAlias = str | os.PathLike[str]
"""A filesystem path accepted wherever a PEM file is expected."""

_LOG = logging.getLogger("smtpcore.tls")

#: Validity of the in-memory self-signed fallback certificate.
SELF_SIGNED_VALIDITY = timedelta(days=90)
#: Back-dating of ``notBefore`` so that peers with a slightly slow clock accept it.
SELF_SIGNED_BACKDATE = timedelta(minutes=1)

_WILDCARD_ADDRESSES = frozenset({"", "*", "0.0.0.0", "::"})
_LOOPBACK_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
    }
)
_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PEM_KEY_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_ENCRYPTED_RE = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")


class TlsPreset(enum.StrEnum):
    """Named protocol/cipher policies, so operators pick intent instead of cipher strings.

    The names mirror the presets of the Ruby library midi-smtp-server
    (advanced_plus, advanced, broad compatibility, widest compatibility, legacy).
    TLS 1.3 always uses OpenSSL's default suites (all AEAD and forward secret);
    the cipher string only governs TLS 1.2 and older.

    ========  ===========  ===============================================  =========
    Preset    Min version  Cipher string (TLS <= 1.2)                       SECLEVEL
    ========  ===========  ===============================================  =========
    MODERN    TLS 1.2      ``ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:``      2
                           ``DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS``
    ADVANCED  TLS 1.2      MODERN plus ``ECDHE+AES256+SHA384:``             2
                           ``ECDHE+AES128+SHA256`` (CBC with SHA-2 MACs)
    BROAD     TLS 1.2      ``HIGH:!aNULL:!MD5:!RC4``                        2
    WIDEST    TLS 1.0      ``HIGH:MEDIUM:!aNULL:!eNULL:!MD5:!RC4:!3DES``    0 (1 on
                                                                            OpenSSL 1.x)
    LEGACY    TLS 1.0      ``ALL:!aNULL:!eNULL``                            0
    ========  ===========  ===============================================  =========

    WIDEST and LEGACY lower the OpenSSL security level because OpenSSL 3
    refuses TLS 1.0/1.1 (SHA-1 handshake signatures) at level 1 and above;
    without that the configured minimum version would silently not work.
    """

    MODERN = "modern"
    ADVANCED = "advanced"
    BROAD = "broad"
    WIDEST = "widest"
    LEGACY = "legacy"

    @classmethod
    def _missing_(cls, value: object) -> TlsPreset | None:
        """Accept names and values case-insensitively, e.g. from a config file."""
        if isinstance(value, str):
            wanted = value.strip().lower()
            for member in cls:
                if wanted in (member.value, member.name.lower()):
                    return member
        return None


@dataclass(frozen=True, slots=True)
class _PresetSpec:
    """The concrete ``SSLContext`` settings behind a :class:`TlsPreset`."""

    minimum_version: ssl.TLSVersion
    ciphers: str
    seclevel: int


_MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
_ADVANCED_CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:"
    "ECDHE+AES256+SHA384:ECDHE+AES128+SHA256:!aNULL:!eNULL:!MD5:!DSS"
)
_BROAD_CIPHERS = "HIGH:!aNULL:!MD5:!RC4"
_WIDEST_CIPHERS = "HIGH:MEDIUM:!aNULL:!eNULL:!MD5:!RC4:!3DES"
_LEGACY_CIPHERS = "ALL:!aNULL:!eNULL"

# OpenSSL 3 needs level 0 for TLS 1.0/1.1; OpenSSL 1.1.x still allowed them at 1.
_OLD_TLS_SECLEVEL = 0 if ssl.OPENSSL_VERSION_INFO >= (3,) else 1

_PRESETS: dict[TlsPreset, _PresetSpec] = {
    TlsPreset.MODERN: _PresetSpec(ssl.TLSVersion.TLSv1_2, _MODERN_CIPHERS, 2),
    TlsPreset.ADVANCED: _PresetSpec(ssl.TLSVersion.TLSv1_2, _ADVANCED_CIPHERS, 2),
    TlsPreset.BROAD: _PresetSpec(ssl.TLSVersion.TLSv1_2, _BROAD_CIPHERS, 2),
    TlsPreset.WIDEST: _PresetSpec(ssl.TLSVersion.TLSv1, _WIDEST_CIPHERS, _OLD_TLS_SECLEVEL),
    TlsPreset.LEGACY: _PresetSpec(ssl.TLSVersion.TLSv1, _LEGACY_CIPHERS, 0),
}


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What a transport reports about an established TLS session.

    Kept as plain data so the sans-IO core and handlers can log or authorize
    on it (e.g. client-certificate auth) without holding the ssl object.
    """

    version: str | None
    """Negotiated protocol, e.g. ``"TLSv1.3"``; None before the handshake."""
    cipher: str | None
    """OpenSSL cipher name, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
    bits: int | None
    """Secret bits of the negotiated cipher."""
    peer_certificate: dict[str, Any] | None
    """``getpeercert()`` of the peer; None unless a certificate was sent *and* verified."""
    peer_certificate_der: bytes | None
    """DER bytes of the peer certificate, also when it was not verified."""
    server_name: str | None
    """SNI name the client asked for (server side) or the name we sent (client side)."""


# SNI name requested by the client, per server-side ssl object. The public ssl
# API does not expose it after the handshake, so our sni_callback records it.
_REQUESTED_SERVER_NAMES: weakref.WeakKeyDictionary[ssl.SSLObject | ssl.SSLSocket, str] = (
    weakref.WeakKeyDictionary()
)
_REQUESTED_SERVER_NAMES_LOCK = threading.Lock()


def _resolve_preset(preset: TlsPreset | str) -> TlsPreset:
    """Turn a config value into a preset, with an error listing valid names."""
    try:
        return TlsPreset(preset)
    except ValueError:
        valid = ", ".join(member.value for member in TlsPreset)
        raise ValueError(f"unknown TLS preset {preset!r}; expected one of: {valid}") from None


def _normalize_dns_name(name: str) -> str:
    """Lower-case, strip the root dot and IDNA-encode, so SNI and SAN compare equal."""
    name = name.strip().rstrip(".").lower()
    if not name:
        raise ValueError("host name must not be empty")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"host name {name!r} cannot be IDNA-encoded: {exc}") from exc


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP literal (brackets and zone index allowed), or None if it is a name."""
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    candidate = candidate.split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _is_loopback_name(hostname: str) -> bool:
    """True for names that resolve to the local machine, which also deserve DNS:localhost."""
    ip = _parse_ip(hostname)
    if ip is not None:
        return ip.is_loopback
    name = hostname.rstrip(".").lower()
    return name in _LOOPBACK_NAMES or name.endswith(".localhost")


def generate_self_signed(hostname: str, addresses: Sequence[str] = ()) -> tuple[bytes, bytes]:
    """Create a self-signed server certificate, returned as ``(cert_pem, key_pem)``.

    Used when no certificate is configured so STARTTLS still encrypts (opportunistic
    TLS); also handy for tests. EC P-256 keeps generation in the millisecond range.
    The SAN list holds ``hostname`` (plus ``localhost`` for loopback names) and every
    non-wildcard entry of ``addresses`` as IP SAN (names there become DNS SANs).
    """
    # Imported here: only the self-signed fallback needs cryptography (the "tls" extra).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if isinstance(addresses, str):  # a lone string is a Sequence[str] too
        addresses = (addresses,)
    host_ip = _parse_ip(hostname)
    host_label = str(host_ip) if host_ip is not None else _normalize_dns_name(hostname)

    sans: list[x509.GeneralName] = []

    def add(entry: x509.GeneralName) -> None:
        if entry not in sans:
            sans.append(entry)

    if host_ip is not None:
        add(x509.IPAddress(host_ip))
    else:
        add(x509.DNSName(host_label))
    if _is_loopback_name(hostname):
        add(x509.DNSName("localhost"))
    for address in addresses:
        if address.strip().strip("[]") in _WILDCARD_ADDRESSES:
            continue
        ip = _parse_ip(address)
        if ip is not None:
            if not ip.is_unspecified:
                add(x509.IPAddress(ip))
        else:
            add(x509.DNSName(_normalize_dns_name(address)))

    # X.520 limits CN to 64 characters; a longer FQDN lives in the SAN only.
    if len(host_label) <= 64:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_label)])
    else:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smtpcore self-signed")])

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SELF_SIGNED_BACKDATE)
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _refuse_password() -> bytes:
    """Password callback that fails instead of letting OpenSSL prompt on the server's tty."""
    raise ValueError("the TLS private key is encrypted; configure an unencrypted PEM key")


def _read_existing(path: StrPath, what: str) -> bytes:
    """Read a PEM file, turning a missing path into a FileNotFoundError that names it."""
    filename = os.fspath(path)
    if not os.path.isfile(filename):
        raise FileNotFoundError(errno.ENOENT, f"TLS {what} file not found", filename)
    with open(filename, "rb") as handle:
        return handle.read()


def _load_pem_files(context: ssl.SSLContext, cert_path: StrPath, key_path: StrPath | None) -> None:
    """Load a certificate chain and key, with errors an operator can act on.

    ``cert_path`` may hold the leaf, the intermediates *and* the private key
    (midi-smtp-server 3.x style); then ``key_path`` is None.
    """
    cert_file = os.fspath(cert_path)
    cert_data = _read_existing(cert_file, "certificate")
    if not _PEM_CERT_RE.search(cert_data):
        raise ValueError(f"TLS certificate file {cert_file!r} contains no PEM certificate")
    if key_path is None:
        key_file = None
        key_data = cert_data
        if not _PEM_KEY_RE.search(key_data):
            raise ValueError(
                f"TLS certificate file {cert_file!r} contains no private key; "
                "pass key_path or append the PEM private key to the certificate file"
            )
    else:
        key_file = os.fspath(key_path)
        key_data = _read_existing(key_file, "private key")
        if not _PEM_KEY_RE.search(key_data):
            raise ValueError(f"TLS private key file {key_file!r} contains no PEM private key")
    if _PEM_ENCRYPTED_RE.search(key_data):
        _refuse_password()
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except ssl.SSLError as exc:
        source = cert_file if key_file is None else f"{cert_file!r} / {key_file!r}"
        raise ValueError(
            f"cannot load TLS certificate and key from {source} "
            f"(malformed PEM or key does not match certificate): {exc}"
        ) from exc


def _load_pem_bytes(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load an in-memory certificate and key.

    ``SSLContext.load_cert_chain`` only reads files, so the key is written to a
    0600 file inside a private 0700 directory and both are removed right after.
    """
    directory = tempfile.mkdtemp(prefix="smtpcore-tls-")
    try:
        fd, path = tempfile.mkstemp(suffix=".pem", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key_pem)
                handle.write(cert_pem)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
    finally:
        os.rmdir(directory)


def _set_minimum_version(
    context: ssl.SSLContext, version: ssl.TLSVersion, logger: logging.Logger
) -> None:
    """Set the floor, muting Python's deprecation warning for an explicitly chosen old TLS."""
    if version is ssl.TLSVersion.TLSv1 and not ssl.HAS_TLSv1:
        logger.warning("local OpenSSL lacks TLS 1.0; the lowest available version is used")
        version = ssl.TLSVersion.TLSv1_1 if ssl.HAS_TLSv1_1 else ssl.TLSVersion.TLSv1_2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version


def _set_ciphers(context: ssl.SSLContext, ciphers: str, seclevel: int) -> None:
    """Apply cipher string and security level; LibreSSL rejects ``@SECLEVEL``, so retry without."""
    try:
        context.set_ciphers(f"{ciphers}:@SECLEVEL={seclevel}")
    except ssl.SSLError:
        context.set_ciphers(ciphers)


def _base_context(
    spec: _PresetSpec,
    client_ca_path: StrPath | None,
    require_client_cert: bool,
    logger: logging.Logger,
) -> ssl.SSLContext:
    """A server context with preset, hardening options and client-cert policy, no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Compression enables CRIME-style attacks; server preference keeps our cipher order.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _set_minimum_version(context, spec.minimum_version, logger)
    _set_ciphers(context, spec.ciphers, spec.seclevel)
    if client_ca_path is not None:
        ca = os.fspath(client_ca_path)
        if os.path.isdir(ca):
            context.load_verify_locations(capath=ca)
        elif os.path.isfile(ca):
            context.load_verify_locations(cafile=ca)
        else:
            raise FileNotFoundError(errno.ENOENT, "TLS client CA file not found", ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert=True needs client_ca_path to verify clients against")
    return context


def _sni_lookup(contexts: Mapping[str, ssl.SSLContext], server_name: str) -> ssl.SSLContext | None:
    """Exact match first, then a ``*.parent`` wildcard entry (one label only, like X.509)."""
    found = contexts.get(server_name)
    if found is None and "." in server_name:
        found = contexts.get("*." + server_name.split(".", 1)[1])
    return found


def make_server_context(
    *,
    cert_path: StrPath | None = None,
    key_path: StrPath | None = None,
    preset: TlsPreset | str = TlsPreset.MODERN,
    client_ca_path: StrPath | None = None,
    require_client_cert: bool = False,
    hostname: str = "localhost",
    addresses: Sequence[str] = (),
    sni_certificates: Mapping[str, tuple[StrPath, StrPath | None]] | None = None,
    logger: logging.Logger | None = None,
) -> ssl.SSLContext:
    """Build the server ``SSLContext`` every transport uses for SMTPS/STARTTLS.

    ``cert_path`` is a PEM file with the certificate chain, optionally followed or
    preceded by the private key (then leave ``key_path`` None). Without a
    certificate a self-signed one for ``hostname``/``addresses`` is generated in
    memory and a WARNING is logged, because clients cannot verify it.

    ``client_ca_path`` (file or hashed directory) enables client certificates:
    requested and verified if sent, mandatory with ``require_client_cert``.
    ``sni_certificates`` maps server names (``*.example.org`` allowed) to
    ``(cert_path, key_path)`` pairs chosen per connection from the client's SNI;
    unknown or missing names get the default certificate.

    Raises FileNotFoundError for missing files and ValueError for unusable
    certificates/keys or unknown presets.
    """
    log = logger if logger is not None else _LOG
    spec = _PRESETS[_resolve_preset(preset)]
    if spec.minimum_version < ssl.TLSVersion.TLSv1_2:
        log.warning("TLS preset allows TLS < 1.2 and weak ciphers; use it only for old clients")
    if cert_path is None and key_path is not None:
        raise ValueError("key_path given without cert_path")

    context = _base_context(spec, client_ca_path, require_client_cert, log)
    if cert_path is not None:
        _load_pem_files(context, cert_path, key_path)
    else:
        log.warning(
            "no TLS certificate configured: using a self-signed certificate for %r "
            "that clients cannot verify",
            hostname,
        )
        _load_pem_bytes(context, *generate_self_signed(hostname, addresses))

    sni_contexts: dict[str, ssl.SSLContext] = {}
    for name, (sni_cert, sni_key) in (sni_certificates or {}).items():
        sni_context = _base_context(spec, client_ca_path, require_client_cert, log)
        _load_pem_files(sni_context, sni_cert, sni_key)
        sni_contexts[_normalize_dns_name(name)] = sni_context

    def sni_callback(
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        default_context: ssl.SSLContext,
    ) -> None:
        """Remember the requested name for :func:`tls_facts` and switch certificate."""
        if server_name is None:
            return
        normalized = server_name.rstrip(".").lower()
        with _REQUESTED_SERVER_NAMES_LOCK:
            _REQUESTED_SERVER_NAMES[ssl_object] = normalized
        selected = _sni_lookup(sni_contexts, normalized)
        if selected is not None:
            ssl_object.context = selected

    context.sni_callback = sni_callback
    return context


@overload
def context_from(value: ssl.SSLContext) -> ssl.SSLContext: ...
@overload
def context_from(value: None) -> None: ...
def context_from(value: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """Validate a transport's ``ssl_context`` argument: a context, or None for no TLS.

    A ready context is returned unchanged so callers keep full control; anything
    else fails early with a hint instead of deep inside the first handshake.
    """
    if value is None or isinstance(value, ssl.SSLContext):
        return value
    raise TypeError(
        f"expected ssl.SSLContext or None, got {type(value).__name__}; "
        "build one with transports.tls.make_server_context()"
    )


def tls_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TlsFacts:
    """Snapshot the negotiated TLS session of a socket or memory-BIO ssl object.

    Safe before the handshake (fields are None). ``server_name`` on the server
    side is only known for contexts from :func:`make_server_context`.
    """
    cipher = ssl_object.cipher()
    peer: dict[str, Any] | None
    peer_der: bytes | None
    try:
        peer = ssl_object.getpeercert() or None
        peer_der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, OSError):  # handshake not done / not connected
        peer, peer_der = None, None
    if ssl_object.server_side:
        with _REQUESTED_SERVER_NAMES_LOCK:
            server_name = _REQUESTED_SERVER_NAMES.get(ssl_object)
    else:
        server_name = ssl_object.server_hostname
    return TlsFacts(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        peer_certificate=peer,
        peer_certificate_der=peer_der,
        server_name=server_name,
    )
