"""``smtpcore serve --handler memory --http HOST:PORT``: the catcher from the command line.

Skipped until ``transports/cli.py`` has the ``--http`` option (see docs/mail-catcher.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from transports.cli import main
from transports.controller import TRANSPORTS

from ._support import TIMEOUT, plain, request

pytestmark = pytest.mark.network


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    err = tmp_path / "stderr"
    argv = [sys.executable, "-m", "transports.cli", "serve", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPCORE_")}
    with err.open("wb") as stream:
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stream, cwd=Path.cwd(), env=env
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "serving" not in err.read_text() and process.poll() is None:
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        yield process, err
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_serve_with_http_runs_the_catcher(tmp_path: Path, transport: str) -> None:
    smtp_port, http_port = free_port(), free_port()
    with serve(
        tmp_path,
        *("--transport", transport, "--port", str(smtp_port), "--handler", "memory"),
        *("--http", f"127.0.0.1:{http_port}", "--max-messages", "2", "--max-age", "3600"),
    ) as (process, err):
        startup = err.read_text()
        assert process.poll() is None, startup
        assert f"mail catcher on http://127.0.0.1:{http_port}" in startup
        for n in range(3):
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=TIMEOUT) as client:
                client.send_message(plain(subject=f"cli {n}"))
        url = f"http://127.0.0.1:{http_port}"
        listing = request(url, "GET", "/api/v1/messages").json()
        assert [m["Subject"] for m in listing["messages"]] == ["cli 2", "cli 1"]
        assert request(url, "GET", "/readyz").status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http_port), timeout=1).close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "127.0.0.1:8025"], "--http needs --handler memory"),
        (["--handler", "sink", "--http", "8025"], "--http needs --handler memory"),
        (["--handler", "memory", "--max-messages", "5"], "--max-messages needs --http"),
        (["--handler", "memory", "--max-age", "60"], "--max-age needs --http"),
        (["--handler", "memory", "--http", "127.0.0.1:99999"], "a port is 0 to 65535"),
        (["--handler", "memory", "--http", ":8025"], "use HOST:PORT"),
        (["--handler", "memory", "--http", "8025", "--max-messages", "0"], "must be positive"),
    ],
)
def test_bad_catcher_options_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_busy_http_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [sys.executable, "-m", "transports.cli", "serve", "--port", "0"]
        argv += ["--handler", "memory", "--http", f"127.0.0.1:{port}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert "cannot serve" in result.stderr
