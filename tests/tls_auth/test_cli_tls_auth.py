"""``smtpcore serve`` with its TLS and AUTH flags, as a real process, talked to by swaks,
openssl and smtplib; ``smtpcore hash-password``; and the flag combinations it refuses."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from transports import cli
from transports.auth import AuthenticatingHandler, verify_password
from transports.controller import TRANSPORTS

from ._support import (
    HOSTNAME,
    PASSWORD,
    PROCESS_TIMEOUT,
    USER,
    CustomAuth,
    Interactive,
    RawClient,
    old_tls_client_flags,
    peer_certificate,
    plain,
    run_swaks,
    s_client,
    smtp,
    unverified_context,
)
from .conftest import CertFiles

pytestmark = pytest.mark.network

TLS_FLAGS = ("--tls-mode", "--tls-cert", "--tls-key", "--tls-preset", "--smtps-port")
AUTH_FLAGS = (
    "--auth-mode",
    "--auth-user",
    "--auth-file",
    "--auth-mechanisms",
    "--allow-insecure-auth",
    "--auth-failure-delay",
    "--max-auth-failures",
)
ALICE = f"{USER}:{PASSWORD}"
OPTIONAL = ["--auth-mode", "optional", "--tls-mode", "optional"]
CUSTOM_AUTH = "tests.tls_auth._support:CustomAuth"


def smtpcore_command() -> list[str]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).with_name("smtpcore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "transports.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A ``smtpcore serve`` process on 127.0.0.1, its output in files under ``tmp_path``.

    The transport is trio unless ``args`` name one: the flags are the command's, the same for
    every transport (test_tls_and_auth_required_deliver_with_swaks runs them all), and trio is
    free of the asyncio Finished race that would make these tests flaky (see conftest.py).
    """

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.out, self.err = tmp_path / "stdout", tmp_path / "stderr"
        argv = [*smtpcore_command(), "serve", "--port", str(self.port), "--hostname", HOSTNAME]
        if "--transport" not in args:
            argv += ["--transport", "trio"]
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [*argv, *args], stdout=out, stderr=err, env=env, cwd=tmp_path
            )
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while "serving" not in self.stderr() and self.process.poll() is None:
            assert time.monotonic() < deadline, f"no start-up line: {self.stderr()}"
            time.sleep(0.02)
        assert self.process.poll() is None, self.stderr()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def startup(self) -> str:
        return next(line for line in self.stderr().splitlines() if "serving" in line)

    def stdout(self) -> str:
        return self.out.read_text("utf-8")

    def stderr(self) -> str:
        return self.err.read_text("utf-8")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(PROCESS_TIMEOUT)


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[Served]:
    served = Served(tmp_path, *args)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait(PROCESS_TIMEOUT)


def swaks_auth(mechanism: str, password: str = PASSWORD) -> tuple[str, ...]:
    return ("--auth", mechanism, "--auth-user", USER, "--auth-password", password)


# ---------------------------------------------------------------- the server, for real


@pytest.mark.parametrize("cli_transport", TRANSPORTS)
def test_tls_and_auth_required_deliver_with_swaks(tmp_path: Path, cli_transport: str) -> None:
    with serving(
        tmp_path,
        *("--transport", cli_transport),
        *("--tls-mode", "required", "--auth-mode", "required", "--auth-user", ALICE),
    ) as served:
        startup = served.startup()
        assert "TLS required (modern preset, self-signed certificate)" in startup, startup
        assert "AUTH required (PLAIN LOGIN, 1 user)" in startup, startup
        assert f"self-signed certificate for '{HOSTNAME}'" in served.stderr()  # the warning
        result = run_swaks(served.address, "--tls", *swaks_auth("PLAIN"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert served.stop() == 0
    out = served.stdout()
    assert f"AUTH:      {USER}\n" in out, out
    assert re.search(r"^TLS:       TLSv1\.[23] ", out, re.MULTILINE), out


def test_required_modes_refuse_what_is_missing(tmp_path: Path) -> None:
    with serving(
        tmp_path, "--tls-mode", "required", "--auth-mode", "required", "--auth-user", ALICE
    ) as served:
        no_tls = run_swaks(served.address)
        assert no_tls.returncode != 0
        assert "530 5.7.0 Must issue a STARTTLS command first" in no_tls.stdout, no_tls.stdout
        no_auth = run_swaks(served.address, "--tls")
        assert no_auth.returncode != 0
        assert "530 5.7.0 Authentication required" in no_auth.stdout, no_auth.stdout
        bad_password = run_swaks(served.address, "--tls", *swaks_auth("LOGIN", "wrong"))
        assert bad_password.returncode != 0
        assert "535 5.7.8" in bad_password.stdout, bad_password.stdout
        assert served.stop() == 0
    assert "Sender:" not in served.stdout()


def test_smtps_port_with_swaks_tlsc(tmp_path: Path) -> None:
    with serving(
        tmp_path, "--smtps-port", "0", "--auth-mode", "required", "--auth-user", ALICE
    ) as served:
        startup = served.startup()
        smtps_port = int(re.findall(r"SMTPS on 127\.0\.0\.1:(\d+)", startup)[0])
        assert f"SMTP on 127.0.0.1:{served.port} and SMTPS" in startup, startup
        assert "TLS forbidden (implicit TLS only, modern preset" in startup, startup
        result = run_swaks(("127.0.0.1", smtps_port), "--tlsc", *swaks_auth("PLAIN"))
        assert result.returncode == 0, result.stdout + result.stderr
        with smtp(served.address) as client:  # the plain port: no STARTTLS, no AUTH, no mail
            client.ehlo()
            assert not client.has_extn("starttls") and not client.has_extn("auth")
            assert client.mail("alice@example.org")[0] == 530
        assert served.stop() == 0
    assert f"AUTH:      {USER}\n" in served.stdout()


def test_auth_file_from_hash_password(tmp_path: Path) -> None:
    made = subprocess.run(
        [*smtpcore_command(), "hash-password", USER],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    line = made.stdout.strip()
    assert line.startswith(f"{USER}:scrypt$") and verify_password(PASSWORD, line.split(":", 1)[1])
    users = tmp_path / "users"
    users.write_text(f"# made by smtpcore hash-password\n{line}\n", encoding="utf-8")
    with serving(
        tmp_path,
        *("--tls-mode", "optional", "--auth-mode", "required"),
        *("--auth-file", str(users), "--auth-mechanisms", "LOGIN"),
    ) as served:
        assert "AUTH required (LOGIN, 1 user)" in served.startup()
        good = run_swaks(served.address, "--tls", *swaks_auth("LOGIN"))
        assert good.returncode == 0, good.stdout + good.stderr
        bad = run_swaks(served.address, "--tls", *swaks_auth("LOGIN", "wrong"))
        assert bad.returncode != 0 and "535 5.7.8" in bad.stdout, bad.stdout
        assert served.stop() == 0
    assert served.stdout().count("Sender:") == 1


def test_cram_md5_with_auth_user(tmp_path: Path) -> None:
    with serving(
        tmp_path,
        *("--tls-mode", "optional", "--auth-mode", "optional", "--auth-user", ALICE),
        *("--auth-mechanisms", "cram-md5,PLAIN"),
    ) as served:
        assert "AUTH optional (CRAM-MD5 PLAIN, 1 user)" in served.startup()
        result = run_swaks(served.address, "--tls", *swaks_auth("CRAM-MD5"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert served.stop() == 0


def test_certificate_file_and_preset(tmp_path: Path, cert_files: CertFiles) -> None:
    """--tls-cert with the key in the same file, and --tls-preset widest: the certificate
    served is the file's, and TLS 1.1 works (the modern default refuses it, see below)."""
    with serving(
        tmp_path,
        *("--tls-mode", "optional", "--tls-cert", str(cert_files.combined)),
        *("--tls-preset", "widest"),
    ) as served:
        assert f"TLS optional (widest preset, certificate {cert_files.combined})" in (
            served.startup()
        )
        with smtp(served.address) as client:
            client.starttls(context=unverified_context())
            assert peer_certificate(client) == _der(cert_files.pem)
        argv = s_client(served.address, "-starttls", "smtp", *old_tls_client_flags("-tls1_1"))
        with Interactive(argv) as peer:
            assert peer.expect(r"^Protocol version: (\S+)").group(1) == "TLSv1.1"
            peer.command("QUIT", "221 ")
        assert served.stop() == 0


def test_separate_key_file_and_modern_default(tmp_path: Path, cert_files: CertFiles) -> None:
    with serving(
        tmp_path,
        *("--tls-mode", "optional", "--tls-cert", str(cert_files.cert)),
        *("--tls-key", str(cert_files.key)),
    ) as served:
        argv = s_client(served.address, "-starttls", "smtp", *old_tls_client_flags("-tls1_1"))
        with Interactive(argv) as peer:
            assert peer.wait() != 0
            assert "Protocol version" not in peer.text()
        with smtp(served.address) as client:
            client.starttls(context=unverified_context())
            assert peer_certificate(client) == _der(cert_files.pem)
        assert served.stop() == 0


def test_auth_failure_flags_reach_the_server(tmp_path: Path) -> None:
    with serving(
        tmp_path,
        *("--tls-mode", "optional", "--auth-mode", "optional", "--auth-user", ALICE),
        *("--max-auth-failures", "2", "--auth-failure-delay", "0"),
    ) as served:
        with RawClient(served.address) as client:
            client.expect(220)
            client.ehlo()
            client.starttls()
            client.ehlo()
            client.command(f"AUTH PLAIN {plain(USER, 'one')}", 535)
            client.send(f"AUTH PLAIN {plain(USER, 'two')}\r\n".encode())
            client.expect(535)
            client.expect(421)
            assert client.closed_by_server()
        assert served.stop() == 0


def _der(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


# ---------------------------------------------------------------- the command line, in process


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
        (["--tls-cert", "cert.pem"], "--tls-cert needs --tls-mode"),
        (["--tls-preset", "broad"], "--tls-preset needs --tls-mode"),
        (["--tls-mode", "optional", "--tls-preset", "strongest"], "invalid choice"),
        (["--tls-mode", "optional", "--tls-cert", "/no/such.pem"], "not found"),
        (["--tls-mode", "sometimes"], "invalid choice"),
        (["--smtps-port", "2525"], "--smtps-port must differ from --port"),
        (["--auth-user", ALICE], "--auth-user needs --auth-mode"),
        (["--allow-insecure-auth"], "--allow-insecure-auth needs --auth-mode"),
        (["--auth-mode", "required", "--auth-user", ALICE], "AUTH is offered only over TLS"),
        (OPTIONAL, "needs --auth-user or"),
        (["--auth-mode", "optional", "--smtps-port", "0", "--auth-user", "alice"], "USER:PASS"),
        (
            [*OPTIONAL, "--auth-file", "/no/such"],
            "No such file",
        ),
        (
            [*OPTIONAL, "--auth-user", ALICE, "--auth-mechanisms", "PLAIN,XOAUTH2"],
            "choose from PLAIN,LOGIN,CRAM-MD5",
        ),
        (
            [*OPTIONAL, "--auth-file", "users", "--auth-mechanisms", "CRAM-MD5"],
            "CRAM-MD5 needs clear passwords",
        ),
        (
            [*OPTIONAL, "--auth-mechanisms", "CRAM-MD5", "--handler", CUSTOM_AUTH],
            "CRAM-MD5 needs clear passwords",
        ),
        ([*OPTIONAL, "--auth-file", os.devnull], f"--auth-file {os.devnull} lists no users"),
        (["--auth-failure-delay", "-1"], "must be zero or more"),
        (["--max-auth-failures", "0"], "must be positive"),
    ],
)
def test_contradictory_flags_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and complaint in " ".join(err.split()), err


def test_a_handler_with_its_own_on_auth_needs_no_users() -> None:
    args = cli.build_parser().parse_args(["serve", *OPTIONAL, "--handler", CUSTOM_AUTH])
    cli._check_tls_and_auth(args)
    handler = CustomAuth()
    assert cli._with_credentials(handler, args) is handler
    args = cli.build_parser().parse_args(
        ["serve", "--auth-mode", "required", "--tls-mode", "required", "--auth-user", ALICE]
    )
    wrapped = cli._with_credentials(handler, args)
    assert isinstance(wrapped, AuthenticatingHandler) and wrapped.handler is handler


@pytest.mark.parametrize("user", [None, "bob"])
def test_hash_password_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], user: str | None
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pass word:1\r\nignored second line\n"))
    assert cli.main(["hash-password", *([user] if user else [])]) == 0
    line = capsys.readouterr().out.strip()
    encoded = line if user is None else line.removeprefix(f"{user}:")
    assert encoded.startswith("scrypt$") and verify_password("pass word:1", encoded)


@pytest.mark.parametrize(("stdin", "user"), [("\n", "bob"), ("pw\n", "bad:user")])
def test_hash_password_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, user: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exited:
        cli.main(["hash-password", user])
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err


def test_help_lists_tls_and_auth_flags_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (*TLS_FLAGS, *AUTH_FLAGS):
        assert re.search(rf"{flag} .*?\(default: [^)]*\)", text), flag
    for value in ("forbidden", "modern", "PLAIN,LOGIN", "1.0", "3"):
        assert f"(default: {value})" in text, value
