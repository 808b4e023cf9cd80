"""Fixtures of the TLS and AUTH suite: every test taking ``transport`` runs once per transport.

``serve`` starts a server of that transport on 127.0.0.1 (port 0) with STARTTLS and AUTH
optional, a certificate for ``mx.test`` and 127.0.0.1, and alice's clear password, unless told
otherwise; it stops the server when the test is done.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smtpcore import SmtpConfig
from transports.auth import AuthenticatingHandler, Credentials, hash_password
from transports.controller import ServerThread
from transports.handler import Handler
from transports.options import Listener, ServerOptions
from transports.tls import TlsPreset, generate_self_signed, make_server_context

from ._support import HOSTNAME, PASSWORD, TIMEOUT, USER, Recorder

TRANSPORT_NAMES = ["threads", "asyncio", "trio", "anyio", "anyio-trio"]
STOP_GRACE = 1.0
STOP_TIMEOUT = 15.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport" in metafunc.fixturenames:
        metafunc.parametrize("transport", TRANSPORT_NAMES)


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path
    combined: Path
    """Certificate and key in one file."""
    pem: bytes
    """The certificate alone, as a CA for clients that verify."""


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = generate_self_signed(HOSTNAME, ["127.0.0.1"])
    paths = CertFiles(directory / "cert.pem", directory / "key.pem", directory / "both.pem", cert)
    paths.cert.write_bytes(cert)
    paths.key.write_bytes(key)
    paths.combined.write_bytes(cert + key)
    return paths


@pytest.fixture(scope="session")
def contexts(cert_files: CertFiles) -> Callable[[str], ssl.SSLContext]:
    """The server context for a preset, built once per preset."""
    built: dict[str, ssl.SSLContext] = {}

    def get(preset: str) -> ssl.SSLContext:
        if preset not in built:
            built[preset] = make_server_context(
                cert_path=cert_files.cert, key_path=cert_files.key, preset=TlsPreset(preset)
            )
        return built[preset]

    return get


@pytest.fixture(scope="session")
def plain_credentials() -> Credentials:
    return Credentials({USER: PASSWORD})


@pytest.fixture(scope="session")
def hashed_credentials() -> Credentials:
    return Credentials(hashes={USER: hash_password(PASSWORD)})


@dataclass(frozen=True, slots=True)
class Running:
    server: ServerThread
    handler: Handler
    plain: tuple[str, int]
    smtps: tuple[str, int]
    """The implicit-TLS listener (the plain one again when none was asked for)."""


Serve = Callable[..., AbstractContextManager[Running]]

DEFAULT_CONFIG: dict[str, Any] = {
    "hostname": HOSTNAME,
    "tls_mode": "optional",
    "auth_mode": "optional",
}


@pytest.fixture
def serve(
    transport: str,
    contexts: Callable[[str], ssl.SSLContext],
    plain_credentials: Credentials,
) -> Serve:
    """``with serve(handler, **config) as running:`` a server of ``transport``.

    Keywords: ``smtps`` (add an implicit-TLS listener), ``preset`` (of the test certificate),
    ``self_signed`` (no context: the ServerOptions fallback), ``credentials`` (None: the
    handler as given), ``auth_failure_delay``, ``tls_handshake_timeout``,
    ``max_connections``; the rest are `SmtpConfig` fields.
    """

    @contextmanager
    def start(
        handler: Handler,
        *,
        smtps: bool = False,
        preset: str = "modern",
        self_signed: bool = False,
        credentials: Credentials | None = plain_credentials,
        auth_failure_delay: float = 0.01,
        tls_handshake_timeout: float = TIMEOUT,
        max_connections: int | None = None,
        **config: Any,
    ) -> Iterator[Running]:
        listeners = [Listener("127.0.0.1", 0)]
        if smtps:
            listeners.append(Listener("127.0.0.1", 0, implicit_tls=True))
        options = ServerOptions(
            listeners=tuple(listeners),
            config=SmtpConfig(**{**DEFAULT_CONFIG, **config}),
            tls_context=None if self_signed else contexts(preset),
            auth_failure_delay=auth_failure_delay,
            tls_handshake_timeout=tls_handshake_timeout,
            max_connections=max_connections,
        )
        served = handler if credentials is None else AuthenticatingHandler(credentials, handler)
        server = ServerThread(transport, served, options).start()
        try:
            addresses = server.addresses
            yield Running(server, served, addresses[0], addresses[-1])
        finally:
            server.stop(grace=STOP_GRACE, timeout=STOP_TIMEOUT)

    return start


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
