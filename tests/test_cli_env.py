"""``smtpcore`` options from ``SMTPCORE_*`` variables, one-line errors, logging, ``python -m``.

In-process tests call ``main(argv, env)`` with a runner that records the server instead of
serving; the subprocess tests run ``python -m smtpcore`` for real, every wait bounded by
TIMEOUT.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import smtplib

# Real sockets are the point of these tests; the ban only protects the sans-IO core.
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from smtpcore import AuthMode, TlsMode
from transports import cli
from transports.auth import AuthenticatingHandler
from transports.handlers import ChaosHandler, Sink

pytestmark = pytest.mark.network

TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parent.parent


# ---- in process: what reaches the server


class Recorded:
    """Stands in for a transport runner: keeps the server, calls ready(), serves nothing."""

    def __init__(self) -> None:
        self.server: Any = None

    def __call__(self, server: Any, ready: Callable[[], None], loop: object, grace: float) -> None:
        self.server = server
        ready()

    @property
    def options(self) -> Any:
        return self.server.options

    @property
    def handler(self) -> Any:
        return self.server.handler


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    runner = Recorded()
    for transport in list(cli._RUNNERS):
        monkeypatch.setitem(cli._RUNNERS, transport, runner)
    return runner


def serve(argv: list[str], env: dict[str, str]) -> int:
    return cli.main(["serve", *argv], env=env)


def test_every_option_has_a_variable_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    _, parser = cli._build()
    names = [cli.env_name(a) for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(names) >= 24 and "SMTPCORE_TLS_MODE" in names and "SMTPCORE_LOG_FORMAT" in names
    for argv in (["--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv, env={})
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for name in names:
            assert f"[env: {name}" in text, name
        assert "[env: SMTPCORE_CHAOS, comma-separated]" in text
        assert "(default: info) [env: SMTPCORE_LOG_LEVEL]" in text
        assert "(default: text) [env: SMTPCORE_LOG_FORMAT]" in text


def test_help_keeps_the_built_in_defaults_whatever_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"], env={"SMTPCORE_PORT": "2600", "SMTPCORE_HOST": "nonsense"})
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2525) [env: SMTPCORE_PORT]" in text


def test_help_works_with_a_broken_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"], env={"SMTPCORE_PORT": "many"})
    assert exited.value.code == 0


def test_variables_set_the_options(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "SMTPCORE_HOST": "127.0.0.1",
        "SMTPCORE_PORT": "2600",
        "SMTPCORE_HOSTNAME": "mx.test",
        "SMTPCORE_HANDLER": "sink",
        "SMTPCORE_LMTP": "yes",
        "SMTPCORE_MAX_CONNECTIONS": "7",
        "SMTPCORE_MAX_MESSAGE_SIZE": "1000",
        "SMTPCORE_IDLE_TIMEOUT": "12.5",
        "SMTPCORE_TLS_MODE": "required",
        "SMTPCORE_TLS_PRESET": "broad",
        "SMTPCORE_SMTPS_PORT": "0",
        "SMTPCORE_AUTH_MODE": "optional",
        "SMTPCORE_AUTH_USER": "alice:one, bob:two",
        "SMTPCORE_AUTH_MECHANISMS": "plain,cram-md5",
        "SMTPCORE_AUTH_FAILURE_DELAY": "0",
        "SMTPCORE_MAX_AUTH_FAILURES": "5",
        "SMTPCORE_CHAOS": "rcpt=451:0.5,mail=421",
        "SMTPCORE_CHAOS_SEED": "3",
        "SMTPCORE_LOG_LEVEL": "WARNING",
    }
    assert serve([], env) == 0
    options = recorded.options
    assert [(listener.port, listener.implicit_tls) for listener in options.listeners] == [
        (2600, False),
        (0, True),
    ]
    config = options.config
    assert (config.hostname, config.lmtp, config.max_message_size) == ("mx.test", True, 1000)
    assert config.tls_mode is TlsMode.REQUIRED and config.auth_mode is AuthMode.OPTIONAL
    assert config.auth_mechanisms == ("PLAIN", "CRAM-MD5") and config.max_auth_failures == 5
    assert (options.max_connections, options.idle_timeout) == (7, 12.5)
    assert options.auth_failure_delay == 0.0
    chaos = recorded.handler
    assert isinstance(chaos, ChaosHandler)
    assert [str(rule) for rule in chaos.rules] == ["rcpt=451:0.5", "mail=421:1"]
    assert isinstance(chaos.handler, AuthenticatingHandler)
    assert chaos.handler.credentials.users == {"alice", "bob"}
    assert isinstance(chaos.handler.handler, Sink)
    err = capsys.readouterr().err
    assert "TLS required (broad preset" in err and "AUTH optional (PLAIN CRAM-MD5, 2 users" in err


def test_flags_win_over_variables(recorded: Recorded) -> None:
    env = {
        "SMTPCORE_PORT": "2600",
        "SMTPCORE_HANDLER": "debug",
        "SMTPCORE_CHAOS": "rcpt=451,mail=421",
        "SMTPCORE_LMTP": "1",
    }
    argv = ["--port", "2700", "--handler", "sink", "--chaos", "data=554"]
    assert serve(argv, env) == 0
    assert recorded.options.listeners[0].port == 2700
    assert [str(rule) for rule in recorded.handler.rules] == ["data=554:1"]  # replaced, not added
    assert isinstance(recorded.handler.handler, Sink)
    assert recorded.options.config.lmtp is True  # no flag said otherwise


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_variable_counts_as_unset(recorded: Recorded, value: str) -> None:
    assert serve(["--handler", "sink"], {"SMTPCORE_PORT": value, "SMTPCORE_CHAOS": value}) == 0
    assert recorded.options.listeners[0].port == 2525
    assert isinstance(recorded.handler, Sink)


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF"])
def test_switches_can_be_turned_off(recorded: Recorded, value: str) -> None:
    assert serve(["--handler", "sink"], {"SMTPCORE_LMTP": value}) == 0
    assert recorded.options.config.lmtp is False


def test_an_unknown_variable_is_named_and_ignored(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(["--handler", "sink"], {"SMTPCORE_PROT": "2600", "OTHER": "x"}) == 0
    err = capsys.readouterr().err
    assert "warning: SMTPCORE_PROT is not an option's variable (ignored)" in err
    assert "OTHER" not in err


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"SMTPCORE_PORT": "http"}, "SMTPCORE_PORT='http': a port is 0 to 65535, not 'http'"),
        ({"SMTPCORE_PORT": "70000"}, "SMTPCORE_PORT='70000': a port is 0 to 65535"),
        ({"SMTPCORE_TRANSPORT": "twisted"}, "SMTPCORE_TRANSPORT='twisted': invalid choice"),
        ({"SMTPCORE_TLS_MODE": "always"}, "(choose from forbidden, optional, required)"),
        ({"SMTPCORE_LMTP": "maybe"}, "SMTPCORE_LMTP='maybe': use one of 1, true"),
        ({"SMTPCORE_MAX_CONNECTIONS": "0"}, "SMTPCORE_MAX_CONNECTIONS='0': must be positive"),
        ({"SMTPCORE_MAX_CONNECTIONS": "x"}, "SMTPCORE_MAX_CONNECTIONS='x': invalid int value"),
        ({"SMTPCORE_IDLE_TIMEOUT": "soon"}, "invalid float value"),
        ({"SMTPCORE_CHAOS": "rcpt=451,bogus"}, "SMTPCORE_CHAOS='rcpt=451,bogus': chaos spec"),
        ({"SMTPCORE_AUTH_MECHANISMS": "XOAUTH2"}, "choose from PLAIN,LOGIN,CRAM-MD5"),
        ({"SMTPCORE_LOG_LEVEL": "loud"}, "SMTPCORE_LOG_LEVEL='loud': invalid choice"),
        ({"SMTPCORE_LOG_FORMAT": "xml"}, "SMTPCORE_LOG_FORMAT='xml': invalid choice"),
        # a contradiction between variables is reported like one between flags
        ({"SMTPCORE_TLS_KEY": "key.pem"}, "--tls-key needs --tls-cert"),
    ],
)
def test_bad_variables_exit_2_with_one_line(
    env: dict[str, str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        serve([], env)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("smtpcore serve: error: ") and complaint in err, err
    assert err.rstrip().endswith("(see smtpcore serve --help)")


def test_a_bad_variable_is_an_error_even_when_a_flag_overrides_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        serve(["--port", "2600"], {"SMTPCORE_PORT": "http"})
    assert exited.value.code == 2
    assert "SMTPCORE_PORT='http'" in capsys.readouterr().err


def test_several_bad_variables_still_make_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve([], {"SMTPCORE_PORT": "x", "SMTPCORE_LMTP": "y"})
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "SMTPCORE_LMTP" in err and "SMTPCORE_PORT" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["serve", "--no-such-flag"],
        ["serve", "--port", "65536"],
        ["serve", "--tls-mode", "sometimes"],
        ["serve", "--handler", "no-such-handler"],
        ["serve", "--hostname", "two words"],
        ["serve", "--auth-mode", "required", "--auth-user", "alice:pw"],
        ["serve", "--log-level", "loud"],
    ],
)
def test_bad_flags_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv, env={})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and ": error: " in err, err


def test_other_commands_ignore_serve_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret\n"))
    assert cli.main(["hash-password", "bob"], env={"SMTPCORE_PORT": "http"}) == 0
    assert capsys.readouterr().out.startswith("bob:scrypt$")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"], env={})
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == "smtpcore 0.1.0"


def test_build_parser_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPCORE_PORT", "2600")
    assert cli.build_parser().parse_args(["serve"]).port == 2525


def test_main_reads_os_environ_by_default(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTPCORE_PORT", "2601")
    monkeypatch.setenv("SMTPCORE_HANDLER", "sink")
    assert cli.main(["serve"]) == 0
    assert recorded.options.listeners[0].port == 2601


# ---- logging


def test_json_formatter_fields() -> None:
    formatter = cli.JsonFormatter()
    record = logging.LogRecord(
        "smtpcore.server", logging.INFO, __file__, 1, "[::1:2345] %s", ("hello",), None
    )
    record.message_id = "0123ABC"
    line = json.loads(formatter.format(record))
    assert line["level"] == "INFO" and line["logger"] == "smtpcore.server"
    assert line["message"] == "[::1:2345] hello"
    assert (line["remote_ip"], line["remote_port"]) == ("::1", 2345)
    assert line["message_id"] == "0123ABC"
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad", None, sys.exc_info())
    line = json.loads(cli.JsonFormatter().format(failed))
    assert "RuntimeError: boom" in line["exception"] and "remote_ip" not in line
    record.odd = object()  # anything JSON cannot hold is written as text
    assert "object object" in json.loads(formatter.format(record))["odd"]


def test_logging_is_set_up_only_while_serving(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    assert serve(["--handler", "sink", "--log-format", "json", "--log-level", "debug"], {}) == 0
    assert (list(root.handlers), root.level) == before
    lines = capsys.readouterr().err.splitlines()
    startup = json.loads(lines[-1])
    assert startup["logger"] == "smtpcore.cli" and startup["level"] == "INFO"
    assert startup["message"].startswith("serving SMTP on ")
    assert (startup["tls"], startup["auth"], startup["transport"]) == (
        "forbidden",
        "forbidden",
        "asyncio",
    )


def test_log_level_hides_lines_but_never_the_start_up_line(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(["--handler", "sink", "--tls-mode", "optional", "--log-level", "error"], {}) == 0
    err = capsys.readouterr().err
    assert "no TLS certificate configured" not in err  # a warning, below error
    assert err.startswith("smtpcore: serving SMTP on ")  # (the recorder never listens)
    assert serve(["--handler", "sink", "--tls-mode", "optional"], {}) == 0
    err = capsys.readouterr().err
    assert "WARNING smtpcore.tls: no TLS certificate configured" in err


# ---- for real, in a process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    err = tmp_path / "stderr"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPCORE_")}
    full_env.update(env, PYTHONIOENCODING="utf-8")
    with err.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "smtpcore", *argv],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=full_env,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "serving" not in err.read_text("utf-8") and process.poll() is None:
            assert time.monotonic() < deadline, err.read_text("utf-8")
            time.sleep(0.02)
        assert process.poll() is None, err.read_text("utf-8")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def test_python_m_smtpcore_serves_from_variables_with_json_logs(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "SMTPCORE_PORT": str(port),
        "SMTPCORE_HANDLER": "sink",
        "SMTPCORE_LOG_FORMAT": "json",
        "SMTPCORE_LOG_LEVEL": "debug",
        "SMTPCORE_TLS_MODE": "optional",
    }
    with running(tmp_path, ["serve"], env) as process:
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            client_port = smtp.sock.getsockname()[1]
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            assert smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\n") == {}
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    lines = [json.loads(line) for line in (tmp_path / "stderr").read_text("utf-8").splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    startup = next(line for line in lines if line["logger"] == "smtpcore.cli")
    assert startup["listen"] == [f"127.0.0.1:{port}"] and startup["tls"].startswith("optional")
    session = [line for line in lines if line.get("remote_port") == client_port]
    assert session and all(line["remote_ip"] == "127.0.0.1" for line in session)
    assert any(line["level"] == "WARNING" and "self-signed" in line["message"] for line in lines)


def test_python_m_smtpcore_text_start_up_line(tmp_path: Path) -> None:
    port = free_port()
    with running(tmp_path, ["serve", "--port", str(port)], {"SMTPCORE_PORT": "1"}) as process:
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    err = (tmp_path / "stderr").read_text("utf-8")
    assert f"smtpcore: serving SMTP on 127.0.0.1:{port} (transport asyncio" in err


@pytest.mark.parametrize(
    ("argv", "env", "complaint"),
    [
        (["serve", "--port", "http"], {}, "argument --port: a port is 0 to 65535"),
        (["serve"], {"SMTPCORE_TLS_MODE": "always"}, "SMTPCORE_TLS_MODE='always'"),
    ],
)
def test_python_m_smtpcore_refuses_in_one_line(
    argv: list[str], env: dict[str, str], complaint: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smtpcore", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **env},
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and complaint in result.stderr, result.stderr


def test_python_m_smtpcore_version_and_help() -> None:
    for argv, expected in ((["--version"], "smtpcore 0.1.0"), (["--help"], "SMTPCORE_PORT")):
        result = subprocess.run(
            [sys.executable, "-m", "smtpcore", *argv],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=ROOT,
            check=True,
        )
        assert expected in result.stdout


def test_importing_smtpcore_main_imports_no_transport() -> None:
    code = (
        "import sys, smtpcore.__main__ as m; "
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('transports', 'socket', 'asyncio', 'ssl', 'threading', 'argparse')))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_smtpcore_main_runs_the_command(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smtpcore.__main__ as entry

    monkeypatch.setattr(sys, "argv", ["smtpcore", "serve", "--handler", "sink", "--port", "0"])
    assert entry.main() == 0
    assert recorded.options.listeners[0].port == 0


def test_unknown_variables_are_not_mentioned_outside_serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret\n"))
    assert cli.main(["hash-password"], env={"SMTPCORE_PROT": "1"}) == 0
    assert capsys.readouterr().err == ""


def test_extra_fields_never_replace_the_standard_ones() -> None:
    record = logging.LogRecord("smtpcore.x", logging.WARNING, __file__, 1, "hello", None, None)
    record.level = "forged"
    line = json.loads(cli.JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["message"] == "hello"
