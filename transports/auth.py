"""AUTH against a user store: `Credentials` (clear passwords or scrypt hashes) and
`AuthenticatingHandler`, which answers `Handler.on_auth` from it.

Wrap any handler, so its other hooks keep working::

    credentials = Credentials.from_file("/etc/smtpcore/users")   # user:scrypt$... lines
    handler = AuthenticatingHandler(credentials, MyHandler())

or use it as a base class (``class MyHandler(AuthenticatingHandler)``, calling
``super().__init__(credentials)``). ``smtpcore serve --auth-user`` / ``--auth-file`` do the former.

Clear passwords are compared with `AuthAttempt.verify` (constant time; CRAM-MD5 included).
Hashes are ``scrypt$N$r$p$SALT$HASH`` (`hashlib.scrypt`, RFC 7914; SALT and HASH in base64), as
`hash_password` and ``smtpcore hash-password`` write them; they cannot answer CRAM-MD5, which
needs the clear password on the server. Unknown users cost the same work as known ones, so
timing does not tell which user names exist. Under the async transports a scrypt check runs in a
worker thread, not on the event loop.

Failed attempts are slowed down by the transports (``ServerOptions.auth_failure_delay``) and
limited by the core (``SmtpConfig.max_auth_failures``, then 421); nothing to do here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from smtpcore import AuthAttempt

from ._blocking import event_loop_library, in_thread
from .errors import Smtp535Error
from .handler import Handler, MaybeAwaitable, Session

__all__ = [
    "AuthenticatingHandler",
    "Credentials",
    "ScryptHash",
    "check_user_name",
    "hash_password",
    "verify_password",
]

_LOG = logging.getLogger("smtpcore.auth")

SCRYPT_N = 2**14
"""Default CPU/memory cost: 16 MiB and some 50 ms per check (the OWASP minimum is 2**17 with
r=8 for interactive logins at rest; SMTP AUTH is throttled by the server, so a lighter default)."""
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAXMEM_LIMIT = 2**31 - 1  # hashlib.scrypt refuses a larger maxmem


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"scrypt hash: {what} is not base64") from None


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """One stored password hash: ``scrypt$N$r$p$SALT$HASH`` (base64 SALT and HASH)."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes = b""

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > _MAX_N:
            raise ValueError(f"scrypt hash: N must be a power of 2 from 2 to {_MAX_N}")
        if not 1 <= self.r <= _MAX_R or not 1 <= self.p <= _MAX_P:
            raise ValueError(f"scrypt hash: r must be 1 to {_MAX_R} and p 1 to {_MAX_P}")
        if self._maxmem() > _MAXMEM_LIMIT:
            raise ValueError("scrypt hash: N and r need more than 2 GiB of memory")
        if len(self.salt) < 8:
            raise ValueError("scrypt hash: the salt must have at least 8 bytes")
        if self.digest and len(self.digest) < 16:
            raise ValueError("scrypt hash: the hash must have at least 16 bytes")

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        """Read ``scrypt$N$r$p$SALT$HASH``.

        Raises:
            ValueError: for anything else, with what is wrong.
        """
        fields = text.strip().split("$")
        if len(fields) != 6 or fields[0] != "scrypt":
            raise ValueError("not a hash of the form scrypt$N$r$p$SALT$HASH")
        if not all(f.isdigit() for f in fields[1:4]):
            raise ValueError("scrypt hash: N, r and p must be decimal numbers")
        n, r, p = (int(f) for f in fields[1:4])
        salt, digest = _b64decode(fields[4], "SALT"), _b64decode(fields[5], "HASH")
        if not digest:
            raise ValueError("scrypt hash: HASH is empty")
        return cls(n, r, p, salt, digest)

    def derive(self, password: str, length: int | None = None) -> bytes:
        """The scrypt key of ``password`` under these parameters and salt."""
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=self._maxmem(),
            dklen=length or len(self.digest) or HASH_BYTES,
        )

    def verify(self, password: str) -> bool:
        """True if ``password`` hashes to this digest (constant-time comparison)."""
        return hmac.compare_digest(self.derive(password), self.digest)

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    def _maxmem(self) -> int:
        # OpenSSL needs 128*r*(N+2) bytes for V plus 128*r*p for B; leave some room.
        return 128 * self.r * (self.n + 2 + self.p) + 65536


def hash_password(
    password: str,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
    salt: bytes | None = None,
) -> str:
    """``scrypt$N$r$p$SALT$HASH`` for ``password``, with a fresh random salt unless given."""
    params = ScryptHash(n, r, p, os.urandom(SALT_BYTES) if salt is None else salt)
    digest = params.derive(password, HASH_BYTES)
    return str(ScryptHash(n, r, p, params.salt, digest))


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded`` (as `hash_password` made it).

    Raises:
        ValueError: ``encoded`` is not a valid scrypt hash.
    """
    return ScryptHash.parse(encoded).verify(password)


def check_user_name(user: str, where: str = "user name") -> None:
    """Refuse names a ``user:...`` line cannot hold (or a client could not type) with a
    ValueError that starts with ``where``."""
    if not user:
        raise ValueError(f"{where}: empty user name")
    if user != user.strip() or any(c in user for c in ":\0\r\n"):
        raise ValueError(f"{where}: user {user!r} has a colon, a NUL, a line break or edge spaces")


class Credentials:
    """Who may log in: users with a clear password, and users with a `ScryptHash`.

    Args:
        passwords: user name -> clear password (tests and demos; CRAM-MD5 works with these).
        hashes: user name -> ``scrypt$...`` text or `ScryptHash`.

    Raises:
        ValueError: for a bad user name or hash, or a user in both mappings.
    """

    def __init__(
        self,
        passwords: Mapping[str, str] | None = None,
        hashes: Mapping[str, str | ScryptHash] | None = None,
    ) -> None:
        self._passwords = dict(passwords or {})
        self._hashes = {
            user: h if isinstance(h, ScryptHash) else ScryptHash.parse(h)
            for user, h in (hashes or {}).items()
        }
        for user in (*self._passwords, *self._hashes):
            check_user_name(user, "credentials")
        both = self._passwords.keys() & self._hashes.keys()
        if both:
            raise ValueError(f"credentials: user {min(both)!r} has a password and a hash")
        # What an unknown user is checked against, so that it costs what a known one costs.
        self._decoy_password = secrets.token_urlsafe(24)
        self._decoy_hash: ScryptHash | None = None

    # ---- building

    @staticmethod
    def parse_user_password(spec: str) -> tuple[str, str]:
        """``USER:PASSWORD`` (the password may hold colons) -> (user, password)."""
        user, colon, password = spec.partition(":")
        if not colon or not password:
            raise ValueError(f"expected USER:PASSWORD, not {spec!r}")
        check_user_name(user, "USER:PASSWORD")
        return user, password

    @classmethod
    def from_user_passwords(cls, specs: Iterable[str]) -> Credentials:
        """From ``USER:PASSWORD`` strings (``--auth-user``)."""
        passwords: dict[str, str] = {}
        for spec in specs:
            user, password = cls.parse_user_password(spec)
            if user in passwords:
                raise ValueError(f"user {user!r} is given twice")
            passwords[user] = password
        return cls(passwords)

    @staticmethod
    def parse_hash_lines(lines: Iterable[str], source: str = "<lines>") -> dict[str, ScryptHash]:
        """``user:scrypt$...`` lines; blank lines and ``#`` comments are skipped.

        Raises:
            ValueError: naming ``source`` and the line number.
        """
        hashes: dict[str, ScryptHash] = {}
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{number}"
            user, colon, encoded = line.rpartition(":")  # a hash never holds a colon
            if not colon:
                raise ValueError(f"{where}: expected user:scrypt$N$r$p$SALT$HASH")
            check_user_name(user, where)
            if user in hashes:
                raise ValueError(f"{where}: user {user!r} is listed twice")
            try:
                hashes[user] = ScryptHash.parse(encoded)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return hashes

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Credentials:
        """From a password file of ``user:scrypt$...`` lines (``--auth-file``).

        Raises:
            OSError: the file cannot be read.
            ValueError: a line is malformed (the message names file and line).
        """
        filename = os.fspath(path)
        with open(filename, encoding="utf-8") as handle:
            return cls(hashes=cls.parse_hash_lines(handle, filename))

    def merged(self, other: Credentials) -> Credentials:
        """Both stores in one; a user in both is an error."""
        same = (self._passwords.keys() | self._hashes.keys()) & (
            other._passwords.keys() | other._hashes.keys()
        )
        if same:
            raise ValueError(f"user {min(same)!r} is given twice")
        return Credentials(
            {**self._passwords, **other._passwords}, {**self._hashes, **other._hashes}
        )

    # ---- asking

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._passwords) | frozenset(self._hashes)

    def __len__(self) -> int:
        return len(self._passwords) + len(self._hashes)

    def __contains__(self, user: object) -> bool:
        return user in self._passwords or user in self._hashes

    @property
    def has_hashes(self) -> bool:
        """True if some user has only a hash (then CRAM-MD5 cannot work for them)."""
        return bool(self._hashes)

    def is_slow(self, attempt: AuthAttempt) -> bool:
        """True if checking ``attempt`` runs scrypt (worth a worker thread in an event loop)."""
        return (
            attempt.password is not None
            and attempt.authentication_id not in self._passwords
            and bool(self._hashes)
        )

    def check(self, attempt: AuthAttempt) -> bool:
        """True if the attempt's credentials are right. Blocking: scrypt takes milliseconds."""
        user = attempt.authentication_id
        password = self._passwords.get(user)
        if password is not None:
            return attempt.verify(password)
        record = self._hashes.get(user)
        if attempt.password is None:  # CRAM-MD5: only a clear password can answer it
            if record is None:
                attempt.verify(self._decoy_password)
            return False
        if record is not None:
            return record.verify(attempt.password)
        if self._hashes:
            self._decoy().verify(attempt.password)
        else:
            attempt.verify(self._decoy_password)
        return False

    def _decoy(self) -> ScryptHash:
        if self._decoy_hash is None:
            # The store's costliest parameters: an unknown user costs no less than a known one.
            model = max(self._hashes.values(), key=lambda h: (h.n * h.r * h.p, len(h.digest)))
            decoy = ScryptHash(model.n, model.r, model.p, os.urandom(SALT_BYTES))
            self._decoy_hash = ScryptHash(
                model.n,
                model.r,
                model.p,
                decoy.salt,
                decoy.derive(secrets.token_urlsafe(16), len(model.digest)),
            )
        return self._decoy_hash


_HOOK_NAMES = tuple(name for name in vars(Handler) if name.startswith("on_") and name != "on_auth")


class AuthenticatingHandler(Handler):
    """A `Handler` whose `on_auth` checks `Credentials`; every other hook is ``handler``'s.

    Args:
        credentials: the user store.
        handler: the handler to wrap (None when this class is used as a base class).

    A successful check then asks `authorize` (wrapping a handler that has its own ``on_auth``:
    that ``on_auth``, which may refuse or return another authorization id). By default a
    client may act only as itself: PLAIN's authorization identity, if given, must equal the
    user name.
    """

    _wrapper_classes: ClassVar[dict[type[Handler], type[AuthenticatingHandler]]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> AuthenticatingHandler:
        # Wrapping: an instance of a subclass made for the handler's class (see _wrapper_for).
        # Subclasses (the base-class use) are made as they are, whatever their arguments.
        handler = kwargs.get("handler", args[1] if len(args) > 1 else None)
        if cls is AuthenticatingHandler and isinstance(handler, Handler):
            cls = cls._wrapper_for(type(handler))
        return super().__new__(cls)

    def __init__(self, credentials: Credentials, handler: Handler | None = None) -> None:
        if handler is not None and isinstance(handler, AuthenticatingHandler):
            raise TypeError("the handler already authenticates")
        self.credentials = credentials
        self.handler = handler
        inner_on_auth = None
        if handler is not None and type(handler).on_auth is not Handler.on_auth:
            inner_on_auth = handler.on_auth
        self._inner_on_auth: Callable[..., Any] | None = inner_on_auth

    def __getattr__(self, name: str) -> Any:
        """Attributes this wrapper lacks are the wrapped handler's (e.g. a recorder's lists)."""
        handler = self.__dict__.get("handler")
        if handler is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(handler, name)

    def on_auth(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> MaybeAwaitable:
        """Accept if `credentials` say so and `authorize` agrees; else 535 5.7.8.

        Returns an awaitable (the driver awaits it) when a scrypt check must leave the event
        loop; under the threads transport everything happens inline.
        """
        library = event_loop_library() if self.credentials.is_slow(attempt) else None
        if library is None:
            self._verdict(ctx, attempt, self.credentials.check(attempt))
            return self._authorize(ctx, authorization_id, authentication_id, password, attempt)
        return self._check_in_thread(
            library, ctx, authorization_id, authentication_id, password, attempt
        )

    def authorize(
        self, ctx: Session, authorization_id: str, authentication_id: str, attempt: AuthAttempt
    ) -> MaybeAwaitable:
        """The credentials are right: may this user act as ``authorization_id``? Return
        nothing (or another authorization id) to accept; raise an `SmtpError` to refuse.
        By default only as itself."""
        if authorization_id != authentication_id:
            _LOG.info(
                "[%s:%s] AUTH %s: %r may not act as %r",
                ctx.remote_ip,
                ctx.remote_port,
                attempt.mechanism,
                authentication_id,
                authorization_id,
            )
            raise Smtp535Error()
        return None

    # ---- internals

    async def _check_in_thread(
        self,
        library: str,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> Any:
        ok = await in_thread(library, lambda: self.credentials.check(attempt))
        self._verdict(ctx, attempt, ok)
        result = self._authorize(ctx, authorization_id, authentication_id, password, attempt)
        return await result if inspect.isawaitable(result) else result

    def _verdict(self, ctx: Session, attempt: AuthAttempt, ok: bool) -> None:
        if not ok:
            _LOG.info(
                "[%s:%s] AUTH %s failed for %r",
                ctx.remote_ip,
                ctx.remote_port,
                attempt.mechanism,
                attempt.authentication_id,
            )
            raise Smtp535Error()

    def _authorize(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> MaybeAwaitable:
        if self._inner_on_auth is not None:
            return self._inner_on_auth(ctx, authorization_id, authentication_id, password, attempt)
        return self.authorize(ctx, authorization_id, authentication_id, attempt)

    @classmethod
    def _wrapper_for(cls, handler_class: type[Handler]) -> type[AuthenticatingHandler]:
        """A subclass that forwards each hook ``handler_class`` overrides: the driver calls
        only hooks a handler's class overrides, so forwarding must be decided per class."""
        wrapper = cls._wrapper_classes.get(handler_class)
        if wrapper is None:
            namespace: dict[str, Any] = {"__module__": __name__}
            for name in _HOOK_NAMES:
                own = getattr(handler_class, name, None)
                if own is not None and own is not getattr(Handler, name):
                    namespace[name] = _forward(name, inspect.iscoroutinefunction(own))
            if inspect.iscoroutinefunction(handler_class.on_auth):
                namespace["on_auth"] = _awaiting_on_auth  # the threads transport must see it
            wrapper = type(f"Authenticating{handler_class.__name__}", (cls,), namespace)
            cls._wrapper_classes[handler_class] = wrapper
        return wrapper


async def _awaiting_on_auth(self: AuthenticatingHandler, *args: Any) -> Any:
    result = AuthenticatingHandler.on_auth(self, *args)
    return await result if inspect.isawaitable(result) else result


def _forward(name: str, is_async: bool) -> Callable[..., Any]:
    """A hook that calls the wrapped handler's ``name``; ``async def`` if that one is (so the
    threads transport still refuses an async handler at start-up)."""
    if is_async:

        async def forward_async(self: AuthenticatingHandler, *args: Any) -> Any:
            return await getattr(self.handler, name)(*args)

        forward_async.__name__ = name
        return forward_async

    def forward(self: AuthenticatingHandler, *args: Any) -> Any:
        return getattr(self.handler, name)(*args)

    forward.__name__ = name
    return forward
