"""The smtpcore pytest plugin: a real SMTP server for the tests of programs that send mail.

Installed with smtpcore (a ``pytest11`` entry point), it adds these fixtures:

``smtpcore_server`` (session)
    One server per test session: per pytest-xdist worker, since each worker is a session of
    its own. It listens on 127.0.0.1 on a free port (port 0), runs the asyncio transport in a
    background thread (`ServerThread`), and keeps every message in a `MemoryHandler` wrapped in
    a `ChaosHandler`. ``.host``, ``.port``, ``.address`` say where it is; ``.messages`` holds
    what arrived.
``inbox`` (function)
    The same server seen from one test, emptied before the test starts: ``.messages``,
    ``.wait_for(count=1, timeout=5, sender=..., recipient=..., subject=...)`` (blocks on a
    condition, no polling) and ``.fail_next(verb, code, count=1)``.
``smtpcore_server_options`` (session)
    What the server is made from (`SmtpcoreOptions`); read from the ini options below by
    default. Override it in a ``conftest.py`` for TLS, AUTH users and the rest::

        @pytest.fixture(scope="session")
        def smtpcore_server_options():
            return SmtpcoreOptions(tls_mode="required", users={"alice": "s3cret"})

ini options (``pytest.ini``, ``[tool.pytest.ini_options]``...):

``smtpcore_tls``
    ``off`` (default), ``optional`` or ``required`` (STARTTLS), or ``smtps`` (an implicit-TLS
    listener beside the plain one, at ``smtpcore_server.smtps_port``).
``smtpcore_auth``
    ``off``, ``optional`` or ``required``; default ``optional`` when users are given.
``smtpcore_users``
    ``USER:PASSWORD`` lines (clear passwords: these are test accounts).
``smtpcore_transport``
    ``asyncio`` (default), ``threads``, ``trio`` or ``anyio``.
``smtpcore_smtpd_alias``
    ``true`` adds a fixture named ``smtpd`` with the attributes of smtpdfix's (``hostname``,
    ``port``, ``messages`` as `email.message.Message` objects, ``config``), so suites written
    for smtpdfix run unchanged. Off by default: smtpdfix itself registers ``smtpd``.

With TLS on, a certificate for ``localhost`` and the listening address is issued at start-up
by a throwaway CA (`trustme` when it is installed, else a self-signed certificate from
`generate_self_signed`); ``smtpcore_server.ca_path`` is that CA's PEM file and
``smtpcore_server.ssl_context()`` a client context that trusts it. Nothing is written to
``os.environ``.
"""

from __future__ import annotations

import dataclasses
import email
import email.message
import smtplib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest

from smtpcore import AuthMode, SmtpConfig, TlsMode

from .controller import TRANSPORTS, ServerThread
from .handler import Handler

if TYPE_CHECKING:  # the handlers are imported when a server is made, not with every pytest run
    from .handlers.chaos import ChaosHandler, ChaosRule
    from .handlers.stored import StoredMessage

__all__ = [
    "Inbox",
    "SmtpcoreOptions",
    "SmtpcoreServer",
    "SmtpdCompat",
    "SmtpdCompatConfig",
    "inbox",
    "smtpcore_server",
    "smtpcore_server_options",
]

TLS_CHOICES = ("off", "optional", "required", "smtps")
AUTH_CHOICES = ("off", "optional", "required")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DEFAULT_SIZE = SmtpConfig().max_message_size


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpcoreOptions:
    """How the ``smtpcore_server`` fixture builds its server.

    Args:
        transport: ``asyncio``, ``threads``, ``trio`` or ``anyio`` (see `ServerThread`).
        host: the address to listen on; the port is always a free one.
        hostname: the server's name in its banner and EHLO reply (and in the certificate).
        tls_mode: ``forbidden``, ``optional`` or ``required`` STARTTLS.
        smtps: also listen with implicit TLS (RFC 8314), on ``smtpcore_server.smtps_port``.
        users: user name -> clear password, for AUTH.
        auth_mode: ``forbidden``, ``optional`` or ``required``; None: optional with users.
        allow_insecure_auth: offer AUTH without TLS; None: yes when the server has no TLS
            (so that AUTH works in a plain-text test setup), no otherwise.
        auth_mechanisms: the SASL mechanisms offered (clear passwords answer all three).
        max_message_size: the largest message accepted, in octets (None: no limit).
        max_messages: keep at most this many messages, dropping the oldest (None: all).
        chaos: `ChaosRule` or ``VERB=CODE[:RATE]`` failures for the whole session.
        chaos_seed: seeds the chaos draws.
        auth_failure_delay: seconds a failed AUTH is slowed down by, times n (0 in tests).
        config: further `SmtpConfig` keywords (``crlf_mode``, ``lmtp``, ``pipelining``...).
        server: further `ServerOptions` keywords (``idle_timeout``, ``max_connections``...).
    """

    transport: str = "asyncio"
    host: str = "127.0.0.1"
    hostname: str = "localhost"
    tls_mode: TlsMode | str = TlsMode.FORBIDDEN
    smtps: bool = False
    users: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    auth_mode: AuthMode | str | None = None
    allow_insecure_auth: bool | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
    max_message_size: int | None = _DEFAULT_SIZE
    max_messages: int | None = None
    chaos: Sequence[ChaosRule | str] = ()
    chaos_seed: int | None = None
    auth_failure_delay: float = 0.0
    config: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    server: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if self.transport.partition("-")[0] not in TRANSPORTS:
            known = ", ".join(TRANSPORTS)
            raise ValueError(f"smtpcore transport must be one of {known}, not {self.transport!r}")
        object.__setattr__(self, "tls_mode", TlsMode(self.tls_mode))
        if self.auth_mode is not None:
            object.__setattr__(self, "auth_mode", AuthMode(self.auth_mode))
        object.__setattr__(self, "users", MappingProxyType(dict(self.users)))

    def replace(self, **changes: Any) -> SmtpcoreOptions:
        """A copy with ``changes`` (the options are frozen)."""
        return dataclasses.replace(self, **changes)

    @property
    def tls(self) -> bool:
        """True if any listener speaks TLS."""
        return self.tls_mode is not TlsMode.FORBIDDEN or self.smtps

    @property
    def effective_auth_mode(self) -> AuthMode:
        if self.auth_mode is None:
            return AuthMode.OPTIONAL if self.users else AuthMode.FORBIDDEN
        return AuthMode(self.auth_mode)

    def smtp_config(self) -> SmtpConfig:
        """The core's configuration these options describe."""
        insecure = self.allow_insecure_auth
        settings: dict[str, Any] = {
            "hostname": self.hostname,
            "tls_mode": self.tls_mode,
            "auth_mode": self.effective_auth_mode,
            "auth_mechanisms": self.auth_mechanisms,
            "allow_insecure_auth": (not self.tls) if insecure is None else insecure,
            "max_message_size": self.max_message_size,
        }
        return SmtpConfig(**{**settings, **self.config})

    @classmethod
    def from_ini(cls, config: pytest.Config) -> SmtpcoreOptions:
        """The options the ``smtpcore_*`` ini settings describe (see the module)."""
        tls = _ini_choice(config, "smtpcore_tls", TLS_CHOICES, "off")
        auth = _ini_choice(config, "smtpcore_auth", AUTH_CHOICES, "")
        from .auth import Credentials

        users: dict[str, str] = {}
        for line in config.getini("smtpcore_users"):
            try:
                user, password = Credentials.parse_user_password(str(line).strip())
            except ValueError as exc:
                raise pytest.UsageError(f"smtpcore_users: {exc}") from None
            users[user] = password
        transport = str(config.getini("smtpcore_transport") or "asyncio").strip()
        try:
            return cls(
                transport=transport,
                tls_mode=tls if tls in ("optional", "required") else "forbidden",
                smtps=tls == "smtps",
                users=users,
                auth_mode=None if not auth else ("forbidden" if auth == "off" else auth),
            )
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None


def _ini_choice(config: pytest.Config, name: str, choices: Sequence[str], default: str) -> str:
    value = str(config.getini(name) or default).strip().lower()
    if value and value not in choices:
        raise pytest.UsageError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


# ---------------------------------------------------------------- the server


class SmtpcoreServer:
    """A running test server (what the ``smtpcore_server`` fixture gives).

    Attributes:
        host, port: where the plain (or STARTTLS) listener is; ``address`` is both.
        smtps_port: the implicit-TLS listener's port, None without ``smtps``.
        options: the `SmtpcoreOptions` it was made from.
        memory: the `MemoryHandler` keeping the messages.
        chaos: the `ChaosHandler` in front of it (for `fail_next` and rules).
        thread: the `ServerThread` running it.
        ca_path, ca_pem: the CA that issued the server certificate (None without TLS).
        cert_path: the server's own PEM file, key and certificate chain (None without TLS).
    """

    def __init__(
        self,
        options: SmtpcoreOptions,
        *,
        workdir: Path,
        ready_timeout: float = 10.0,
    ) -> None:
        from .auth import AuthenticatingHandler, Credentials
        from .handlers.chaos import ChaosHandler
        from .handlers.memory import MemoryHandler

        self.options = options
        self.memory = MemoryHandler(max_messages=options.max_messages)
        handler: Handler = self.memory
        if options.users:
            handler = AuthenticatingHandler(Credentials(options.users), handler)
        self.chaos = ChaosHandler(handler, options.chaos, seed=options.chaos_seed)
        self.ca_path: Path | None = None
        self.ca_pem: bytes | None = None
        self.cert_path: Path | None = None
        tls_context = None
        if options.tls:
            tls_context = self._issue_certificate(workdir)
        self.thread = ServerThread(
            options.transport,
            self.chaos,
            host=options.host,
            port=0,
            smtps_port=0 if options.smtps else None,
            config=options.smtp_config(),
            tls_context=tls_context,
            auth_failure_delay=options.auth_failure_delay,
            ready_timeout=ready_timeout,
            **options.server,
        )

    def _issue_certificate(self, workdir: Path) -> ssl.SSLContext:
        """A server certificate for localhost, the host and the hostname, from a new CA."""
        from .tls import generate_self_signed, make_server_context

        names = list(dict.fromkeys(["localhost", self.options.host, self.options.hostname]))
        server_pem = workdir / "server.pem"
        ca_path = workdir / "ca.pem"
        try:
            import trustme
        except ImportError:  # the certificate is its own CA
            cert, key = generate_self_signed("localhost", names[1:])
            server_pem.write_bytes(key + cert)
            ca_path.write_bytes(cert)
        else:
            ca = trustme.CA(organization_name="smtpcore test CA")
            ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(server_pem))
            ca.cert_pem.write_to_path(str(ca_path))
        self.ca_path, self.ca_pem, self.cert_path = ca_path, ca_path.read_bytes(), server_pem
        return make_server_context(cert_path=server_pem, hostname=self.options.hostname)

    # ---- lifecycle

    def start(self) -> SmtpcoreServer:
        self.thread.start()
        return self

    def stop(self, grace: float = 1.0, timeout: float = 10.0) -> None:
        self.thread.stop(grace=grace, timeout=timeout)

    def __enter__(self) -> SmtpcoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- where

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.thread.addresses

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the plain listener, for ``smtplib.SMTP(*address)``."""
        return self.plain_addresses[0]

    @property
    def plain_addresses(self) -> list[tuple[str, int]]:
        addresses = self.addresses
        return addresses[: len(addresses) // 2] if self.options.smtps else addresses

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def smtps_port(self) -> int | None:
        if not self.options.smtps:
            return None
        addresses = self.addresses
        return addresses[len(addresses) // 2][1]

    # ---- what arrived

    @property
    def messages(self) -> list[StoredMessage]:
        """The messages received (since the last `clear`), oldest first."""
        return self.memory.messages

    def clear(self) -> None:
        """Forget the messages and any failure queued with `fail_next`."""
        self.memory.clear()
        _forget_queued_failures(self.chaos)

    def fail_next(self, verb: str, code: int, count: int = 1) -> None:
        """Fail the next ``count`` MAIL, RCPT, DATA or AUTH commands with ``code``."""
        self.chaos.fail_next(verb, code, count)

    # ---- clients

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's certificate (and checks its name).

        Raises:
            RuntimeError: the server has no TLS.
        """
        if self.ca_path is None:
            raise RuntimeError(
                "the smtpcore test server has no TLS: set smtpcore_tls in the ini file or "
                "tls_mode/smtps in smtpcore_server_options"
            )
        return ssl.create_default_context(cafile=str(self.ca_path))

    def smtp(self, *, timeout: float = 10.0, local_hostname: str | None = None) -> smtplib.SMTP:
        """An `smtplib.SMTP` client connected to the plain listener."""
        return smtplib.SMTP(self.host, self.port, local_hostname, timeout=timeout)

    def smtp_ssl(
        self, *, timeout: float = 10.0, local_hostname: str | None = None
    ) -> smtplib.SMTP_SSL:
        """An `smtplib.SMTP_SSL` client connected to the implicit-TLS listener."""
        port = self.smtps_port
        if port is None:
            raise RuntimeError("the smtpcore test server has no SMTPS listener (smtps=True)")
        return smtplib.SMTP_SSL(
            self.host, port, local_hostname, timeout=timeout, context=self.ssl_context()
        )

    def __repr__(self) -> str:
        return f"<SmtpcoreServer {self.options.transport} {self.addresses}>"


def _forget_queued_failures(chaos: ChaosHandler) -> None:
    """Drop the failures `fail_next` queued, so none leaks into the next test.

    ChaosHandler has no public way to do this yet; its queue is a dict of lists under a lock.
    """
    with chaos._lock:
        for queued in chaos._queued.values():
            queued.clear()


class Inbox:
    """The test server as one test sees it: emptied before the test (the ``inbox`` fixture)."""

    def __init__(self, server: SmtpcoreServer) -> None:
        self.server = server

    @property
    def messages(self) -> list[StoredMessage]:
        """The messages received during this test, oldest first."""
        return self.server.messages

    def wait_for(
        self,
        count: int = 1,
        timeout: float = 5.0,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        subject: str | None = None,
    ) -> list[StoredMessage]:
        """Block until ``count`` messages match the filters, and return all that match.

        ``sender`` is the envelope sender (``""`` for ``<>``), ``recipient`` one of the
        envelope recipients, ``subject`` a part of the decoded Subject. Wakes up the moment a
        message is in (no polling).

        Raises:
            TimeoutError: naming what did arrive.
        """
        return self.server.memory.wait_for(
            count, timeout, sender=sender, recipient=recipient, subject=subject
        )

    def fail_next(self, verb: str, code: int, count: int = 1) -> None:
        """Answer the next ``count`` ``verb`` commands (MAIL, RCPT, DATA or AUTH) with
        ``code`` (a 4xx or 5xx), whatever the client sends."""
        self.server.fail_next(verb, code, count)

    def clear(self) -> None:
        self.server.clear()

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[StoredMessage]:
        return iter(self.messages)

    def __repr__(self) -> str:
        return f"<Inbox {len(self)} messages at {self.host}:{self.port}>"


# ---------------------------------------------------------------- smtpdfix look-alike


@dataclass(frozen=True, slots=True)
class SmtpdCompatConfig:
    """smtpdfix's ``smtpd.config`` attribute names, read-only.

    smtpdfix restarts its server when one is set; here the server is shared by the session,
    so change `SmtpcoreOptions` (the ``smtpcore_server_options`` fixture) instead.
    """

    host: str
    port: int
    ready_timeout: float
    login_username: str | None
    login_password: str | None
    enforce_auth: bool
    auth_require_tls: bool
    use_starttls: bool
    use_ssl: bool
    ssl_cert_files: tuple[str | None, str | None]


class SmtpdCompat:
    """What smtpdfix's ``smtpd`` fixture offers, over the smtpcore test server.

    ``messages`` are `email.message.Message` objects (the compat32 policy, as smtpdfix and
    aiosmtpd's Message handler give) with aiosmtpd's ``X-Peer``, ``X-MailFrom`` and
    ``X-RcptTo`` headers added to each copy; the stored messages are left as received.
    """

    def __init__(self, server: SmtpcoreServer) -> None:
        self.server = server
        options = server.options
        user, password = next(iter(options.users.items()), (None, None))
        ssl_port = server.smtps_port
        self.config = SmtpdCompatConfig(
            host=server.host,
            port=server.port if ssl_port is None else ssl_port,
            ready_timeout=10.0,
            login_username=user,
            login_password=password,
            enforce_auth=options.effective_auth_mode is AuthMode.REQUIRED,
            auth_require_tls=not options.smtp_config().allow_insecure_auth,
            use_starttls=options.tls_mode is not TlsMode.FORBIDDEN,
            use_ssl=options.smtps,
            ssl_cert_files=(None if server.cert_path is None else str(server.cert_path), None),
        )

    @property
    def hostname(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        """The port smtpdfix would listen on: the SMTPS one when ``use_ssl``."""
        return self.config.port

    @property
    def messages(self) -> list[email.message.Message]:
        return [_as_compat32(stored) for stored in self.server.messages]

    def __repr__(self) -> str:
        return f"<SmtpdCompat {self.hostname}:{self.port}>"


def _as_compat32(stored: StoredMessage) -> email.message.Message:
    message = email.message_from_bytes(stored.raw)
    message["X-Peer"] = str((stored.remote_ip, stored.remote_port))
    message["X-MailFrom"] = stored.sender
    message["X-RcptTo"] = ", ".join(stored.recipients)
    return message


class _SmtpdAlias:
    """Registered only with ``smtpcore_smtpd_alias = true``."""

    @pytest.fixture
    def smtpd(self, inbox: Inbox) -> SmtpdCompat:
        """smtpdfix's ``smtpd`` fixture, served by smtpcore (emptied before each test)."""
        return SmtpdCompat(inbox.server)


# ---------------------------------------------------------------- hooks and fixtures


def pytest_addoption(parser: pytest.Parser) -> None:
    add = parser.addini
    add("smtpcore_tls", f"smtpcore test server TLS: {'|'.join(TLS_CHOICES)} (default off)")
    add(
        "smtpcore_auth",
        f"smtpcore test server AUTH: {'|'.join(AUTH_CHOICES)} (default optional with users)",
    )
    add("smtpcore_users", "smtpcore test server AUTH users, USER:PASSWORD lines", type="linelist")
    add("smtpcore_transport", f"smtpcore test server transport: {'|'.join(TRANSPORTS)}")
    add(
        "smtpcore_smtpd_alias",
        "also offer an smtpdfix-compatible 'smtpd' fixture (default false)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getini("smtpcore_smtpd_alias"):
        config.pluginmanager.register(_SmtpdAlias(), "smtpcore-smtpd-alias")


@pytest.fixture(scope="session")
def smtpcore_server_options(pytestconfig: pytest.Config) -> SmtpcoreOptions:
    """How ``smtpcore_server`` is built; override it (session scope) to change that."""
    return SmtpcoreOptions.from_ini(pytestconfig)


@pytest.fixture(scope="session")
def smtpcore_server(
    smtpcore_server_options: SmtpcoreOptions, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SmtpcoreServer]:
    """One SMTP server for the session (for each xdist worker), on a free port."""
    workdir = tmp_path_factory.mktemp("smtpcore")
    with SmtpcoreServer(smtpcore_server_options, workdir=workdir) as server:
        yield server


@pytest.fixture
def inbox(smtpcore_server: SmtpcoreServer) -> Inbox:
    """The session's server, its messages and queued failures cleared for this test."""
    smtpcore_server.clear()
    return Inbox(smtpcore_server)
