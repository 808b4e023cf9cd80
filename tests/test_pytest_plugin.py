"""The pytest plugin (``transports.pytest_plugin``, the ``pytest11`` entry point ``smtpcore``).

Each test writes a test suite into a temporary directory and runs pytest on it with pytester,
as a user's project would run, then checks the outcome. Runs that must not share a process
(concurrent sessions, no trustme, xdist workers) run pytest in subprocesses. Every wait is
bounded by TIMEOUT.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

# In-process pytester runs drop the modules they imported when they end. cryptography's
# compiled half would then meet new copies of its Python classes in the next run ("curve must
# be an EllipticCurve instance"), so the certificate makers are imported here, once.
import transports.tls
from transports.pytest_plugin import Inbox, SmtpcoreOptions, SmtpcoreServer

transports.tls.generate_self_signed("localhost")
if importlib.util.find_spec("trustme") is not None:
    import trustme

    trustme.CA().issue_cert("localhost")

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.network

TIMEOUT = 30.0


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    return result.parseoutcomes()


# ---- the plugin is there, and quiet until used


def test_the_entry_point_registers_the_plugin(pytestconfig: pytest.Config) -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in points if p.name == "smtpcore"] == ["transports.pytest_plugin"], (
        "reinstall smtpcore (pip install -e .) to register the pytest11 entry point"
    )
    assert pytestconfig.pluginmanager.has_plugin("smtpcore")


def test_fixtures_in_this_very_suite(inbox: Inbox, smtpcore_server: SmtpcoreServer) -> None:
    """The plugin is installed for this project's own tests too: the fixtures just work."""
    assert inbox.messages == [] and inbox.server is smtpcore_server
    with smtplib.SMTP(*smtpcore_server.address, timeout=TIMEOUT) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: here\r\n\r\nhi\r\n")
    (message,) = inbox.wait_for(subject="here", timeout=TIMEOUT)
    assert message.recipients == ("b@example.org",)


def test_the_fixtures_serve_a_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib
        import threading

        import pytest

        def send(address, sender, recipients, subject, timeout=10):
            with smtplib.SMTP(*address, timeout=timeout) as smtp:
                body = f"Subject: {subject}\\r\\n\\r\\nHello.\\r\\n".encode()
                return smtp.sendmail(sender, recipients, body)

        def test_where_the_server_is(smtpcore_server):
            assert smtpcore_server.host == "127.0.0.1"
            assert smtpcore_server.port > 0
            assert smtpcore_server.address == (smtpcore_server.host, smtpcore_server.port)
            assert smtpcore_server.smtps_port is None and smtpcore_server.ca_path is None
            with pytest.raises(RuntimeError, match="no TLS"):
                smtpcore_server.ssl_context()

        def test_a_message_arrives(inbox, smtpcore_server):
            assert send(inbox.address, "alice@example.org", ["bob@example.org"], "One") == {}
            (message,) = inbox.wait_for(recipient="bob@example.org", subject="One")
            assert message.sender == "alice@example.org"
            assert message.raw.endswith(b"Hello.\\r\\n")
            assert message.email["subject"] == "One"
            assert smtpcore_server.messages == inbox.messages == [message]
            assert len(inbox) == 1 and list(inbox) == [message]

        def test_the_inbox_is_empty_again(inbox):
            assert inbox.messages == [] and len(inbox) == 0

        def test_wait_for_wakes_up_on_a_late_message(inbox):
            later = threading.Timer(0.3, send, (inbox.address, "", ["x@example.org"], "Late"))
            later.start()
            try:
                (message,) = inbox.wait_for(sender="", subject="Late", timeout=10)
            finally:
                later.join()
            assert message.sender == "" and message.recipients == ("x@example.org",)

        def test_wait_for_counts_and_filters(inbox):
            for n in range(3):
                send(inbox.address, "a@example.org", [f"r{n}@example.org"], f"n{n}")
            assert len(inbox.wait_for(3)) == 3
            assert [m.subject for m in inbox.wait_for(recipient="r1@example.org")] == ["n1"]

        def test_wait_for_says_what_did_arrive(inbox):
            send(inbox.address, "a@example.org", ["b@example.org"], "Other")
            with pytest.raises(TimeoutError, match="Other"):
                inbox.wait_for(subject="Wanted", timeout=0.2)

        def test_fail_next(inbox):
            inbox.fail_next("RCPT", 451)
            inbox.fail_next("data", 554, count=2)
            with smtplib.SMTP(*inbox.address, timeout=10) as smtp:
                smtp.ehlo()
                assert smtp.mail("a@example.org")[0] == 250
                assert smtp.rcpt("b@example.org")[0] == 451
                assert smtp.rcpt("b@example.org")[0] == 250
                for _ in range(2):
                    assert smtp.data(b"Subject: x\\r\\n\\r\\nx\\r\\n")[0] == 554
                    smtp.mail("a@example.org")
                    smtp.rcpt("b@example.org")
                assert smtp.data(b"Subject: kept\\r\\n\\r\\nx\\r\\n")[0] == 250
            assert [m.subject for m in inbox.messages] == ["kept"]
            inbox.fail_next("mail", 421)  # left queued: the next test must not see it

        def test_failures_queued_by_another_test_are_gone(inbox):
            assert send(inbox.address, "a@example.org", ["b@example.org"], "Clean") == {}

        def test_no_smtpd_fixture_by_default(request):
            with pytest.raises(pytest.FixtureLookupError):
                request.getfixturevalue("smtpd")
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=9)


def test_starttls_and_auth_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        smtpcore_tls = required
        smtpcore_auth = required
        smtpcore_users =
            alice:wonder land
            bob:builder
        """
    )
    pytester.makepyfile(
        """
        import os
        import smtplib
        import ssl

        import pytest

        ENVIRONMENT = dict(os.environ)

        def test_starttls_then_login(inbox, smtpcore_server):
            assert smtpcore_server.ca_path.read_bytes() == smtpcore_server.ca_pem
            with smtplib.SMTP(*inbox.address, timeout=10) as smtp:
                smtp.ehlo()
                assert smtp.mail("a@example.org")[0] == 530  # TLS first
                smtp.starttls(context=smtpcore_server.ssl_context())  # verifies the name too
                smtp.ehlo()
                smtp.user, smtp.password = "alice", "wrong"
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    smtp.auth("PLAIN", smtp.auth_plain)  # one try: login() would try three
                smtp.login("alice", "wonder land")
                smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: s\\r\\n\\r\\nx\\r\\n")
            (message,) = inbox.wait_for()
            assert message.tls is not None and message.authentication_id == "alice"

        def test_auth_is_required(inbox, smtpcore_server):
            with smtplib.SMTP(*inbox.address, timeout=10) as smtp:
                smtp.starttls(context=smtpcore_server.ssl_context())
                smtp.ehlo()
                assert smtp.mail("a@example.org")[0] == 530

        def test_an_unverified_client_is_refused(smtpcore_server):
            with smtplib.SMTP(*smtpcore_server.address, timeout=10) as smtp:
                with pytest.raises(ssl.SSLCertVerificationError):
                    smtp.starttls(context=ssl.create_default_context())

        def test_the_environment_is_untouched():
            now = dict(os.environ)
            now.pop("PYTEST_CURRENT_TEST", None)
            assert now == {k: v for k, v in ENVIRONMENT.items() if k != "PYTEST_CURRENT_TEST"}
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=4)


def test_smtps_and_the_options_fixture_without_trustme(pytester: pytest.Pytester) -> None:
    """Without trustme the server's self-signed certificate is the CA clients trust."""
    pytester.makeconftest(
        """
        import sys

        import pytest

        from transports.pytest_plugin import SmtpcoreOptions

        sys.modules["trustme"] = None  # import trustme now fails

        @pytest.fixture(scope="session")
        def smtpcore_server_options():
            return SmtpcoreOptions(
                smtps=True, users={"carol": "pw"}, transport="threads", max_message_size=1000
            )
        """
    )
    pytester.makepyfile(
        """
        import smtplib

        def test_smtps(inbox, smtpcore_server):
            assert b"smtpcore test CA" not in smtpcore_server.ca_pem
            assert smtpcore_server.smtps_port not in (None, smtpcore_server.port)
            with smtpcore_server.smtp_ssl() as smtp:
                smtp.login("carol", "pw")
                smtp.sendmail("a@example.org", ["b@example.org"], b"Subject: s\\r\\n\\r\\nx\\r\\n")
            with smtpcore_server.smtp() as smtp:  # the plain port: AUTH offered without TLS?
                smtp.ehlo()
                assert not smtp.has_extn("auth")  # no: this server has TLS
                assert smtp.esmtp_features["size"] == "1000"
            (message,) = inbox.wait_for()
            assert message.tls is not None and message.authentication_id == "carol"
        """
    )
    result = pytester.runpytest_subprocess(timeout=TIMEOUT)
    result.assert_outcomes(passed=1)


def test_trustme_issues_the_certificate_when_installed(pytester: pytest.Pytester) -> None:
    if importlib.util.find_spec("trustme") is None:
        pytest.skip("trustme is not installed (an optional test dependency)")
    pytester.makeini("[pytest]\nsmtpcore_tls = optional\n")
    pytester.makepyfile(
        """
        def test_ca(smtpcore_server):
            assert smtpcore_server.ca_pem != smtpcore_server.cert_path.read_bytes()
            with smtpcore_server.smtp() as smtp:
                smtp.starttls(context=smtpcore_server.ssl_context())
                assert smtp.noop()[0] == 250
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_auth_without_tls_is_offered_to_plain_test_servers(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsmtpcore_users = dave:pw\n")
    pytester.makepyfile(
        """
        def test_login(inbox):
            with inbox.server.smtp() as smtp:
                smtp.login("dave", "pw")  # CRAM-MD5 first, as smtplib prefers it
                smtp.sendmail("a@example.org", ["b@example.org"], b"\\r\\n")
            assert inbox.wait_for()[0].authentication_id == "dave"

        def test_auth_failures_can_be_injected(inbox):
            import smtplib, pytest
            inbox.fail_next("auth", 454)
            with inbox.server.smtp() as smtp:
                smtp.user, smtp.password = "dave", "pw"
                smtp.ehlo()
                with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                    smtp.auth("PLAIN", smtp.auth_plain)
                assert failed.value.smtp_code == 454
                assert smtp.auth("PLAIN", smtp.auth_plain)[0] == 235
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("ini", "complaint"),
    [
        ("smtpcore_tls = sometimes", "smtpcore_tls must be one of off, optional, required"),
        ("smtpcore_auth = always", "smtpcore_auth must be one of"),
        ("smtpcore_users = nopassword", "smtpcore_users: expected USER:PASSWORD"),
        ("smtpcore_transport = twisted", "smtpcore transport must be one of"),
    ],
)
def test_bad_ini_options_are_usage_errors(
    pytester: pytest.Pytester, ini: str, complaint: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_it(smtpcore_server):\n    pass\n")
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*{complaint}*"])


# ---- the smtpdfix look-alike, only on request


SMTPDFIX_STYLE_TEST = """
    import email.message
    import smtplib

    def test_like_smtpdfix(smtpd):
        with smtplib.SMTP(smtpd.hostname, smtpd.port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.org", "c@example.org"],
                            b"Subject: compat\\r\\n\\r\\nHello.\\r\\n")
        assert len(smtpd.messages) == 1
        message = smtpd.messages[0]
        assert type(message) is email.message.Message  # compat32, as smtpdfix gives
        assert message["Subject"] == "compat"
        assert message["X-MailFrom"] == "a@example.org"
        assert message["X-RcptTo"] == "b@example.org, c@example.org"
        assert message["X-Peer"].startswith("('127.0.0.1', ")
        assert smtpd.config.host == smtpd.hostname and smtpd.config.port == smtpd.port
        assert smtpd.config.use_starttls is False and smtpd.config.use_ssl is False

    def test_messages_are_per_test(smtpd):
        assert smtpd.messages == []
"""


def test_the_smtpd_alias_is_off_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SMTPDFIX_STYLE_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'smtpd' not found*"])


def test_the_smtpd_alias_when_opted_in(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsmtpcore_smtpd_alias = true\n")
    pytester.makepyfile(SMTPDFIX_STYLE_TEST)
    pytester.runpytest().assert_outcomes(passed=2)


def test_the_alias_config_reflects_tls_and_auth(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nsmtpcore_smtpd_alias = true\nsmtpcore_tls = smtps\n"
        "smtpcore_auth = required\nsmtpcore_users = user:password\n"
    )
    pytester.makepyfile(
        """
        import dataclasses
        import pytest

        def test_config(smtpd, smtpcore_server):
            config = smtpd.config
            assert smtpd.port == config.port == smtpcore_server.smtps_port  # as smtpdfix: SSL
            assert (config.login_username, config.login_password) == ("user", "password")
            assert config.enforce_auth and config.use_ssl and config.auth_require_tls
            assert config.ssl_cert_files == (str(smtpcore_server.cert_path), None)
            with pytest.raises(dataclasses.FrozenInstanceError):
                config.port = 25  # smtpdfix would restart; here the options fixture decides
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# ---- one server per session: per xdist worker


WAIT_FOR_THE_OTHER = """
    import os
    import pathlib
    import smtplib
    import time

    def test_hold_the_server_while_the_other_starts(smtpcore_server, inbox):
        here = pathlib.Path(os.environ["PORTS_DIR"])
        name = os.environ["RUN_NAME"]
        (here / f"{{name}}.port").write_text(str(smtpcore_server.port))
        deadline = time.monotonic() + {timeout}
        while len(list(here.glob("*.port"))) < 2:  # both servers are up at once
            assert time.monotonic() < deadline, "the other run never started its server"
            time.sleep(0.05)
        with smtplib.SMTP(*smtpcore_server.address, timeout=10) as smtp:
            smtp.sendmail("a@example.org", [f"{{name}}@example.org"], b"\\r\\n")
        assert [m.recipients for m in inbox.wait_for()] == [(f"{{name}}@example.org",)]
"""


def test_two_sessions_at_once_get_two_servers_on_two_ports(pytester: pytest.Pytester) -> None:
    """What xdist workers do: two pytest processes, each with its session's server."""
    pytester.makepyfile(WAIT_FOR_THE_OTHER.format(timeout=TIMEOUT))
    ports = pytester.mkdir("ports")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=pytester.path,
            env={**os.environ, "PORTS_DIR": str(ports), "RUN_NAME": name},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("first", "second")
    ]
    outputs = [run.communicate(timeout=TIMEOUT * 2)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    first, second = (int((ports / f"{n}.port").read_text()) for n in ("first", "second"))
    assert first != second


def test_xdist_workers_each_get_their_own_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import os
        import pathlib
        import smtplib

        import pytest

        @pytest.mark.parametrize("n", range(8))
        def test_send(n, smtpcore_server, inbox, worker_id):
            with smtplib.SMTP(*smtpcore_server.address, timeout=10) as smtp:
                smtp.sendmail("a@example.org", [f"r{n}@example.org"], b"\\r\\n")
            assert [m.recipients for m in inbox.wait_for()] == [(f"r{n}@example.org",)]
            seen = pathlib.Path(os.environ["PORTS_DIR"]) / f"{worker_id}-{n}"
            seen.write_text(str(smtpcore_server.port))
        """
    )
    ports = pytester.mkdir("ports")
    monkeypatch.setenv("PORTS_DIR", str(ports))  # for the workers
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", timeout=TIMEOUT * 2)
    result.assert_outcomes(passed=8)
    by_worker: dict[str, set[int]] = {}
    for seen in ports.iterdir():
        by_worker.setdefault(seen.name.split("-")[0], set()).add(int(seen.read_text()))
    assert len(by_worker) == 2, by_worker
    assert all(len(ports_seen) == 1 for ports_seen in by_worker.values())  # one per session
    first, second = (ports_seen.pop() for ports_seen in by_worker.values())
    assert first != second


# ---- the objects behind the fixtures, directly


def test_the_server_object_outside_pytest_fixtures(tmp_path: Path) -> None:
    options = SmtpcoreOptions(transport="trio", hostname="mx.test")
    with SmtpcoreServer(options, workdir=tmp_path) as server:
        with server.smtp() as smtp:
            assert smtp.ehlo()[1].startswith(b"mx.test")
        server.fail_next("MAIL", 452)
        with server.smtp() as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org")[0] == 452
            server.clear()
            assert smtp.mail("a@example.org")[0] == 250
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            Inbox(server).wait_for(timeout=0.1)
        assert time.monotonic() - start < TIMEOUT


def test_options_validate_and_derive() -> None:
    with pytest.raises(ValueError, match="transport"):
        SmtpcoreOptions(transport="gevent")
    with pytest.raises(ValueError):
        SmtpcoreOptions(tls_mode="sometimes")
    plain = SmtpcoreOptions(users={"u": "p"})
    assert plain.smtp_config().auth_mode.value == "optional"
    assert plain.smtp_config().allow_insecure_auth is True
    secure = plain.replace(tls_mode="required", config={"max_recipients": 5})
    assert secure.smtp_config().allow_insecure_auth is False
    assert secure.smtp_config().max_recipients == 5
    assert SmtpcoreOptions().smtp_config().auth_mode.value == "forbidden"


# ---- docs/testing-with-pytest.md, as a user would copy it

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "testing-with-pytest.md"


def guide_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text("utf-8"), re.S)


def test_the_guide_s_first_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_guide=guide_blocks("python")[0])
    pytester.runpytest().assert_outcomes(passed=3)


def test_the_guide_s_tls_and_auth_setup_passes(pytester: pytest.Pytester) -> None:
    _, conftest, test, outside = guide_blocks("python")
    (ini,) = guide_blocks("ini")[:1]
    pytester.makeini(ini)
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_submission=test, outside=outside)
    pytester.runpytest().assert_outcomes(passed=1)
