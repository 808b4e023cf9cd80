"""`transports.workers.run_workers`: N processes on shared listeners, supervised; a worker
killed with SIGKILL is restarted and no acknowledged message is lost (Maildir, fsynced before
250); SIGTERM drains and exits 0; /readyz, /metrics across processes."""

from __future__ import annotations

import importlib.util
import mailbox
import os
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration._support import RawClient, make_message, smtp_client

from ._support import Workers, http_get, metric, workers

pytestmark = pytest.mark.network


def stored(maildir: Path) -> dict[str, str]:
    """Subject -> X-Test-Remote of every message in the Maildir."""
    box = mailbox.Maildir(maildir, create=False)
    return {str(m["Subject"]): str(m["X-Test-Remote"]) for m in box}


def send(address: tuple[str, int], subject: str) -> None:
    with smtp_client(address, timeout=5.0) as smtp:
        smtp.sendmail("x@y.z", ["a@b.c"], make_message(subject))


def test_two_workers_share_the_port_and_stop_gracefully(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with workers("--workers", "2", "--maildir", str(maildir), "--ops-port", "0") as server:
        pids = server.wait_workers(2)
        for number in range(8):
            send(server.address, f"message {number}")
        status, text = http_get(server.url + "/metrics")
        if importlib.util.find_spec("prometheus_client") is None:
            assert status == 501
        else:  # the sum over both workers
            assert status == 200
            assert metric(text, 'smtpcore_messages_total{code="250",result="accepted"}') == 8
            assert metric(text, "smtpcore_sessions_total") == 8
        assert server.stop() == 0
    mail = stored(maildir)
    assert sorted(mail) == sorted(f"message {n}" for n in range(8))
    served_by = {int(remote.rsplit(" ", 1)[1]) for remote in mail.values()}
    assert served_by <= set(pids)
    for pid in pids:
        assert any(f"(pid {pid}) exited with status 0" in line for line in server.log)


def test_killed_worker_is_restarted_and_no_acknowledged_mail_is_lost(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    acknowledged: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client(name: str, server: Workers) -> None:
        """Send until told to stop; a message counts only once answered 250."""
        number = 0
        deadline = time.monotonic() + 30
        while not stop_sending.is_set() and time.monotonic() < deadline:
            subject = f"{name}-{number}"
            try:
                send(server.address, subject)
            except (OSError, smtplib.SMTPException) as exc:
                with lock:
                    failures.append(f"{subject}: {exc!r}")
                time.sleep(0.05)
            else:
                with lock:
                    acknowledged.append(subject)
            number += 1

    with workers("--workers", "2", "--maildir", str(maildir), "--ops-port", "0") as server:
        first = server.wait_workers(2)
        threads = [threading.Thread(target=client, args=(f"c{i}", server)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            assert _wait(lambda: len(acknowledged) >= 20, 20)
            victim = first[0]
            os.kill(victim, signal.SIGKILL)
            server.wait_log(f"(pid {victim}) killed by SIGKILL")
            restarted = server.wait_workers(2, exclude=(victim,))
            assert victim not in restarted
            count = len(acknowledged)
            assert _wait(lambda: len(acknowledged) >= count + 20, 20)
        finally:
            stop_sending.set()
            for thread in threads:
                thread.join(40)
        assert server.stop() == 0
    mail = stored(maildir)
    lost = [subject for subject in acknowledged if subject not in mail]
    assert not lost, f"acknowledged but not stored: {lost} (failed attempts: {failures})"
    assert len(set(acknowledged)) == len(acknowledged)


def test_readyz_flips_on_sigterm_while_the_workers_drain(tmp_path: Path) -> None:
    with workers("--workers", "2", "--ops-port", "0", "--grace", "5") as server:
        server.wait_workers(2)
        url = server.url
        assert http_get(url + "/readyz") == (200, "ready\n")
        with RawClient(server.address) as client:
            client.start_transaction()
            server.process.send_signal(signal.SIGTERM)
            assert _wait(lambda: http_get(url + "/readyz")[0] == 503, 5)
            assert http_get(url + "/livez") == (200, "ok\n")
            client.send(make_message("drained") + b".\r\n")
            client.expect(250)  # the transaction in flight is finished...
            assert client.read_reply()[0] == 421  # ...then the session is closed
        assert server.process.wait(15) == 0


def test_reuse_port_spreads_connections_over_the_workers(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    args = ("--workers", "2", "--maildir", str(maildir), "--reuse-port")
    with workers(*args) as server:
        pids = server.wait_workers(2)
        for number in range(24):
            send(server.address, f"message {number}")
        assert server.stop() == 0
    served_by = {int(remote.rsplit(" ", 1)[1]) for remote in stored(maildir).values()}
    assert served_by == set(pids)  # 24 connections all hashed to one socket: p = 2**-23


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("transport", ["threads", "asyncio", "trio", "anyio"])
def test_every_transport_runs_as_workers(tmp_path: Path, transport: str) -> None:
    maildir = tmp_path / "mail"
    args = ("--workers", "2", "--maildir", str(maildir), "--transport", transport)
    with workers(*args) as server:
        server.wait_workers(2)
        for number in range(4):
            send(server.address, f"message {number}")
        assert server.stop() == 0
    assert len(stored(maildir)) == 4


@pytest.mark.parametrize("transport", ["threads", "asyncio", "trio", "anyio", "anyio-trio"])
def test_a_server_adopts_a_pre_bound_socket(transport: str) -> None:
    """Listener.fd: the server serves on the descriptor given, and closes it when it stops."""
    from transports.controller import ServerThread
    from transports.handlers import MemoryHandler
    from transports.options import Listener, ServerOptions

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    fd = sock.detach()
    handler = MemoryHandler()
    options = ServerOptions(listeners=(Listener("127.0.0.1", port, fd=fd),))
    with ServerThread(transport, handler, options) as server:
        assert server.address == ("127.0.0.1", port)
        send(("127.0.0.1", port), "adopted")
        server.stop(grace=1.0, timeout=15.0)
    assert len(handler.messages) == 1
    with pytest.raises(OSError):
        os.fstat(fd)
