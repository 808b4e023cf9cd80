"""The examples under ``examples/`` do what they say, served by the asyncio transport.

Each handler is imported from its file and run in a `ServerThread`; every socket operation is
bounded by TIMEOUT. The last test runs each file as a script, as its docstring shows.
"""

from __future__ import annotations

import importlib.util
import os
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
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from transports.controller import ServerThread
from transports.handler import Handler

pytestmark = pytest.mark.network

TIMEOUT = 15.0
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MESSAGE = b"From: a@example.org\r\nSubject: Hello\r\n\r\nHi there.\r\n"


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def serving(handler: Handler) -> Iterator[ServerThread]:
    server = ServerThread("asyncio", handler, host="127.0.0.1", port=0).start()
    try:
        yield server
    finally:
        server.stop(grace=0.0, timeout=TIMEOUT)


def client(server: ServerThread, helo: str = "client.example.org") -> smtplib.SMTP:
    return smtplib.SMTP(*server.address, local_hostname=helo, timeout=TIMEOUT)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_print_mail_prints_envelope_subject_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    module = example("print_mail")
    raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nHi Bob.\r\n"
    with serving(module.PrintMail()) as server, client(server) as smtp:
        assert smtp.sendmail("alice@example.org", ["bob@example.org", "eve@example.org"], raw) == {}
    out = capsys.readouterr().out
    assert "Mail from <alice@example.org> at 127.0.0.1 for bob@example.org, eve@example.org" in out
    assert "Subject: Grüße" in out
    assert "Hi Bob." in out


def test_normalize_addresses_records_normalised_envelopes() -> None:
    module = example("normalize_addresses")
    assert module.normalize("Jane.Doe+News@Example.ORG") == "jane.doe@example.org"
    assert module.normalize("Postmaster") == "postmaster"
    handler = module.NormalizeAddresses()
    with serving(handler) as server, client(server) as smtp:
        recipients = ["Bob+Work@Example.org", "CAROL@EXAMPLE.ORG"]
        assert smtp.sendmail("Jane.Doe+News@Example.ORG", recipients, MESSAGE) == {}
        assert smtp.sendmail("", ["postmaster@example.org"], MESSAGE) == {}  # MAIL FROM:<>
    assert handler.envelopes == [
        ("jane.doe@example.org", ("bob@example.org", "carol@example.org")),
        ("", ("postmaster@example.org",)),
    ]


def test_reject_recipient_refuses_unknown_mailboxes_with_550() -> None:
    handler = example("reject_recipient").RejectRecipient()
    with serving(handler) as server, client(server) as smtp:
        rcpts = ["Alice@example.org", "nobody@example.org"]
        refused = smtp.sendmail("bob@example.net", rcpts, MESSAGE)
        assert refused == {"nobody@example.org": (550, b"5.1.1 No such user here")}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as no_one:
            smtp.sendmail("bob@example.net", ["nobody@example.org"], MESSAGE)
        assert no_one.value.recipients["nobody@example.org"][0] == 550
        assert smtp.noop()[0] == 250  # the session goes on
    assert handler.delivered == [("Alice@example.org",)]


def test_drop_spammer_closes_the_connection_with_421() -> None:
    handler = example("drop_spammer").DropSpammer()
    with serving(handler) as server:
        with client(server, helo="spammer.example") as smtp:
            code, text = smtp.ehlo()
            assert (code, text) == (421, b"4.3.2 Abort: identified spammer")
            assert smtp.sock.recv(1) == b""  # closed by the server
        with client(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("OFFERS@spammer.example")[0] == 421
            assert smtp.sock.recv(1) == b""
        with client(server) as smtp:  # everyone else is served as usual
            assert smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}


def test_size_limit_refuses_with_552_after_the_data_and_the_session_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = example("size_limit").SizeLimit(limit=1000)
    big = MESSAGE + b"x" * 5000 + b"\r\n"
    with serving(handler) as server, client(server) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@example.org", ["bob@example.org"], big)
        assert refused.value.smtp_code == 552
        assert refused.value.smtp_error == b"5.3.4 Message exceeds 1000 octets"
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
    assert capsys.readouterr().out == f"Accepted {len(MESSAGE)} octets from <alice@example.org>\n"


def test_tarpit_delays_suspicious_clients_only() -> None:
    handler = example("tarpit").Tarpit(delay=0.01)
    with serving(handler) as server:
        with client(server, helo="host-1-2-3-4.dynamic.example.net") as smtp:
            rcpts = ["a@example.org", "b@example.org"]
            assert smtp.sendmail("x@example.net", rcpts, MESSAGE) == {}
        assert handler.delayed == 2
        with client(server) as smtp:
            assert smtp.sendmail("x@example.net", ["a@example.org"], MESSAGE) == {}
        assert handler.delayed == 2


def test_tarpit_holds_one_session_while_others_are_served() -> None:
    handler = example("tarpit").Tarpit(delay=60.0)
    outcome: list[Any] = []

    def suspicious() -> None:
        try:
            with client(server, helo="pool.dsl.example.net") as smtp:
                outcome.append(smtp.sendmail("x@example.net", ["a@example.org"], MESSAGE))
        except (smtplib.SMTPException, OSError) as exc:
            outcome.append(exc)

    with serving(handler) as server:
        held = threading.Thread(target=suspicious)
        held.start()
        wait_until(lambda: handler.waiting == 1, "the suspicious client to be held")
        with client(server) as smtp:
            assert smtp.sendmail("y@example.org", ["a@example.org"], MESSAGE) == {}
        assert handler.waiting == 1 and held.is_alive() and not outcome
    # The stop (grace 0) ended the held session: its client never got the 250.
    held.join(TIMEOUT)
    assert not held.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)
    assert handler.delayed == 0


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.stem)
def test_each_example_runs_as_a_script(path: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, str(path), "--port", str(port)],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
    try:
        wait_until(lambda: "Listening" in out.read_text() or process.poll() is not None, "start")
        assert f"Listening on 127.0.0.1:{port}" in out.read_text()
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            assert smtp.noop()[0] == 250
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
