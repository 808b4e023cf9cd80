"""The ``smtpcore`` command and the handlers it offers by name.

``smtpcore serve`` runs as a real process for every transport; each wait is bounded by TIMEOUT,
so a server that hangs fails the test instead of blocking the run. A transport module that
cannot be imported fails its tests: it is part of the command's promise.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import signal
import smtplib

# Real sockets are the point of these tests; the ban only protects the sans-IO core.
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from transports.cli import main
from transports.controller import TRANSPORTS, ServerThread
from transports.handler import Handler, Session
from transports.handlers import HANDLERS, Debug, Sink, resolve_handler

pytestmark = pytest.mark.network

TIMEOUT = 15.0
FLAGS = (
    "--transport",
    "--loop",
    "--host",
    "--port",
    "--hostname",
    "--handler",
    "--lmtp",
    "--max-connections",
    "--max-message-size",
    "--idle-timeout",
)
EXTENSIONS = ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking",
              "binarymime", "dsn")  # fmt: skip


def smtpcore_command() -> list[str]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).with_name("smtpcore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "transports.cli"]


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Served:
    """A ``smtpcore serve`` process, its output going to files under ``tmp_path``."""

    def __init__(self, tmp_path: Path, *args: str, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.out, self.err = tmp_path / "stdout", tmp_path / "stderr"
        argv = [*smtpcore_command(), "serve", "--host", host, "--port", str(self.port), *args]
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=tmp_path)
        wait_until(lambda: "serving" in self.stderr() or self.process.poll() is not None, "start")
        assert self.process.poll() is None, self.stderr()

    def stdout(self) -> str:
        return self.out.read_text("utf-8")

    def stderr(self) -> str:
        return self.err.read_text("utf-8")

    def client(self, cls: type[smtplib.SMTP] = smtplib.SMTP) -> smtplib.SMTP:
        return cls(self.host, self.port, local_hostname="client.test", timeout=TIMEOUT)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(TIMEOUT)


@contextmanager
def serving(tmp_path: Path, *args: str, host: str = "127.0.0.1") -> Iterator[Served]:
    served = Served(tmp_path, *args, host=host)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait(TIMEOUT)


def message(subject: str = "Grüße aus Köln") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "alice@example.org"
    mail["To"] = "bob@example.org"
    mail["Subject"] = subject  # encoded as an RFC 2047 word on the wire
    mail.set_content("Hello Bob,\nall is well.\n")
    return mail


# ---- smtpcore serve, for real


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_serve_prints_each_message_and_stops_on_sigterm(tmp_path: Path, transport: str) -> None:
    importlib.import_module(f"transports.{transport}")  # fails, not skips, if it is missing
    with serving(tmp_path, "--transport", transport) as served:
        startup = served.stderr()
        assert f"127.0.0.1:{served.port}" in startup
        assert f"transport {transport}" in startup and "handler debug" in startup
        with served.client() as smtp:
            client_port = smtp.sock.getsockname()[1]
            refused = smtp.send_message(
                message(), "alice@example.org", ["bob@example.org", "carol@example.org"]
            )
        assert refused == {}
        assert served.stop() == 0
    out = served.stdout()
    assert "Sender:    <alice@example.org>" in out
    assert "Recipient: <bob@example.org>" in out and "Recipient: <carol@example.org>" in out
    assert "Subject: Grüße aus Köln" in out  # decoded from its encoded word
    assert f"Remote:    127.0.0.1:{client_port}" in out
    assert "HELO:      client.test" in out
    assert "all is well." in out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigint_closes_idle_clients_with_421_and_exits_0(tmp_path: Path, transport: str) -> None:
    importlib.import_module(f"transports.{transport}")
    with (
        serving(tmp_path, "--transport", transport) as served,
        socket.create_connection((served.host, served.port), timeout=TIMEOUT) as sock,
    ):
        assert sock.recv(1024).startswith(b"220 ")
        served.process.send_signal(signal.SIGINT)
        received = b""
        while chunk := sock.recv(1024):
            received += chunk
        assert received.startswith(b"421 ")
        assert served.process.wait(TIMEOUT) == 0


def test_lmtp_answers_lhlo(tmp_path: Path) -> None:
    with serving(tmp_path, "--lmtp") as served:
        assert "serving LMTP" in served.stderr()
        with served.client(smtplib.LMTP) as lmtp:
            code, _ = lmtp.ehlo()  # smtplib.LMTP sends LHLO
            assert code == 250
            refused = lmtp.sendmail("alice@example.org", ["bob@example.org"], b"Subject: x\r\n\r\n")
            assert refused == {}
        with served.client() as smtp:
            assert smtp.ehlo()[0] >= 500  # EHLO is not LMTP
        assert served.stop() == 0
    assert "Recipient: <bob@example.org>" in served.stdout()


def test_max_connections_refuses_one_more_client_with_421(tmp_path: Path) -> None:
    with serving(tmp_path, "--max-connections", "1") as served, served.client() as first:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            served.client()
        assert refused.value.smtp_code == 421
        assert first.noop()[0] == 250
        first.quit()
        assert served.stop() == 0


def test_chaos_fails_the_chosen_verb(tmp_path: Path) -> None:
    with serving(
        tmp_path, "--handler", "sink", "--chaos", "rcpt=451", "--chaos-seed", "1"
    ) as served:
        with served.client() as smtp:
            assert smtp.ehlo()[0] == 250
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("b@example.org")[0] == 451
        assert served.stop() == 0


def test_options_reach_the_server(tmp_path: Path) -> None:
    with serving(tmp_path, "--hostname", "mx.test", "--max-message-size", "1000") as served:
        with served.client() as smtp:
            assert smtp.ehlo()[0] == 250
            assert smtp.ehlo_resp is not None and smtp.ehlo_resp.startswith(b"mx.test")
            assert smtp.esmtp_features["size"] == "1000"
            for extension in EXTENSIONS:
                assert extension in smtp.esmtp_features
        assert served.stop() == 0


def test_sink_handler_and_ipv6_host(tmp_path: Path) -> None:
    try:
        free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with serving(tmp_path, "--handler", "sink", host="::1") as served:
        assert f"[::1]:{served.port}" in served.stderr()
        with served.client() as smtp:
            assert smtp.send_message(message()) == {}
        assert served.stop() == 0
    assert served.stdout() == ""


@pytest.mark.parametrize("transport", ["asyncio", "anyio"])
def test_uvloop(tmp_path: Path, transport: str) -> None:
    pytest.importorskip("uvloop")  # an optional extra (smtpcore[speed])
    with serving(tmp_path, "--transport", transport, "--loop", "uvloop") as served:
        assert f"transport {transport} on uvloop" in served.stderr()
        with served.client() as smtp:
            assert smtp.send_message(message()) == {}
        assert served.stop() == 0
    assert "Subject: Grüße aus Köln" in served.stdout()


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*smtpcore_command(), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert "cannot serve" in result.stderr


def test_bad_flag_exits_2_from_the_shell() -> None:
    result = subprocess.run(
        [*smtpcore_command(), "serve", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr


# ---- the command line, in process


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_lists_every_flag_with_its_default(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    for flag in FLAGS:
        described = re.search(rf"{flag} [^-]*?\(default: ([^)]*)\)", text)
        assert described is not None, f"{flag} or its default is missing"
    for default in ("asyncio", "127.0.0.1", "2525", "debug", "33554432", "300", "no limit"):
        assert f"(default: {default}" in text
    for transport in TRANSPORTS:
        assert transport in text


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["serve", "--no-such-flag"],
        ["serve", "--transport", "twisted"],
        ["serve", "--port", "65536"],
        ["serve", "--port", "http"],
        ["serve", "--max-connections", "0"],
        ["serve", "--max-message-size", "-1"],
        ["serve", "--idle-timeout", "0"],
        ["serve", "--hostname", "two words"],
        ["serve", "--handler", "no-such-handler"],
        ["serve", "--handler", "no_such_module:Handler"],
        ["serve", "--loop", "uvloop", "--transport", "trio"],
        ["serve", "--loop", "tokio"],
        ["serve", "--transport", "threads", "--handler", f"{__name__}:AsyncHandler"],
    ],
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---- the handlers and their names


class AsyncHandler(Handler):
    async def on_message(self, ctx: Session) -> None:
        pass


class NeedsArguments(Handler):
    def __init__(self, mailbox: str) -> None:
        self.mailbox = mailbox


def test_resolve_handler_by_name_and_by_import_path() -> None:
    assert set(HANDLERS) >= {"debug", "sink"}
    assert isinstance(resolve_handler("debug"), Debug)
    assert isinstance(resolve_handler("sink"), Sink)
    assert isinstance(resolve_handler("transports.handlers.sink:Sink"), Sink)
    assert type(resolve_handler(f"{__name__}:Handler")) is Handler


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("nothing", "unknown handler 'nothing'"),
        ("", "unknown handler ''"),
        ("debug:extra", "takes no argument"),
        ("no_such_module_here:Thing", "cannot import"),
        (f"{__name__}:Nothing", "not a Handler subclass"),
        (f"{__name__}:message", "not a Handler subclass"),
        ("transports.handler:Session", "not a Handler subclass"),
        (f"{__name__}:NeedsArguments", "without arguments"),
    ],
)
def test_resolve_handler_refuses_clearly(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        resolve_handler(spec)


def test_debug_shows_envelope_parameters_session_and_decoded_headers() -> None:
    stream = io.StringIO()
    raw = "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nX-Tag: 1\r\n\r\nK\u00f6ln\r\n.dot\r\n".encode()
    with (
        ServerThread("asyncio", Debug(stream), host="127.0.0.1", port=0) as server,
        smtplib.SMTP(*server.address, local_hostname="client.test", timeout=TIMEOUT) as smtp,
    ):
        port = server.address[1]
        smtp.sendmail(
            "alice@example.org",
            ["bob@example.org"],
            raw,
            mail_options=["BODY=8BITMIME", "ENVID=abc"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
        )
    out = stream.getvalue()
    assert f"Sender:    <alice@example.org> SIZE={len(raw)} BODY=8BITMIME ENVID=abc" in out
    assert "Recipient: <bob@example.org> NOTIFY=SUCCESS,FAILURE" in out
    assert f"Local:     127.0.0.1:{port}" in out
    assert "TLS:       no" in out and "AUTH:      no" in out
    assert f"Size:      {len(raw)} octets (SIZE={len(raw)})" in out
    assert "Subject: Grüße\nX-Tag: 1\n\nKöln\n.dot\n" in out  # raw body, dot-unstuffed


def test_debug_keeps_concurrent_messages_whole_under_threads() -> None:
    stream = io.StringIO()
    count = 8
    with ServerThread("threads", Debug(stream), host="127.0.0.1", port=0) as server:

        def send(number: int) -> None:
            with smtplib.SMTP(*server.address, timeout=TIMEOUT) as smtp:
                body = f"Subject: message {number}\r\n\r\n" + f"line of {number}\r\n" * 200
                smtp.sendmail("a@example.org", [f"r{number}@example.org"], body)

        senders = [threading.Thread(target=send, args=(n,)) for n in range(count)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(TIMEOUT)
    block = r"Recipient: <r(\d+)@example\.org>.*?\n-{72}\n(.*?)\n-{72}\n"
    blocks = re.findall(block, stream.getvalue(), re.S)
    assert sorted(int(number) for number, _ in blocks) == list(range(count))
    for number, content in blocks:
        assert content == f"Subject: message {number}\n\n" + "\n".join([f"line of {number}"] * 200)
