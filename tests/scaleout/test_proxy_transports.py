"""The PROXY protocol through every transport, over 127.0.0.1: a raw socket sends the header
(v1 or v2) then SMTP; the session must see the client the header names, and a peer that may
not send one, or sends a bad one, or none in time, is closed without a word."""

from __future__ import annotations

import io
import smtplib
import socket
import ssl
import time

import anyio
import pytest

from smtpcore import SmtpConfig, TlsMode
from smtpcore.proxy import PP2_TYPE_AUTHORITY, ProxyCommand, ProxyInfo
from tests.integration._support import RawClient, make_message
from tests.proxy import _build as build
from transports.handler import Session
from transports.handlers import Debug
from transports.options import Listener, ServerOptions

from ._support import TRANSPORTS, ProxyRecorder, proxy_server

pytestmark = pytest.mark.network

V1 = build.v1("TCP4", "192.0.2.7", "198.51.100.1", 4242, 25)
V2_INET6 = build.v2(
    addresses=build.inet6("2001:db8::7", "2001:db8::25", 50000, 2525),
    family=build.INET6,
    tlvs=[(PP2_TYPE_AUTHORITY, b"mx.example")],
    crc=True,
)
V2_LOCAL = build.v2(command=build.LOCAL, family=build.UNSPEC, protocol=0)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def transact(client: RawClient, subject: str) -> None:
    """Banner, EHLO, one message, QUIT."""
    client.start_transaction()
    client.send(make_message(subject) + b".\r\n")
    client.expect(250)
    client.command("QUIT", 221)


def test_v1_header_then_smtp_in_one_segment(transport: str) -> None:
    """The header and the first command arrive together: the rest goes to SMTP."""
    handler = ProxyRecorder()
    with proxy_server(transport, handler) as server, RawClient(server.address) as client:
        client.send(V1 + b"EHLO client.test\r\n")
        client.expect(220)
        client.expect(250)
        client.command("MAIL FROM:<x@y.z>", 250)
        client.command("RCPT TO:<a@b.c>", 250)
        client.command("DATA", 354)
        client.send(make_message("via v1") + b".\r\n")
        client.expect(250)
        client.command("QUIT", 221)
        assert handler.wait_for(lambda: bool(handler.deliveries))
    [seen] = handler.seen
    assert (seen.remote_ip, seen.remote_port) == ("192.0.2.7", 4242)
    assert (seen.local_ip, seen.local_port) == ("198.51.100.1", 25)
    assert seen.peer is not None and seen.peer[0] == "127.0.0.1"  # the real peer: the proxy
    assert seen.proxy_info is not None and seen.proxy_info.version == 1
    assert handler.subjects() == ["via v1"]


def test_v2_ipv6_with_tlvs_in_small_pieces(transport: str) -> None:
    """A v2 header cut into pieces (as slow proxies or small segments deliver it)."""
    handler = ProxyRecorder()
    with proxy_server(transport, handler) as server, RawClient(server.address) as client:
        for piece in build.chunks(V2_INET6, [1, 5, 13, 16, 17, 40]):
            client.send(piece)
            time.sleep(0.01)
        transact(client, "via v2")
        assert handler.wait_for(lambda: bool(handler.deliveries))
    [seen] = handler.seen
    assert (seen.remote_ip, seen.remote_port) == ("2001:db8::7", 50000)
    assert seen.proxy_info is not None
    assert seen.proxy_info.tlv(PP2_TYPE_AUTHORITY) == b"mx.example"


def test_v2_local_keeps_the_socket_addresses(transport: str) -> None:
    """LOCAL (the proxy's own health check) names no client: the socket's peer stays."""
    handler = ProxyRecorder()
    with proxy_server(transport, handler) as server, RawClient(server.address) as client:
        own_port = client.sock.getsockname()[1]
        client.send(V2_LOCAL)
        client.expect(220)
        client.command("EHLO haproxy.invalid", 250)
        client.command("QUIT", 221)
        assert handler.wait_for(lambda: bool(handler.seen))
    [seen] = handler.seen
    assert (seen.remote_ip, seen.remote_port) == ("127.0.0.1", own_port)
    assert seen.proxy_info is not None and seen.proxy_info.command is ProxyCommand.LOCAL


def test_untrusted_peer_is_closed_without_reply(transport: str) -> None:
    handler = ProxyRecorder()
    with proxy_server(transport, handler, trusted_proxies=("192.0.2.0/24",)) as server:
        with RawClient(server.address) as client:
            client.send(V1 + b"EHLO client.test\r\n")
            assert client.wait_closed()  # raises if anything was written
        assert handler.wait_for(lambda: "untrusted" in handler.log_text())
    assert handler.seen == [] and handler.proxied == []
    assert "closed without a reply" in handler.log_text()


@pytest.mark.parametrize(
    "garbage",
    [
        b"EHLO client.test\r\n",  # no header at all
        b"PROXY TCP4 192.0.2.7 198.51.100.1 4242\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.999 198.51.100.1 4242 25\r\n",  # not an address
        build.v2(version=3),  # a version that does not exist
        b"PROXY " + b"X" * 200,  # longer than any v1 header
    ],
    ids=["smtp", "v1-short", "v1-bad-address", "v2-version", "v1-too-long"],
)
def test_malformed_header_is_closed_without_reply(transport: str, garbage: bytes) -> None:
    handler = ProxyRecorder()
    with proxy_server(transport, handler) as server, RawClient(server.address) as client:
        client.send(garbage)
        assert client.wait_closed()
        assert handler.wait_for(lambda: "bad PROXY header" in handler.log_text())
    assert handler.seen == []


def test_no_header_in_time_is_closed_without_reply(transport: str) -> None:
    handler = ProxyRecorder()
    with proxy_server(transport, handler, proxy_timeout=0.3) as server:
        with RawClient(server.address) as client:
            client.send(b"PROXY TCP4 ")  # then nothing
            started = time.monotonic()
            assert client.wait_closed(timeout=5.0)
            assert time.monotonic() - started < 4.0
        assert handler.wait_for(lambda: "no PROXY header in 0.3 s" in handler.log_text())
    assert handler.seen == []


def test_on_proxy_refusing_closes_without_reply(transport: str) -> None:
    handler = ProxyRecorder(refuse=("192.0.2.66",))
    with proxy_server(transport, handler) as server:
        with RawClient(server.address) as client:
            client.send(build.v1("TCP4", "192.0.2.66", "198.51.100.1", 1234, 25))
            assert client.wait_closed()
        with RawClient(server.address) as client:  # anyone else is served
            client.send(V1)
            transact(client, "welcome")
        assert handler.wait_for(lambda: bool(handler.deliveries))
        assert "on_proxy refused the client" in handler.log_text()
    assert handler.proxied == ["192.0.2.66", "192.0.2.7"]
    assert [seen.remote_ip for seen in handler.seen] == ["192.0.2.7"]  # no on_connect


@pytest.mark.parametrize("transport", [t for t in TRANSPORTS if t != "threads"])
def test_async_on_proxy(transport: str) -> None:
    class AsyncRefuser(ProxyRecorder):
        async def on_proxy(self, ctx: Session, info: ProxyInfo) -> None:  # type: ignore[override]
            await anyio.sleep(0.01)
            ProxyRecorder.on_proxy(self, ctx, info)

    handler = AsyncRefuser(refuse=("192.0.2.66",))
    with proxy_server(transport, handler) as server:
        with RawClient(server.address) as client:
            client.send(build.v1("TCP4", "192.0.2.66", "198.51.100.1", 1234, 25))
            assert client.wait_closed()
        with RawClient(server.address) as client:
            client.send(V1 + b"EHLO client.test\r\n")  # arrives while on_proxy runs
            client.expect(220)
            client.expect(250)
            client.command("QUIT", 221)
    assert [seen.remote_ip for seen in handler.seen] == ["192.0.2.7"]


def test_plain_listener_beside_a_proxy_listener(transport: str) -> None:
    handler = ProxyRecorder()
    listeners = (
        Listener("127.0.0.1", 0, proxy_protocol=True),
        Listener("127.0.0.1", 0),
    )
    with proxy_server(transport, handler, listeners=listeners) as server:
        proxied, plain = server.addresses
        with RawClient(plain) as client:
            own_port = client.sock.getsockname()[1]
            transact(client, "plain")
        with RawClient(proxied) as client:
            client.send(V1)
            transact(client, "proxied")
        assert handler.wait_for(lambda: len(handler.deliveries) == 2)
    assert [(s.remote_ip, s.remote_port) for s in handler.seen] == [
        ("127.0.0.1", own_port),
        ("192.0.2.7", 4242),
    ]
    assert handler.seen[0].proxy_info is None


def test_starttls_behind_the_proxy(transport: str) -> None:
    """PROXY header, then plaintext SMTP, then STARTTLS: TLS starts on the same connection."""
    handler = ProxyRecorder()
    config = SmtpConfig(hostname="mx.test", tls_mode=TlsMode.OPTIONAL)
    with proxy_server(transport, handler, config=config) as server:
        sock = socket.create_connection(server.address, timeout=5.0)
        sock.sendall(V1)
        smtp = smtplib.SMTP(local_hostname="client.test", timeout=5.0)
        smtp.sock = sock
        smtp.file = None
        smtp._host = "mx.test"  # type: ignore[attr-defined]  # the name starttls() gives TLS (not checked here)
        try:
            assert smtp.getreply()[0] == 220
            smtp.ehlo()
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            assert smtp.starttls(context=context)[0] == 220
            smtp.sendmail("x@y.z", ["a@b.c"], make_message("over tls"))
            smtp.quit()
        finally:
            smtp.close()
        assert handler.wait_for(lambda: bool(handler.deliveries))
    assert handler.seen[0].remote_ip == "192.0.2.7"


def test_debug_handler_shows_the_proxied_client(transport: str) -> None:
    out = io.StringIO()
    with proxy_server(transport, Debug(out)) as server, RawClient(server.address) as client:
        client.send(V1)
        transact(client, "debug")
    assert "Remote:    192.0.2.7:4242" in out.getvalue()


def test_options_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="implicit_tls"):
        ServerOptions(
            listeners=(Listener(port=0, proxy_protocol=True, implicit_tls=True),),
            trusted_proxies=("127.0.0.1",),
        )
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServerOptions(listeners=(Listener(port=0, proxy_protocol=True),))
    with pytest.raises(ValueError):
        ServerOptions(trusted_proxies=("not a network",))
    with pytest.raises(ValueError, match="proxy_timeout"):
        ServerOptions(proxy_timeout=0)
    lone = ServerOptions(trusted_proxies="10.0.0.0/8")  # type: ignore[arg-type]
    assert lone.trusted_proxies == ("10.0.0.0/8",)
