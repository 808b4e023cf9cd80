"""AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5, a custom mechanism, modes, limits and errors."""

from __future__ import annotations

import hashlib
import hmac
import re
from base64 import b64decode, b64encode
from typing import Any

import pytest

from smtpcore import (
    AuthAttempt,
    AuthInfo,
    CloseReason,
    ConnectionClosed,
    Event,
    MailFrom,
    ProtocolViolation,
    Reply,
    SaslExchange,
    SaslSyntaxError,
    SmtpConfig,
    SmtpConnection,
    State,
)
from tests.core._support import EHLO, MAIL, config, connect, of_type, rejecting, send

OK_AUTH = "235 2.7.0 Authentication succeeded"
FAILED = "535 5.7.8 Authentication credentials invalid"
BAD_B64 = "501 5.5.2 Cannot decode response"
CANCELLED = "501 5.7.0 Authentication cancelled"
INSECURE: dict[str, Any] = {"auth_mode": "optional", "allow_insecure_auth": True}


def b64(data: bytes | str) -> str:
    return b64encode(data.encode() if isinstance(data, str) else data).decode()


def line(text: str) -> bytes:
    return text.encode() + b"\r\n"


def plain(authzid: str, authcid: str, password: str) -> str:
    return b64(f"{authzid}\0{authcid}\0{password}")


def auth_conn(cfg: SmtpConfig | None = None, **kwargs: Any) -> SmtpConnection:
    """A session past EHLO with AUTH allowed on cleartext (unless ``cfg`` says otherwise)."""
    return connect(cfg or config(**INSECURE), **kwargs)


def ehlo_keywords(cfg: SmtpConfig, **kwargs: Any) -> list[str]:
    conn = connect(cfg, ehlo=None, **kwargs)
    return [x[4:] for x in send(conn, EHLO)[1][1:]]


# ---------------------------------------------------------------- PLAIN


def test_plain_with_initial_response() -> None:
    conn = auth_conn()
    events, lines = send(conn, line("AUTH PLAIN " + plain("", "user", "secret")))
    assert lines == [OK_AUTH]
    attempt = of_type(events, AuthAttempt)[0]
    assert attempt == AuthAttempt(
        mechanism="PLAIN", authorization_id="user", authentication_id="user", password="secret"
    )
    assert attempt.verify("secret")
    assert not attempt.verify("Secret")
    assert conn.auth == AuthInfo("PLAIN", "user", "user")
    assert conn.state is State.READY


def test_plain_without_initial_response() -> None:
    """RFC 4954 §4: an empty challenge is ``334`` followed by a space."""
    conn = auth_conn()
    events, lines = send(conn, b"AUTH PLAIN\r\n")
    assert lines == ["334 "]
    assert conn.state is State.AUTH
    assert not events
    events, lines = send(conn, line(plain("", "user", "secret")))
    assert lines == [OK_AUTH]
    assert of_type(events, AuthAttempt)[0].password == "secret"


def test_plain_with_authorization_identity() -> None:
    conn = auth_conn()
    _, lines = send(conn, line("AUTH plain " + plain("admin", "user", "pw")))
    assert lines == [OK_AUTH]
    assert conn.auth == AuthInfo("PLAIN", "admin", "user")


def test_plain_with_empty_initial_response() -> None:
    """``=`` is an empty initial response, which PLAIN cannot use: 501 5.5.2."""
    conn = auth_conn()
    events, lines = send(conn, b"AUTH PLAIN =\r\n")
    assert len(lines) == 1
    assert lines[0].startswith("501 5.5.2 ")
    assert not of_type(events, AuthAttempt)
    assert conn.auth is None
    assert conn.state is State.READY


@pytest.mark.parametrize("response", [b64("user\0pass"), b64("\0\0pass"), b64("a\0b\0c\0d")])
def test_malformed_plain_response(response: str) -> None:
    conn = auth_conn()
    _, lines = send(conn, line("AUTH PLAIN " + response))
    assert lines[0].startswith("501 5.5.2 ")
    assert conn.state is State.READY


# ---------------------------------------------------------------- LOGIN


def test_login_without_username() -> None:
    conn = auth_conn()
    _, lines = send(conn, b"AUTH LOGIN\r\n")
    assert lines == ["334 " + b64("Username:")]
    _, lines = send(conn, line(b64("user")))
    assert lines == ["334 " + b64("Password:")]
    events, lines = send(conn, line(b64("secret")))
    assert lines == [OK_AUTH]
    assert of_type(events, AuthAttempt)[0] == AuthAttempt(
        mechanism="LOGIN", authorization_id="user", authentication_id="user", password="secret"
    )
    assert conn.auth == AuthInfo("LOGIN", "user", "user")


def test_login_with_username_up_front() -> None:
    conn = auth_conn()
    _, lines = send(conn, line("AUTH LOGIN " + b64("user")))
    assert lines == ["334 " + b64("Password:")]
    events, lines = send(conn, line(b64("secret")))
    assert lines == [OK_AUTH]
    assert of_type(events, AuthAttempt)[0].authentication_id == "user"


def test_login_with_empty_username() -> None:
    conn = auth_conn()
    _, lines = send(conn, b"AUTH LOGIN =\r\n")
    assert lines[0].startswith("501 5.5.2 ")


def test_login_pipelined_responses() -> None:
    conn = auth_conn()
    _, lines = send(conn, line("AUTH LOGIN") + line(b64("user")) + line(b64("pw")) + MAIL)
    assert lines == [
        "334 " + b64("Username:"),
        "334 " + b64("Password:"),
        OK_AUTH,
        "250 2.1.0 Sender OK",
    ]


# ---------------------------------------------------------------- CRAM-MD5


def cram_conn() -> SmtpConnection:
    return auth_conn(config(auth_mechanisms=("CRAM-MD5",), **INSECURE))


def test_cram_md5_exchange_and_verify() -> None:
    """RFC 2195: the server challenge, then ``user hex(hmac-md5(secret, challenge))``."""
    conn = cram_conn()
    _, lines = send(conn, b"AUTH CRAM-MD5\r\n")
    assert len(lines) == 1 and lines[0].startswith("334 ")
    challenge = b64decode(lines[0][4:])
    assert re.fullmatch(rb"<[^<>@]+@mx\.test>", challenge)
    digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
    events, lines = send(conn, line(b64(f"tim {digest}")))
    attempt = of_type(events, AuthAttempt)[0]
    assert lines == [OK_AUTH]
    assert attempt.mechanism == "CRAM-MD5"
    assert attempt.authentication_id == "tim"
    assert attempt.challenge == challenge
    assert attempt.verify("tanstaaftanstaaf")
    assert not attempt.verify("wrong")
    assert conn.auth == AuthInfo("CRAM-MD5", "tim", "tim")


def test_cram_md5_challenges_differ() -> None:
    first = send(cram_conn(), b"AUTH CRAM-MD5\r\n")[1]
    second = send(cram_conn(), b"AUTH CRAM-MD5\r\n")[1]
    assert first != second


def test_cram_md5_rejects_an_initial_response() -> None:
    _, lines = send(cram_conn(), line("AUTH CRAM-MD5 " + b64("tim 0123")))
    assert lines[0].startswith("501 5.5.2 ")


def test_cram_md5_malformed_response() -> None:
    conn = cram_conn()
    send(conn, b"AUTH CRAM-MD5\r\n")
    _, lines = send(conn, line(b64("no-digest")))
    assert lines[0].startswith("501 5.5.2 ")
    assert conn.state is State.READY


def test_cram_md5_decided_by_verify() -> None:
    def decide(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, AuthAttempt) and not event.verify("right"):
            c.reject(event)
        else:
            c.accept(event)

    conn = cram_conn()
    challenge = b64decode(send(conn, b"AUTH CRAM-MD5\r\n")[1][0][4:])
    digest = hmac.new(b"wrong", challenge, hashlib.md5).hexdigest()
    _, lines = send(conn, line(b64(f"tim {digest}")), decide)
    assert lines == [FAILED]
    assert conn.auth is None


# ---------------------------------------------------------------- errors in the exchange


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_star_cancels_the_exchange(mechanism: str) -> None:
    """RFC 4954 §4: a ``*`` line cancels; the server MUST answer 501."""
    conn = auth_conn()
    send(conn, line(f"AUTH {mechanism}"))
    events, lines = send(conn, b"*\r\n")
    assert lines == [CANCELLED]
    assert of_type(events, ProtocolViolation)
    assert not of_type(events, AuthAttempt)
    assert conn.state is State.READY
    assert conn.auth is None
    assert send(conn, b"NOOP\r\n")[1] == ["250 2.0.0 OK"]


@pytest.mark.parametrize("bad", ["!!!!", "abc", "dXNlcg=", "dXN lcg=="])
def test_bad_base64_response_is_501_5_5_2(bad: str) -> None:
    """RFC 4954 §4: undecodable base64 gets 501 with enhanced code 5.5.2."""
    conn = auth_conn()
    send(conn, b"AUTH LOGIN\r\n")
    _, lines = send(conn, line(bad))
    assert lines == [BAD_B64]
    assert conn.state is State.READY


def test_bad_base64_initial_response_is_501_5_5_2() -> None:
    _, lines = send(auth_conn(), b"AUTH PLAIN !!!!\r\n")
    assert lines == [BAD_B64]


def test_unknown_mechanism_is_504() -> None:
    """RFC 4954 §4: an unsupported mechanism gets 504."""
    _, lines = send(auth_conn(), b"AUTH GSSAPI\r\n")
    assert lines == ["504 5.5.4 Unrecognized authentication mechanism"]


def test_auth_without_mechanism_is_a_syntax_error() -> None:
    """RFC 4954 §4 grammar ``"AUTH" SP sasl-mech``: a missing argument is 501 (RFC 5321)."""
    _, lines = send(auth_conn(), b"AUTH\r\n")
    assert len(lines) == 1
    assert lines[0].startswith("501 5.5."), lines


def test_sasl_line_too_long_is_500_5_5_6() -> None:
    """RFC 4954 §4: 500 5.5.6 "Authentication Exchange line is too long"."""
    conn = auth_conn(config(max_auth_line_length=1024, **INSECURE))
    send(conn, b"AUTH LOGIN\r\n")
    _, lines = send(conn, b"A" * 2000 + b"\r\n")
    assert lines == ["500 5.5.6 Line too long"]
    assert conn.state is State.READY
    assert conn.auth is None
    assert send(conn, b"NOOP\r\n")[1] == ["250 2.0.0 OK"]


def test_sasl_responses_may_be_longer_than_command_lines() -> None:
    """RFC 4954 §4: SASL responses up to 12288 octets, beyond the command line limit."""
    conn = auth_conn()
    password = "p" * 5000
    send(conn, b"AUTH PLAIN\r\n")
    events, lines = send(conn, line(plain("", "user", password)))
    assert lines == [OK_AUTH]
    assert of_type(events, AuthAttempt)[0].password == password


# ---------------------------------------------------------------- sequence


def test_auth_twice_is_503() -> None:
    """RFC 4954 §4: after a successful AUTH, further AUTH commands get 503."""
    conn = auth_conn()
    send(conn, line("AUTH PLAIN " + plain("", "user", "pw")))
    _, lines = send(conn, line("AUTH PLAIN " + plain("", "other", "pw")))
    assert lines == ["503 5.5.1 Already authenticated"]
    assert conn.auth == AuthInfo("PLAIN", "user", "user")


def test_auth_in_a_transaction_is_503() -> None:
    """RFC 4954 §4: AUTH during a mail transaction MUST be rejected with 503."""
    conn = auth_conn()
    send(conn, MAIL)
    _, lines = send(conn, line("AUTH PLAIN " + plain("", "user", "pw")))
    assert lines == ["503 5.5.1 AUTH not allowed in a transaction"]
    assert conn.auth is None
    assert conn.state is State.MAIL


def test_retry_after_a_failure() -> None:
    conn = auth_conn()
    _, lines = send(conn, line("AUTH PLAIN " + plain("", "u", "bad")), rejecting(AuthAttempt))
    assert lines == [FAILED]
    assert conn.auth is None
    assert conn.auth_failures == 1
    _, lines = send(conn, line("AUTH PLAIN " + plain("", "u", "good")))
    assert lines == [OK_AUTH]
    assert conn.auth is not None


def test_too_many_failures_close_with_421() -> None:
    conn = auth_conn()
    attempt = line("AUTH PLAIN " + plain("", "u", "bad"))
    events, lines = send(conn, attempt * 3 + b"NOOP\r\n", rejecting(AuthAttempt))
    assert lines == [
        FAILED,
        FAILED,
        FAILED,
        "421 4.7.0 Too many authentication failures, closing channel",
    ]
    assert events[-1] == ConnectionClosed(reason=CloseReason.TOO_MANY_AUTH_FAILURES)
    assert conn.closed


def test_failure_limit_is_configurable_and_counts_custom_replies() -> None:
    conn = auth_conn(config(max_auth_failures=1, **INSECURE))
    temp = Reply(454, "Temporary authentication failure", "4.7.0")
    _, lines = send(
        conn, line("AUTH PLAIN " + plain("", "u", "x")), rejecting(AuthAttempt, reply=temp)
    )
    assert lines == [
        "454 4.7.0 Temporary authentication failure",
        "421 4.7.0 Too many authentication failures, closing channel",
    ]


def test_rewrite_sets_the_authorization_identity() -> None:
    def decide(c: SmtpConnection, event: Event) -> None:
        if isinstance(event, AuthAttempt):
            c.accept(event, rewrite="user@example.org")
        else:
            c.accept(event)

    conn = auth_conn()
    _, lines = send(conn, line("AUTH PLAIN " + plain("", "user", "pw")), decide)
    assert lines == [OK_AUTH]
    assert conn.auth == AuthInfo("PLAIN", "user@example.org", "user")


# ---------------------------------------------------------------- modes and advertising


def test_forbidden_mode_answers_502_and_does_not_advertise() -> None:
    cfg = config(allow_insecure_auth=True)
    assert not [k for k in ehlo_keywords(cfg) if k.startswith("AUTH")]
    _, lines = send(connect(cfg), line("AUTH PLAIN " + plain("", "u", "p")))
    assert lines == ["502 5.5.1 AUTH not available"]


def test_optional_mode_advertises_and_allows_mail_without_auth() -> None:
    cfg = config(**INSECURE)
    assert "AUTH PLAIN LOGIN" in ehlo_keywords(cfg)
    _, lines = send(connect(cfg), MAIL)
    assert lines == ["250 2.1.0 Sender OK"]


def test_required_mode_wants_auth_before_mail() -> None:
    """RFC 4954 §6: 530 5.7.0 Authentication required."""
    conn = auth_conn(config(auth_mode="required", allow_insecure_auth=True))
    events, lines = send(conn, MAIL + b"NOOP\r\n")
    assert lines == ["530 5.7.0 Authentication required", "250 2.0.0 OK"]
    assert not of_type(events, MailFrom)
    send(conn, line("AUTH PLAIN " + plain("", "u", "p")))
    _, lines = send(conn, MAIL)
    assert lines == ["250 2.1.0 Sender OK"]


def test_required_mode_before_helo_is_a_sequence_error() -> None:
    conn = connect(config(auth_mode="required", allow_insecure_auth=True), ehlo=None)
    _, lines = send(conn, MAIL)
    assert lines == ["503 5.5.1 Send HELO/EHLO first"]


def test_not_offered_on_cleartext_without_allow_insecure_auth() -> None:
    """RFC 4954 §4 and §6: 538 5.7.11 when the mechanism needs an encrypted channel."""
    cfg = config(auth_mode="optional")
    assert not [k for k in ehlo_keywords(cfg) if k.startswith("AUTH")]
    _, lines = send(connect(cfg), line("AUTH PLAIN " + plain("", "u", "p")))
    assert lines == ["538 5.7.11 Encryption required for requested authentication mechanism"]


def test_offered_under_tls() -> None:
    cfg = config(auth_mode="optional")
    assert "AUTH PLAIN LOGIN" in ehlo_keywords(cfg, tls_active=True)
    conn = connect(cfg, tls_active=True)
    _, lines = send(conn, line("AUTH PLAIN " + plain("", "u", "p")))
    assert lines == [OK_AUTH]


def test_auth_mechanisms_are_advertised_in_configured_order() -> None:
    cfg = config(auth_mechanisms=("CRAM-MD5", "login", "PLAIN"), **INSECURE)
    assert "AUTH CRAM-MD5 LOGIN PLAIN" in ehlo_keywords(cfg)


def test_unknown_builtin_mechanism_name_is_a_config_error() -> None:
    with pytest.raises(ValueError):
        config(auth_mechanisms=("NTLM",))


# ---------------------------------------------------------------- custom mechanism


class _XOAuth2Exchange:
    def __init__(self, seen: list[bytes | None]) -> None:
        self._seen = seen

    def step(self, response: bytes | None) -> bytes | AuthAttempt:
        self._seen.append(response)
        if response is None:
            return b""
        if not response:
            raise SaslSyntaxError("XOAUTH2 response is empty")
        pairs = (f.partition("=") for f in response.decode().split("\x01") if f)
        fields = {key: value for key, _, value in pairs}
        if "user" not in fields or not fields.get("auth", "").startswith("Bearer "):
            raise SaslSyntaxError("XOAUTH2 response needs user= and auth=Bearer")
        return AuthAttempt(
            mechanism="XOAUTH2",
            authorization_id=fields["user"],
            authentication_id=fields["user"],
            password=fields["auth"].removeprefix("Bearer "),
        )


class XOAuth2:
    """A tiny XOAUTH2-like mechanism: ``user=...^Aauth=Bearer token^A^A``."""

    name = "XOAUTH2"

    def __init__(self) -> None:
        self.seen: list[bytes | None] = []

    def start(self, hostname: str) -> SaslExchange:
        return _XOAuth2Exchange(self.seen)


def xoauth2_conn() -> tuple[SmtpConnection, XOAuth2]:
    mechanism = XOAuth2()
    return auth_conn(config(auth_mechanisms=("PLAIN", mechanism), **INSECURE)), mechanism


TOKEN = "user=bob@example.org\x01auth=Bearer ya29.token\x01\x01"


def test_custom_mechanism_is_advertised() -> None:
    cfg = config(auth_mechanisms=("PLAIN", XOAuth2()), **INSECURE)
    assert "AUTH PLAIN XOAUTH2" in ehlo_keywords(cfg)


def test_custom_mechanism_with_initial_response() -> None:
    conn, mechanism = xoauth2_conn()
    events, lines = send(conn, line("AUTH XOAUTH2 " + b64(TOKEN)))
    assert lines == [OK_AUTH]
    assert mechanism.seen == [TOKEN.encode()]
    attempt = of_type(events, AuthAttempt)[0]
    assert (attempt.mechanism, attempt.authentication_id) == ("XOAUTH2", "bob@example.org")
    assert attempt.verify("ya29.token")
    assert conn.auth == AuthInfo("XOAUTH2", "bob@example.org", "bob@example.org")


def test_custom_mechanism_without_initial_response() -> None:
    conn, mechanism = xoauth2_conn()
    _, lines = send(conn, b"auth xoauth2\r\n")
    assert lines == ["334 "]
    _, lines = send(conn, line(b64(TOKEN)))
    assert lines == [OK_AUTH]
    assert mechanism.seen == [None, TOKEN.encode()]


def test_equals_sign_is_an_empty_initial_response() -> None:
    """RFC 4954 §4: ``=`` means an empty initial response, not a missing one."""
    conn, mechanism = xoauth2_conn()
    _, lines = send(conn, b"AUTH XOAUTH2 =\r\n")
    assert mechanism.seen == [b""]
    assert lines == ["501 5.5.2 XOAUTH2 response is empty"]


def test_custom_mechanism_syntax_error_is_501_5_5_2() -> None:
    conn, _ = xoauth2_conn()
    _, lines = send(conn, line("AUTH XOAUTH2 " + b64("garbage")))
    assert lines == ["501 5.5.2 XOAUTH2 response needs user= and auth=Bearer"]
    assert conn.state is State.READY
