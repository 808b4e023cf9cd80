"""Real clients: a hand-pipelined socket, swaks (plain, pipelined, AUTH) and many smtplibs."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from smtpcore import AuthAttempt, AuthMode, SmtpConfig
from transports.handler import Session

from ._support import RawClient, Recorder, make_message, run_swaks, smtp_client
from .conftest import Serve, Styled

pytestmark = pytest.mark.network


def test_pipelined_client(serve: Serve, styled: Styled[Recorder]) -> None:
    """EHLO, MAIL, RCPT, RCPT, DATA in one write; replies come back in order; then two
    messages whose ends share writes with the next commands."""
    rec = styled(Recorder)()
    with serve(rec) as server, RawClient(server.address) as client:
        client.expect(220)
        client.send(
            b"EHLO client.test\r\nMAIL FROM:<x@y.z>\r\nRCPT TO:<a@b.c>\r\n"
            b"RCPT TO:<nobody-special@b.c>\r\nDATA\r\n"
        )
        code, ehlo = client.read_reply()
        assert code == 250 and "PIPELINING" in ehlo
        assert [client.read_reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(
            make_message("piped one") + b".\r\nMAIL FROM:<p@q.r>\r\nRCPT TO:<s@t.u>\r\nDATA\r\n"
        )
        assert [client.read_reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(make_message("piped two") + b".\r\nQUIT\r\n")
        assert [client.read_reply()[0] for _ in range(2)] == [250, 221]
        assert client.wait_closed()
    assert [(d.subject, d.sender, d.recipients) for d in rec.deliveries] == [
        ("piped one", "x@y.z", ("a@b.c", "nobody-special@b.c")),
        ("piped two", "p@q.r", ("s@t.u",)),
    ]
    assert rec.deliveries[0].data == make_message("piped one")


def test_swaks_plain(serve: Serve, styled: Styled[Recorder]) -> None:
    rec = styled(Recorder)()
    with serve(rec) as server:
        result = run_swaks(
            server.address, "--to", "a@b.c", "--from", "x@y.z", "--header", "Subject: swaks"
        )
    assert result.returncode == 0, result.stdout + result.stderr
    (delivery,) = rec.deliveries
    assert (delivery.sender, delivery.recipients) == ("x@y.z", ("a@b.c",))
    assert delivery.subject == "swaks"
    assert delivery.helo == "client.test"


def test_swaks_pipeline(serve: Serve, styled: Styled[Recorder]) -> None:
    rec = styled(Recorder)()
    with serve(rec) as server:
        result = run_swaks(
            server.address,
            "--pipeline",
            "--to",
            "a@b.c,d@e.f",
            "--from",
            "x@y.z",
            "--header",
            "Subject: swaks pipelined",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    # swaks sent MAIL, both RCPTs and DATA before it read any of their replies
    transcript = [line.strip() for line in result.stdout.splitlines()]
    group = transcript[transcript.index("-> MAIL FROM:<x@y.z>") : transcript.index("-> DATA") + 1]
    assert group == ["-> MAIL FROM:<x@y.z>", "-> RCPT TO:<a@b.c>", "-> RCPT TO:<d@e.f>", "-> DATA"]
    (delivery,) = rec.deliveries
    assert delivery.recipients == ("a@b.c", "d@e.f")
    assert delivery.subject == "swaks pipelined"


class SwaksAuth(Recorder):
    def on_auth(
        self,
        ctx: Session,
        authorization_id: str,
        authentication_id: str,
        password: str | None,
        attempt: AuthAttempt,
    ) -> str | None:
        if (authentication_id, password) != ("bob", "hunter2"):
            raise ValueError("unreachable in this test")
        return None


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth(serve: Serve, styled: Styled[SwaksAuth], mechanism: str) -> None:
    rec = styled(SwaksAuth)()
    config = SmtpConfig(hostname="mx.test", auth_mode=AuthMode.REQUIRED, allow_insecure_auth=True)
    with serve(rec, config=config) as server:
        result = run_swaks(
            server.address,
            *("--to", "a@b.c", "--from", "x@y.z"),
            *("--auth", mechanism, "--auth-user", "bob", "--auth-password", "hunter2"),
        )
    assert result.returncode == 0, result.stdout + result.stderr
    (delivery,) = rec.deliveries
    assert delivery.authentication_id == "bob"


CLIENTS = 30
MESSAGES = 5


def test_many_concurrent_clients(serve: Serve, styled: Styled[Recorder]) -> None:
    """30 clients connected at once, 5 messages each: every one delivered exactly once."""
    rec = styled(Recorder)()
    all_connected = threading.Barrier(CLIENTS, timeout=15.0)

    def client_run(number: int) -> None:
        with smtp_client(server.address) as client:
            client.ehlo()
            all_connected.wait()
            for index in range(MESSAGES):
                subject = f"client {number} message {index}"
                client.sendmail(f"c{number}@y.z", ["a@b.c"], make_message(subject))

    with serve(rec) as server, ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client_run, number) for number in range(CLIENTS)]
        for future in futures:
            future.result(timeout=30.0)
        rec.wait_disconnects(CLIENTS)
    counts = Counter(rec.subjects())
    expected = {f"client {n} message {i}" for n in range(CLIENTS) for i in range(MESSAGES)}
    assert set(counts) == expected
    assert set(counts.values()) == {1}
