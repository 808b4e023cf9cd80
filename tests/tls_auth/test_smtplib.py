"""smtplib as the peer: STARTTLS, login, SMTP_SSL on an implicit-TLS listener, bad passwords,
and the TLS facts a hook sees."""

from __future__ import annotations

import smtplib

import pytest

from transports.auth import Credentials

from ._support import MESSAGE, PASSWORD, USER, Recorder, smtp, smtps, unverified_context
from .conftest import Serve

pytestmark = pytest.mark.network


@pytest.mark.parametrize("store", ["clear", "scrypt"])
def test_starttls_then_login_then_send(
    serve: Serve,
    recorder: Recorder,
    store: str,
    plain_credentials: Credentials,
    hashed_credentials: Credentials,
) -> None:
    credentials = plain_credentials if store == "clear" else hashed_credentials
    with serve(recorder, credentials=credentials) as running, smtp(running.plain) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=unverified_context())
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, text = client.login(USER, PASSWORD)
        assert code == 235 and text.startswith(b"2.7.0"), text
        assert client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
        version, cipher = client.sock.version(), client.sock.cipher()[0]  # type: ignore[union-attr]
    data, seen = recorder.message()
    assert data == MESSAGE
    assert seen.tls_active and seen.authentication_id == USER == seen.authorization_id
    assert (seen.version, seen.cipher) == (version, cipher)
    assert seen.version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_ssl_on_implicit_tls_listener(
    serve: Serve, recorder: Recorder, mechanism: str
) -> None:
    with serve(recorder, smtps=True) as running, smtps(running.smtps) as client:
        client.ehlo()
        assert not client.has_extn("starttls")  # already encrypted: nothing to upgrade
        assert client.has_extn("auth")
        client.user, client.password = USER, PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        assert client.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
        version, cipher = client.sock.version(), client.sock.cipher()[0]  # type: ignore[union-attr]
    _, seen = recorder.message()
    assert seen.tls_active and seen.authentication_id == USER
    assert (seen.version, seen.cipher) == (version, cipher)


def test_wrong_password_is_535_5_7_8(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, auth_mechanisms=("PLAIN",)) as running, smtp(running.plain) as client:
        client.starttls(context=unverified_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(USER, "wrong")
        assert (refused.value.smtp_code, error_text(refused.value)[:5]) == (535, "5.7.8")
        code, _ = client.login(USER, PASSWORD)  # one failure is below the limit
        assert code == 235


def test_unknown_user_is_refused_like_a_wrong_password(
    serve: Serve, recorder: Recorder, hashed_credentials: Credentials
) -> None:
    with (
        serve(recorder, credentials=hashed_credentials, auth_mechanisms=("LOGIN",)) as running,
        smtp(running.plain) as client,
    ):
        client.starttls(context=unverified_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("mallory", PASSWORD)
        assert (refused.value.smtp_code, error_text(refused.value)[:5]) == (535, "5.7.8")


def error_text(error: smtplib.SMTPResponseException) -> str:
    text = error.smtp_error
    return text.decode() if isinstance(text, bytes) else text
