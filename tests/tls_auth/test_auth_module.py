"""transports.auth without a network: the scrypt hash format, the user store, and the handler
wrapper (hooks forwarded as the driver needs them, async where the wrapped hooks are)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from smtpcore import AuthAttempt, MailFrom
from transports._blocking import event_loop_library
from transports._common import check_sync_handler
from transports.auth import (
    AuthenticatingHandler,
    Credentials,
    ScryptHash,
    hash_password,
    verify_password,
)
from transports.errors import Smtp535Error, SmtpError
from transports.handler import Handler, Session


def fast_hash(password: str) -> str:
    """A hash with cheap scrypt parameters, for the many hashes of these tests."""
    return hash_password(password, n=2**4, r=1, p=1)


def attempt(user: str, password: str, *, authzid: str | None = None) -> AuthAttempt:
    return AuthAttempt(
        mechanism="PLAIN",
        authorization_id=authzid or user,
        authentication_id=user,
        password=password,
    )


def cram(user: str, password: str) -> AuthAttempt:
    challenge = b"<1234.5678@mx.test>"
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    return AuthAttempt(
        mechanism="CRAM-MD5",
        authorization_id=user,
        authentication_id=user,
        challenge=challenge,
        digest=digest,
    )


def session() -> Session:
    return Session(local_ip="127.0.0.1", local_port=25, remote_ip="127.0.0.1", remote_port=4321)


def run_on_auth(handler: Handler, auth: AuthAttempt) -> Any:
    """Call on_auth as the driver does; await what it returns, if anything."""
    result = handler.on_auth(
        session(), auth.authorization_id, auth.authentication_id, auth.password, auth
    )
    if inspect.isawaitable(result):
        raise AssertionError("unexpected awaitable outside an event loop")
    return result


# ---------------------------------------------------------------- the hash format


def test_hash_is_self_describing_salted_and_verifies() -> None:
    first, second = hash_password("pässword"), hash_password("pässword")
    pattern = r"scrypt\$16384\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}="
    assert re.fullmatch(pattern, first), first
    assert first != second  # a fresh salt each time
    assert verify_password("pässword", first) and verify_password("pässword", second)
    assert not verify_password("password", first)
    assert not verify_password("pässword ", first)


def test_hash_parameters_round_trip() -> None:
    encoded = hash_password("x", n=2**5, r=2, p=3, salt=b"0123456789abcdef")
    parsed = ScryptHash.parse(encoded)
    assert (parsed.n, parsed.r, parsed.p, parsed.salt) == (32, 2, 3, b"0123456789abcdef")
    assert str(parsed) == encoded
    assert parsed.digest == hashlib.scrypt(b"x", salt=parsed.salt, n=32, r=2, p=3, dklen=32)
    assert ScryptHash.parse(encoded.replace("=", "")).verify("x")  # padding is optional


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("bcrypt$2b$12$abc", "scrypt$N$r$p$SALT$HASH"),
        ("scrypt$16384$8$1$c2FsdHNhbHQ=", "scrypt$N$r$p$SALT$HASH"),
        ("scrypt$16384$8$x$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "decimal"),
        ("scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "power of 2"),
        ("scrypt$2097152$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "power of 2"),
        ("scrypt$16384$0$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "r must be"),
        ("scrypt$1048576$32$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==", "2 GiB"),
        ("scrypt$16384$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==", "salt"),
        ("scrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaA==", "hash must have"),
        ("scrypt$16384$8$1$c2FsdHNhbHQ=$", "HASH is empty"),
        ("scrypt$16384$8$1$not*base64$aGFzaGhhc2hoYXNoaGFzaA==", "SALT is not base64"),
    ],
)
def test_malformed_hashes_are_refused_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        ScryptHash.parse(text)


# ---------------------------------------------------------------- the store


def test_clear_passwords_check_plain_login_and_cram_md5() -> None:
    store = Credentials({"alice": "s3cret", "bob": "hunter2"})
    assert store.check(attempt("alice", "s3cret"))
    assert not store.check(attempt("alice", "hunter2"))
    assert not store.check(attempt("mallory", "s3cret"))
    assert store.check(cram("bob", "hunter2"))
    assert not store.check(cram("bob", "wrong"))
    assert not store.check(cram("mallory", "hunter2"))
    assert not store.is_slow(attempt("alice", "s3cret"))
    assert store.users == {"alice", "bob"} and len(store) == 2 and "alice" in store


def test_hashes_check_passwords_but_never_cram_md5() -> None:
    store = Credentials(hashes={"alice": fast_hash("s3cret")})
    assert store.check(attempt("alice", "s3cret"))
    assert not store.check(attempt("alice", "S3cret"))
    assert not store.check(attempt("nobody", "s3cret"))  # checked against a decoy hash
    assert not store.check(cram("alice", "s3cret"))  # the clear password is unknown
    assert store.is_slow(attempt("alice", "s3cret")) and store.is_slow(attempt("x", "y"))
    assert not store.is_slow(cram("alice", "s3cret"))
    assert store.has_hashes


def test_user_password_specs() -> None:
    store = Credentials.from_user_passwords(["alice:pass:with:colons", "bob:x y"])
    assert store.check(attempt("alice", "pass:with:colons")) and store.check(attempt("bob", "x y"))
    for bad in ("alice", "alice:", ":pw", " alice:pw"):
        with pytest.raises(ValueError):
            Credentials.from_user_passwords([bad])
    with pytest.raises(ValueError, match="twice"):
        Credentials.from_user_passwords(["a:1", "a:2"])


def test_password_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(
        f"# smtpcore users\n\nalice:{fast_hash('s3cret')}\n  bob:{fast_hash('hunter2')}  \n",
        encoding="utf-8",
    )
    store = Credentials.from_file(users)
    assert store.users == {"alice", "bob"}
    assert store.check(attempt("bob", "hunter2")) and not store.check(attempt("bob", "s3cret"))


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("alice\n", ":1: expected user:scrypt"),
        ("# ok\nalice:plaintext\n", ":2: not a hash"),
        ("alice:scrypt$3$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==\n", ":1: scrypt hash: N"),
        (":scrypt$16$1$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==\n", ":1: empty user name"),
        ("a:{h}\na:{h}\n", ":2: user 'a' is listed twice"),
    ],
)
def test_password_file_errors_name_the_line(tmp_path: Path, content: str, complaint: str) -> None:
    users = tmp_path / "users"
    users.write_text(content.replace("{h}", fast_hash("x")), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{users}{complaint}")):
        Credentials.from_file(users)


def test_merging_stores_refuses_a_user_twice() -> None:
    clear = Credentials({"alice": "a"})
    hashed = Credentials(hashes={"bob": fast_hash("b")})
    both = clear.merged(hashed)
    assert both.check(attempt("alice", "a")) and both.check(attempt("bob", "b"))
    with pytest.raises(ValueError, match="'alice' is given twice"):
        both.merged(Credentials({"alice": "again"}))
    with pytest.raises(ValueError, match="password and a hash"):
        Credentials({"alice": "a"}, {"alice": fast_hash("a")})


# ---------------------------------------------------------------- the handler


class Inner(Handler):
    def __init__(self) -> None:
        self.mails: list[str] = []

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        self.mails.append(address)


class AsyncInner(Handler):
    async def on_message(self, ctx: Session) -> None:
        pass

    async def on_auth(self, *args: Any) -> None:
        pass


def test_wrapper_forwards_exactly_the_overridden_hooks() -> None:
    inner = Inner()
    handler = AuthenticatingHandler(Credentials({"alice": "a"}), inner)
    assert isinstance(handler, AuthenticatingHandler) and handler.handler is inner
    # The driver calls only the hooks a handler's class overrides (decided per class).
    wrapper_class = type(handler)
    assert wrapper_class.on_mail_from is not Handler.on_mail_from  # forwarded ...
    assert wrapper_class.on_message is Handler.on_message  # ... the others left alone
    assert wrapper_class.on_helo is Handler.on_helo
    event = MailFrom(address="x@y.z")
    handler.on_mail_from(session(), "x@y.z", event)
    assert inner.mails == ["x@y.z"]
    assert handler.mails is inner.mails  # other attributes are the wrapped handler's
    check_sync_handler(handler)  # fine under the threads transport
    with pytest.raises(TypeError, match="already authenticates"):
        AuthenticatingHandler(Credentials({"a": "b"}), handler)


def test_wrapper_of_async_hooks_is_async_so_threads_refuse_it() -> None:
    handler = AuthenticatingHandler(Credentials({"alice": "a"}), AsyncInner())
    assert inspect.iscoroutinefunction(handler.on_message)
    assert inspect.iscoroutinefunction(handler.on_auth)
    with pytest.raises(TypeError, match="async"):
        check_sync_handler(handler)


def test_wrong_password_and_impersonation_are_535() -> None:
    handler = AuthenticatingHandler(Credentials({"alice": "a"}), Handler())
    assert run_on_auth(handler, attempt("alice", "a")) is None
    for bad in (attempt("alice", "b"), attempt("bob", "a"), attempt("alice", "a", authzid="bob")):
        with pytest.raises(Smtp535Error):
            run_on_auth(handler, bad)


def test_wrapped_on_auth_decides_after_the_password_check() -> None:
    class Policy(Handler):
        def on_auth(self, ctx: Session, authz: str, authc: str, pw: Any, at: Any) -> str:
            if authz == "postmaster":
                raise SmtpError(535, "Not you", "5.7.8")
            return f"{authc}@example.org"

    handler = AuthenticatingHandler(Credentials({"alice": "a"}), Policy())
    assert run_on_auth(handler, attempt("alice", "a", authzid="bob")) == "alice@example.org"
    with pytest.raises(SmtpError, match="Not you"):
        run_on_auth(handler, attempt("alice", "a", authzid="postmaster"))
    with pytest.raises(Smtp535Error):  # the policy never sees a wrong password
        run_on_auth(handler, attempt("alice", "wrong"))


def test_as_a_base_class() -> None:
    class Submission(AuthenticatingHandler):
        def __init__(self) -> None:
            super().__init__(Credentials({"alice": "a"}))

        def authorize(self, ctx: Session, authz: str, authc: str, at: AuthAttempt) -> None:
            return None  # anyone may act as anyone (a trusted relay)

    handler = Submission()
    assert run_on_auth(handler, attempt("alice", "a", authzid="bob")) is None
    with pytest.raises(Smtp535Error):
        run_on_auth(handler, attempt("alice", "b"))


def test_scrypt_leaves_the_event_loop() -> None:
    """In an event loop on_auth hands scrypt to a worker thread (it returns an awaitable);
    without one (threads transport) it checks inline."""
    handler = AuthenticatingHandler(Credentials(hashes={"alice": fast_hash("a")}))
    good, bad = attempt("alice", "a"), attempt("alice", "b")
    assert run_on_auth(handler, good) is None

    async def check(auth: AuthAttempt) -> Any:
        result = handler.on_auth(session(), "alice", "alice", auth.password, auth)
        assert inspect.isawaitable(result)
        return await result

    assert asyncio.run(check(good)) is None
    with pytest.raises(Smtp535Error):
        asyncio.run(check(bad))
    assert trio.run(check, good) is None
    with pytest.raises(Smtp535Error):
        trio.run(check, bad)


def test_event_loop_library_detection() -> None:
    async def name() -> str | None:
        return event_loop_library()

    assert event_loop_library() is None
    assert asyncio.run(name()) == "asyncio"
    assert trio.run(name) == "trio"
