"""A real HAProxy (examples/haproxy/haproxy.cfg, unchanged) in front of two smtpcore worker
processes, with ``send-proxy-v2`` and ``check-send-proxy``: the sessions must see the client's
own address and port, and the health checks must pass. All on 127.0.0.x; HAProxy runs in the
foreground, bounded, and is killed at the end. Skipped when ``haproxy`` is not installed
(CI installs it: see .ci/run)."""

from __future__ import annotations

import mailbox
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.integration._support import CLIENT_NAME, make_message

from ._support import ROOT, workers

pytestmark = [
    pytest.mark.network,
]

CONFIG = ROOT / "examples" / "haproxy" / "haproxy.cfg"
CLIENT_IP = "127.0.0.2"
"""Clients come from another loopback address than the proxy's, so the two cannot be confused."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def haproxy(env: dict[str, str]) -> Iterator[list[str]]:
    """HAProxy in the foreground (``-db``) with the example config; yields its log lines."""
    process = subprocess.Popen(
        ["haproxy", "-db", "-f", str(CONFIG)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []

    def collect() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip("\n"))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        yield log
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        reader.join(5)


def send_from(address: tuple[str, int], subject: str) -> int:
    """Send one message from CLIENT_IP; return the client's source port."""
    import smtplib

    with smtplib.SMTP(
        address[0], address[1], local_hostname=CLIENT_NAME, timeout=10.0,
        source_address=(CLIENT_IP, 0),
    ) as smtp:  # fmt: skip
        assert smtp.sock is not None
        port = int(smtp.sock.getsockname()[1])
        smtp.sendmail("x@y.z", ["a@b.c"], make_message(subject))
    return port


def wait_accepting(address: tuple[str, int], timeout: float = 10.0) -> None:
    """Until HAProxy's frontend greets with a banner relayed from smtpcore."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(address, timeout=2.0) as sock:
            if sock.recv(64).startswith(b"220 "):
                sock.sendall(b"QUIT\r\n")
                return
        time.sleep(0.1)
    raise AssertionError(f"HAProxy on {address} did not relay a banner")


def test_haproxy_send_proxy_v2_passes_the_client_address(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    args = ["--workers", "2", "--maildir", str(maildir), "--port", "0", "--port", "0"]
    args += ["--proxy-protocol", "--trusted-proxy", "127.0.0.1/32"]
    with workers(*args) as server:
        server.wait_workers(2)
        (_, mx1), (_, mx2) = server.addresses
        front = ("127.0.0.1", free_port())
        env = {
            "SMTP_BIND": f"{front[0]}:{front[1]}",
            "MX1": f"127.0.0.1:{mx1}",
            "MX2": f"127.0.0.1:{mx2}",
        }
        with haproxy(env) as log:
            wait_accepting(front)
            ports = {send_from(front, f"message {n}"): f"message {n}" for n in range(6)}
            # HAProxy's health checks: EHLO after a PROXY v2 LOCAL header, every 2 s
            server.wait_log("helo haproxy.invalid from 127.0.0.1 proxy LOCAL", timeout=10)
            haproxy_log = "\n".join(log)
        worker_log = "\n".join(server.log)
        assert server.stop() == 0
    box = mailbox.Maildir(maildir, create=False)
    remotes = {str(m["Subject"]): str(m["X-Test-Remote"]) for m in box}
    assert sorted(remotes.values()) and len(remotes) == 6
    for port, subject in ports.items():
        # "<client>:<port> via <proxy>:<port> pid N": the client's own address and port
        assert remotes[subject].startswith(f"{CLIENT_IP}:{port} via 127.0.0.1:"), remotes[subject]
    assert "is DOWN" not in haproxy_log, haproxy_log
    assert "PROXY header" not in worker_log, worker_log  # no check or client was refused
