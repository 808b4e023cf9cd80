"""The ops endpoint and the observer: /livez, /readyz flipping while a stop drains, /metrics
counting what the transports report (through every transport)."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from smtpcore import SmtpConfig, TlsMode
from tests.integration._support import RawClient, make_message, smtp_client
from tests.proxy import _build as build
from transports._common import ObservedDriver, new_session
from transports._driver import SessionDriver
from transports.controller import ServerThread
from transports.errors import Smtp554Error
from transports.handler import Handler, Session
from transports.ops import Health, Metrics, OpsServer
from transports.options import Listener, ServerOptions

from ._support import TRANSPORTS, http_get, metric

pytestmark = pytest.mark.network


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Picky(Handler):
    """Refuses messages whose subject is "reject" with 554."""

    def on_message(self, ctx: Session) -> None:
        if ctx.message.email["subject"] == "reject":
            raise Smtp554Error("not this one")


@contextmanager
def observed(
    transport: str, observer: Health, **options: object
) -> Iterator[tuple[ServerThread, str]]:
    """A server of ``transport`` reporting to ``observer``, and its ops base URL."""
    options.setdefault("config", SmtpConfig(hostname="mx.test"))
    options.setdefault("listeners", (Listener("127.0.0.1", 0),))  # never the default 2525
    built = ServerOptions.build(observer=observer, **options)  # type: ignore[arg-type]
    with (
        OpsServer(("127.0.0.1", 0), observer) as ops,
        ServerThread(transport, Picky(), built) as server,
    ):
        try:
            yield server, "http://{}:{}".format(*ops.address)
        finally:
            server.stop(grace=1.0, timeout=15.0)


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_metrics_count_sessions_messages_bytes_tls_and_hooks(transport: str) -> None:
    import prometheus_client  # noqa: F401  # a test dependency: missing, the test fails

    metrics = Metrics()
    listeners = (Listener("127.0.0.1", 0), Listener("127.0.0.1", 0, proxy_protocol=True))
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with observed(
        transport,
        metrics,
        listeners=listeners,
        config=config,
        trusted_proxies=("127.0.0.1",),
    ) as (server, url):
        plain, proxied = server.addresses
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtp_client(plain) as smtp:
            smtp.starttls(context=context)
            smtp.sendmail("x@y.z", ["a@b.c"], make_message("fine"))
        with smtp_client(plain) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("x@y.z", ["a@b.c"], make_message("reject"))
        assert refused.value.smtp_code == 554
        with RawClient(plain) as client:  # a handshake that fails
            client.expect(220)
            client.command("EHLO client.test", 250)
            client.command("STARTTLS", 220)
            client.send(b"this is not a ClientHello\r\n" * 4)
            assert client.wait_closed()
        with RawClient(proxied) as client:
            client.send(b"HELO without a header\r\n")
            assert client.wait_closed()
        assert wait_until(
            lambda: metric(http_get(url + "/metrics")[1], "smtpcore_sessions_total") == 3
        )
        assert wait_until(
            lambda: metric(http_get(url + "/metrics")[1], "smtpcore_sessions_active") == 0
        )
        status, text = http_get(url + "/metrics")
    assert status == 200
    assert metric(text, 'smtpcore_messages_total{code="250",result="accepted"}') == 1
    assert metric(text, 'smtpcore_messages_total{code="554",result="rejected"}') == 1
    assert metric(text, 'smtpcore_tls_handshakes_total{result="ok"}') == 1
    assert metric(text, 'smtpcore_tls_handshakes_total{result="failed"}') == 1
    assert metric(text, 'smtpcore_connections_refused_total{reason="proxy-malformed"}') == 1
    assert metric(text, 'smtpcore_hook_duration_seconds_count{hook="on_message"}') == 2
    assert metric(text, "smtpcore_received_bytes_total") > 2 * len(make_message("fine"))


def test_readyz_flips_while_a_stop_drains_then_421(transport: str) -> None:
    """A stop with grace: /readyz says 503 at once (/livez still 200), the transaction in
    progress may finish; one that does not finish within the grace gets 421."""
    health = Health()
    with observed(transport, health) as (server, url):
        assert http_get(url + "/readyz") == (200, "ready\n")
        with RawClient(server.address) as finishing, RawClient(server.address) as slow:
            finishing.start_transaction()
            slow.start_transaction()
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 1.5})
            stopper.start()
            try:
                assert wait_until(lambda: http_get(url + "/readyz")[0] == 503)
                assert http_get(url + "/readyz") == (503, "draining\n")
                assert http_get(url + "/livez") == (200, "ok\n")
                finishing.send(make_message("in flight") + b".\r\n")
                finishing.expect(250)  # the transaction drains...
                code, _ = slow.read_reply(timeout=10.0)
                assert code == 421  # ...the one past the grace is told to come back later
            finally:
                stopper.join(20)


def test_ops_paths_without_prometheus() -> None:
    with OpsServer(("127.0.0.1", 0), Health()) as ops:
        base = "http://{}:{}".format(*ops.address)
        assert http_get(base + "/metrics")[0] == 501
        assert http_get(base + "/nothing")[0] == 404
        assert http_get(base + "/livez?verbose") == (200, "ok\n")


def test_no_observer_costs_nothing() -> None:
    """Without an observer the plain driver is used: the hot path is unchanged."""
    plain = ServerOptions(config=SmtpConfig(hostname="mx.test"))
    driver = new_session(Handler(), plain, ("127.0.0.1", 25), ("127.0.0.1", 1), sleep=time.sleep)
    assert type(driver) is SessionDriver
    watched = ServerOptions(config=SmtpConfig(hostname="mx.test"), observer=Health())
    driver = new_session(Handler(), watched, ("127.0.0.1", 25), ("127.0.0.1", 1), sleep=time.sleep)
    assert type(driver) is ObservedDriver


def test_proxied_session_context_from_new_session() -> None:
    """new_session fills ctx from the header; UNKNOWN keeps the socket's addresses."""
    from smtpcore.proxy import ProxyHeaderParser

    options = ServerOptions(config=SmtpConfig(hostname="mx.test"))
    info = ProxyHeaderParser().feed(build.v1("TCP6", "2001:db8::1", "2001:db8::2", 1, 2))
    driver = new_session(Handler(), options, ("::1", 25), ("::1", 9), sleep=time.sleep, proxy=info)
    ctx = driver.ctx
    assert (ctx.remote_ip, ctx.remote_port, ctx.local_ip, ctx.local_port) == (
        "2001:db8::1",
        1,
        "2001:db8::2",
        2,
    )
    assert ctx.proxy is not None and (ctx.proxy.peer_ip, ctx.proxy.peer_port) == ("::1", 9)
    unknown = ProxyHeaderParser().feed(build.v1_unknown())
    driver = new_session(
        Handler(), options, ("127.0.0.1", 25), ("127.0.0.1", 9), sleep=time.sleep, proxy=unknown
    )
    assert (driver.ctx.remote_ip, driver.ctx.remote_port) == ("127.0.0.1", 9)
