"""The examples ``tls_auth_server``, ``to_queue``, ``to_webhook`` and ``custom_server`` do what
they say, with smtplib as the client over 127.0.0.1.

Handlers are imported from their files and served by a `ServerThread` (asyncio, as the scripts
run them); the last tests run each file as a script. Every socket operation and wait is
bounded by TIMEOUT.
"""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import re
import signal
import smtplib

# Real sockets are the point of these tests; the ban only protects the sans-IO core.
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from smtpcore import SmtpConfig
from transports.controller import ServerThread
from transports.handler import Handler
from transports.handlers import WebhookHandler
from transports.options import ServerOptions

pytestmark = pytest.mark.network

TIMEOUT = 15.0
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MESSAGE = b"From: a@example.org\r\nSubject: Hello\r\n\r\n.A leading dot\r\nHi there.\r\n"


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def serving(handler: Handler, options: ServerOptions | None = None) -> Iterator[ServerThread]:
    if options is None:
        options = ServerOptions.build(host="127.0.0.1", port=0)
    server = ServerThread("asyncio", handler, options).start()
    try:
        yield server
    finally:
        server.stop(grace=0.0, timeout=TIMEOUT)


def client(address: tuple[str, int]) -> smtplib.SMTP:
    return smtplib.SMTP(*address, local_hostname="client.example.org", timeout=TIMEOUT)


# ---- tls_auth_server


def test_tls_auth_server_wants_starttls_then_auth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = example("tls_auth_server")
    handler, options, ca_pem = module.build(tmp_path, port=0)
    assert oct((tmp_path / "server.pem").stat().st_mode & 0o777) == "0o600"  # the key
    trusting = ssl.create_default_context(cafile=str(ca_pem))
    with serving(handler, options) as server, client(server.address) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")  # no AUTH in clear
        code, text = smtp.mail("alice@example.org")
        assert code == 530 and b"STARTTLS" in text
        smtp.starttls(context=trusting)  # verified: the certificate names 127.0.0.1
        smtp.ehlo()
        assert smtp.has_extn("auth") and not smtp.has_extn("starttls")
        assert smtp.mail("alice@example.org")[0] == 530  # AUTH first
        smtp.rset()
        smtp.user, smtp.password = "alice", "not the password"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("PLAIN", smtp.auth_plain)
        assert refused.value.smtp_code == 535
        assert smtp.login("alice", "wonderland")[0] == 235
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
    out = capsys.readouterr().out
    assert "alice (TLSv1." in out and "sent <alice@example.org> -> bob@example.org: Hello" in out


def test_tls_auth_server_certificate_is_not_publicly_trusted(tmp_path: Path) -> None:
    """A client trusting only the public CAs rightly refuses the self-signed certificate."""
    module = example("tls_auth_server")
    handler, options, _ = module.build(tmp_path, port=0)
    with (
        serving(handler, options) as server,
        client(server.address) as smtp,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        smtp.starttls(context=ssl.create_default_context())


# ---- to_queue


def test_to_queue_publishes_envelope_and_exact_message(tmp_path: Path) -> None:
    module = example("to_queue")
    queue = module.FileQueue(tmp_path / "mail.jsonl")
    with serving(module.ToQueue(queue)) as server, client(server.address) as smtp:
        assert (
            smtp.sendmail("alice@example.org", ["bob@example.org", "eve@example.org"], MESSAGE)
            == {}
        )
        assert smtp.sendmail("", ["postmaster@example.org"], b"Subject: bounce\r\n\r\nx\r\n") == {}
        # 250 came after the line was on disk: nothing to wait for
        first, second = queue.records()
    assert first["mail_from"] == "alice@example.org"
    assert first["rcpt_to"] == ["bob@example.org", "eve@example.org"]
    assert first["helo"] == "client.example.org" and first["remote_ip"] == "127.0.0.1"
    assert base64.b64decode(first["message"]) == MESSAGE  # dot-unstuffed again
    assert first["id"] != second["id"] and second["mail_from"] == ""
    assert base64.b64decode(second["message"]) == b"Subject: bounce\r\n\r\nx\r\n"


def test_to_queue_answers_451_when_the_queue_fails(tmp_path: Path) -> None:
    module = example("to_queue")
    queue = module.FileQueue(tmp_path)  # a directory: every append fails
    with (
        serving(module.ToQueue(queue)) as server,
        client(server.address) as smtp,
        pytest.raises(smtplib.SMTPDataError) as failed,
    ):
        smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    assert failed.value.smtp_code == 451 and b"Queue unavailable" in failed.value.smtp_error


# ---- to_webhook


class WebApp(http.server.BaseHTTPRequestHandler):
    """Records every POST and answers with ``status`` (class attributes, reset per test)."""

    posts: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    status: ClassVar[int] = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append((self.path, dict(self.headers), body))
        self.send_response(self.status)
        if self.status in (301, 302, 307):
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web_app() -> Iterator[str]:
    WebApp.posts, WebApp.status = [], 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebApp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mail"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_to_webhook_posts_json(web_app: str) -> None:
    module = example("to_webhook")
    with serving(module.make_handler(web_app)) as server, client(server.address) as smtp:
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
    ((path, headers, body),) = WebApp.posts
    assert path == "/mail" and headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["mail_from"] == "alice@example.org" and payload["rcpt_to"] == ["bob@example.org"]
    assert payload["subject"] == "Hello" and payload["remote_ip"] == "127.0.0.1"
    assert base64.b64decode(payload["message"]) == MESSAGE


@pytest.mark.parametrize("status", [500, 404, 302])
def test_to_webhook_answers_451_unless_2xx(web_app: str, status: int) -> None:
    module = example("to_webhook")
    WebApp.status = status
    with (
        serving(module.make_handler(web_app)) as server,
        client(server.address) as smtp,
        pytest.raises(smtplib.SMTPDataError) as failed,
    ):
        smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    assert failed.value.smtp_code == 451
    assert f"HTTP {status}".encode() in failed.value.smtp_error
    assert [p for p, _, _ in WebApp.posts] == ["/mail"]  # the redirect was not followed


def test_to_webhook_answers_451_when_unreachable() -> None:
    module = example("to_webhook")
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/mail"
    handler = module.ToWebhook(url, timeout=TIMEOUT)
    with (
        serving(handler) as server,
        client(server.address) as smtp,
        pytest.raises(smtplib.SMTPDataError) as failed,
    ):
        smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    assert failed.value.smtp_code == 451 and b"unreachable" in failed.value.smtp_error


def test_to_webhook_builtin_variant(web_app: str) -> None:
    module = example("to_webhook")
    handler = module.make_handler(web_app, builtin=True)
    assert isinstance(handler, WebhookHandler)
    with serving(handler) as server, client(server.address) as smtp:
        assert smtp.sendmail("alice@example.org", ["bob@example.org"], MESSAGE) == {}
    ((_, _, body),) = WebApp.posts
    payload = json.loads(body)
    assert payload["envelope"]["rcpt_to"] == ["bob@example.org"]
    assert payload["headers"]["subject"] == "Hello"


# ---- custom_server


@contextmanager
def custom_server(
    config: SmtpConfig | None = None,
) -> Iterator[tuple[tuple[str, int], list[tuple[str, tuple[str, ...], bytes]]]]:
    module = example("custom_server")
    delivered: list[tuple[str, tuple[str, ...], bytes]] = []
    listener = socket.create_server(("127.0.0.1", 0))
    args = (listener, config or SmtpConfig(hostname="custom.test"), lambda *m: delivered.append(m))
    thread = threading.Thread(target=module.serve_forever, args=args, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2], delivered
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes accept() up
        listener.close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_custom_server_is_small_and_uses_only_the_core() -> None:
    source = (EXAMPLES / "custom_server.py").read_text("utf-8")
    assert len(source.splitlines()) < 80
    assert "transports" not in source.replace("no `transports` at all", "")


def test_custom_server_receives_mail() -> None:
    with custom_server() as (address, delivered), client(address) as smtp:
        code, banner = smtp.ehlo()
        assert code == 250 and banner.startswith(b"custom.test")
        assert smtp.has_extn("pipelining") and smtp.has_extn("size")
        assert (
            smtp.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"], MESSAGE)
            == {}
        )
        assert smtp.sendmail("", ["d@example.org"], b"Subject: two\r\n\r\n..\r\n") == {}
        assert smtp.noop()[0] == 250
        sender, recipients, content = delivered[0]  # delivered before the 250
        assert (sender, recipients) == (
            "alice@example.org",
            ("bob@example.org", "carol@example.org"),
        )
        assert content == MESSAGE
        assert delivered[1] == ("", ("d@example.org",), b"Subject: two\r\n\r\n..\r\n")


def test_custom_server_serves_clients_at_once_and_answers_errors() -> None:
    with custom_server() as (address, delivered):
        with client(address) as first, client(address) as second:  # two threads
            first.ehlo()
            second.ehlo()
            assert first.rcpt("bob@example.org")[0] == 503  # the core keeps the order
            assert second.docmd("FROB")[0] == 500
            assert first.sendmail("a@example.org", ["b@example.org"], MESSAGE) == {}
            assert second.sendmail("c@example.org", ["d@example.org"], MESSAGE) == {}
        assert sorted(sender for sender, _, _ in delivered) == ["a@example.org", "c@example.org"]


def test_custom_server_applies_the_core_limits() -> None:
    config = SmtpConfig(hostname="custom.test", max_message_size=100)
    with custom_server(config) as (address, delivered), client(address) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # SIZE= declared too large
            smtp.sendmail("a@example.org", ["b@example.org"], b"x" * 200)
        assert refused.value.smtp_code == 552
        smtp.rset()
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        assert smtp.data(b"Subject: big\r\n\r\n" + b"y" * 200)[0] == 552  # counted as it came
    assert delivered == []


def test_custom_server_closes_on_quit_and_on_a_silent_peer() -> None:
    with custom_server() as (address, _):
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            assert sock.recv(1024).startswith(b"220 custom.test")
            sock.sendall(b"QUIT\r\n")
            received = b""
            while chunk := sock.recv(1024):
                received += chunk
            assert received.startswith(b"221 ")
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            sock.recv(1024)
            sock.shutdown(socket.SHUT_WR)  # the client goes away: the server just ends
            assert sock.recv(1024) == b""


# ---- each file as a script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def script(name: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=EXAMPLES.parent,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # "Listening on ..." once the port is bound
        assert first.startswith("Listening on"), first + process.stdout.read()
        yield process, port, first
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, out
    return out


def test_scripts_custom_server_and_to_queue(tmp_path: Path) -> None:
    with script("custom_server") as (process, port, _):
        with client(("127.0.0.1", port)) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        assert "<a@example.org> -> b@example.org: Hello" in stop(process)
    queue = tmp_path / "queue.jsonl"
    with script("to_queue", "--queue", str(queue)) as (process, port, _):
        with client(("127.0.0.1", port)) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        stop(process)
    assert json.loads(queue.read_text("utf-8"))["rcpt_to"] == ["b@example.org"]


def test_scripts_tls_auth_server_and_to_webhook(web_app: str) -> None:
    with script("tls_auth_server") as (process, port, first):
        ca_path = first.split("clients trust ", 1)[1].split(";", 1)[0]
        with client(("127.0.0.1", port)) as smtp:
            smtp.starttls(context=ssl.create_default_context(cafile=ca_path))
            smtp.login("bob", "builder")
            smtp.sendmail("bob@example.org", ["alice@example.org"], MESSAGE)
        assert "bob (TLSv1." in stop(process)
    assert not Path(ca_path).exists()  # the temporary certificate went with the server
    with script("to_webhook", "--url", web_app) as (process, port, _):
        with client(("127.0.0.1", port)) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        stop(process)
    assert len(WebApp.posts) == 1  # nothing to wait for: 250 came after the POST


# ---- the docs: their snippets run, their mapping tables are complete

DOCS = EXAMPLES.parent / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text("utf-8"), re.S)


@pytest.mark.parametrize(
    "name",
    [
        "sans-io-core.md",
        "coming-from-midi-smtp-server.md",
        "coming-from-aiosmtpd.md",
        "coming-from-smtpd.md",
    ],
)
def test_doc_snippets_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each page's blocks run in order in one namespace (servers start only under __main__)."""
    blocks = python_blocks(name)
    assert blocks, f"{name} has no python blocks"
    namespace: dict[str, Any] = {"__name__": f"docs.{name}"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"{name} block {number + 1}", "exec"), namespace)


MIDI_OPTIONS = """ports hosts pre_fork max_processings max_connections crlf_mode
    do_dns_reverse_lookup io_waitreadable_sleep io_cmd_timeout io_buffer_chunk_size
    io_buffer_max_size pipelining_extension internationalization_extensions proxy_extension
    auth_mode tls_mode tls_cert_path tls_key_path tls_ciphers tls_methods tls_cert_cn tls_cert_san
    logger logger_severity"""
MIDI_METHODS = """start join stop shutdown shutdown? stopped? connections connections?
    processings processings? pre_fork? master? worker? workers workers? authenticated?
    encrypted?"""
MIDI_EVENTS = """on_logging_event on_connect_event on_disconnect_event on_proxy_event
    on_helo_event on_auth_event on_mail_from_event on_rcpt_to_event on_message_data_start_event
    on_message_data_headers_event on_message_data_receiving_event on_message_data_event
    on_process_line_unknown_event"""
MIDI_EXCEPTIONS = """SmtpdException Smtpd421Exception Smtpd432Exception Smtpd450Exception
    Smtpd451Exception Smtpd452Exception Smtpd454Exception Tls454Exception Smtpd500Exception
    Smtpd500PipeliningException Smtpd500CrLfSequenceException Smtpd501Exception
    Smtpd502Exception Smtpd503Exception Smtpd504Exception Smtpd521Exception Smtpd530Exception
    Tls530Exception Smtpd534Exception Smtpd535Exception Smtpd538Exception Smtpd550Exception
    Smtpd552Exception Smtpd553Exception Smtpd554Exception SmtpdIOTimeoutException
    SmtpdIOBufferOverrunException SmtpdStopServiceException SmtpdStopConnectionException"""
MIDI_CTX = {
    "server": """local_host local_ip local_port local_response remote_host remote_ip
        remote_port proxy helo helo_response connected exceptions errors authorization_id
        authentication_id authenticated encrypted""",
    "envelope": "from to encoding_body encoding_utf8",
    "message": "received delivered bytesize headers crlf data",
}


def first_column(name: str) -> str:
    """The first cells of every table row of a page, joined (what the page maps *from*)."""
    rows = (DOCS / name).read_text("utf-8").splitlines()
    return "\n".join(row.split(" | ")[0] for row in rows if row.startswith("| "))


def test_midi_smtp_server_page_maps_everything() -> None:
    mapped = first_column("coming-from-midi-smtp-server.md")
    for name in MIDI_OPTIONS.split():
        assert f"| `{name}`" in mapped, name
    for name in MIDI_METHODS.split():
        assert re.search(rf"`{re.escape(name)}[`(]", mapped), name
    for name in (*MIDI_EVENTS.split(), *MIDI_EXCEPTIONS.split()):
        assert f"`{name}" in mapped, name
    for part, fields in MIDI_CTX.items():
        for field in fields.split():
            assert re.search(rf"`ctx\[:{part}\]\[:{field}\]`|\[:{field}\]`", mapped), field
    text = (DOCS / "coming-from-midi-smtp-server.md").read_text("utf-8")
    assert "## Quirks deliberately not copied" in text


def test_aiosmtpd_page_maps_every_hook_option_and_flag() -> None:
    mapped = first_column("coming-from-aiosmtpd.md")
    hooks = """handle_HELO handle_EHLO handle_MAIL handle_RCPT handle_DATA handle_RSET
        handle_NOOP handle_QUIT handle_VRFY handle_AUTH auth_MECHANISM handle_STARTTLS
        handle_PROXY handle_exception from_cli authenticator auth_required auth_require_tls
        auth_exclude_mechanism auth_callback"""
    options = """data_size_limit enable_SMTPUTF8 decode_data hostname ident tls_context
        require_starttls timeout command_call_limit proxy_protocol_timeout loop
        line_length_limit local_part_limit"""
    cli_flags = "-n -c CLASSARGS -s -u -d -l --tlscert --no-requiretls --smtpscert -v"
    controllers = "Controller( UnthreadedController UnixSocketController controller.factory"
    for name in (*hooks.split(), *options.split(), *cli_flags.split(), *controllers.split()):
        assert f"`{name}" in mapped, name
