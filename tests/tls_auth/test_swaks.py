"""swaks as the peer: STARTTLS (--tls) and implicit TLS (--tlsc) with PLAIN, LOGIN, CRAM-MD5."""

from __future__ import annotations

import pytest

from ._support import PASSWORD, USER, Recorder, run_swaks
from .conftest import Serve

pytestmark = pytest.mark.network

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_swaks_starttls_and_auth(serve: Serve, recorder: Recorder, mechanism: str) -> None:
    with serve(recorder, auth_mode="required", auth_mechanisms=MECHANISMS) as running:
        result = run_swaks(
            running.plain,
            "--tls",
            *("--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD),
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "=== TLS started with cipher TLSv1." in result.stdout
    assert "235 2.7.0" in result.stdout
    _, seen = recorder.message()
    assert seen.tls_active and seen.authentication_id == USER


def test_swaks_implicit_tls(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, smtps=True, auth_mode="required") as running:
        result = run_swaks(
            running.smtps,
            "--tlsc",
            *("--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD),
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" not in result.stdout  # neither offered nor sent: TLS from the start
    _, seen = recorder.message()
    assert seen.tls_active and seen.authentication_id == USER


def test_swaks_wrong_password_is_refused(serve: Serve, recorder: Recorder) -> None:
    with serve(recorder, auth_mode="required") as running:
        result = run_swaks(
            running.plain,
            "--tls",
            *("--auth", "LOGIN", "--auth-user", USER, "--auth-password", "wrong"),
        )
    assert result.returncode != 0
    assert "535 5.7.8" in result.stdout
    assert recorder.messages == []
