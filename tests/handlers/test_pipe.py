"""`PipeHandler`: the message with its trace headers on stdin, the envelope in the
environment, and the exit status deciding the reply."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from transports.handlers import PipeHandler, resolve_handler

from ._support import MESSAGE, send, send_expecting, serve, split_trace

pytestmark = pytest.mark.network


def test_message_and_envelope_reach_the_command(tmp_path: Path) -> None:
    out, env = tmp_path / "stdin", tmp_path / "env"
    script = (
        f'cat > {out}; printf "%s|%s|%s|%s|%s" '
        f'"$SENDER" "$RECIPIENT" "$RECIPIENTS" "$CLIENT_HELO" "$EXTRA" > {env}'
    )
    handler = PipeHandler(["/bin/sh", "-c", script], env={"EXTRA": "given"})
    with serve(handler, "threads") as server:
        send(server)
        assert (
            env.read_text() == "alice@example.org|bob@example.org|bob@example.org|client.test|given"
        )
        send(server, ["bob@example.org", "carol@example.org"], sender="")
        # RECIPIENT only for a single recipient: a script must not take the first for all.
        assert env.read_text() == "||bob@example.org carol@example.org|client.test|given"
    _, rest = split_trace(out.read_bytes(), return_path="", recipient=None)
    assert rest == MESSAGE


def test_spec_is_split_like_a_shell_but_run_without_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    handler = resolve_handler(f"pipe:/bin/sh -c 'cat > {shlex.quote(str(out))}'")
    assert isinstance(handler, PipeHandler)
    with serve(handler) as server:
        send(server, sender="alice@example.org")
    _, rest = split_trace(out.read_bytes(), return_path="alice@example.org")
    assert rest == MESSAGE
    injected = resolve_handler(f"pipe:/bin/echo $(touch {tmp_path / 'pwned'})")
    assert isinstance(injected, PipeHandler)
    with serve(injected) as server:
        send(server)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("status", "code", "enhanced"),
    [
        (0, 250, None),
        (65, 550, "5.6.0"),  # EX_DATAERR
        (67, 550, "5.1.1"),  # EX_NOUSER
        (77, 550, "5.7.1"),  # EX_NOPERM
        (75, 451, "4.3.0"),  # EX_TEMPFAIL
        (1, 451, "4.3.0"),  # anything else: better retried than lost
        (70, 451, "4.3.0"),
    ],
)
def test_exit_status_decides_the_reply(status: int, code: int, enhanced: str | None) -> None:
    script = f"cat > /dev/null; echo 'first line'; echo 'why it failed' >&2; exit {status}"
    with serve(PipeHandler(["/bin/sh", "-c", script])) as server:
        if code == 250:
            assert send(server) == {}
            return
        exc = send_expecting(server, code)
    assert f"{enhanced} " in str(exc) and "why it failed" in str(exc)


def test_command_not_reading_its_input_still_counts_by_status() -> None:
    big = MESSAGE + (b"y" * 70 + b"\r\n") * 3000  # more than a pipe buffer holds
    with serve(PipeHandler(["/bin/sh", "-c", "exit 0"])) as server:
        assert send(server, message=big) == {}
    with serve(PipeHandler(["/bin/sh", "-c", "exit 67"])) as server:
        send_expecting(server, 550, message=big)


def test_killed_by_a_signal_gives_451() -> None:
    with serve(PipeHandler(["/bin/sh", "-c", "kill -9 $$"])) as server:
        exc = send_expecting(server, 451)
    assert "killed by SIGKILL" in str(exc)


def test_timeout_kills_the_whole_group_and_gives_451(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    script = f"(sleep 1; touch {marker}) & cat > /dev/null; sleep 30"
    started = time.monotonic()
    with serve(PipeHandler(["/bin/sh", "-c", script], timeout=0.5)) as server:
        exc = send_expecting(server, 451)
    assert "timed out" in str(exc)
    assert time.monotonic() - started < 5
    time.sleep(max(0.0, started + 2.0 - time.monotonic()))
    assert not marker.exists()  # the background child was killed with its group


def test_spec_and_construction_errors() -> None:
    for spec in ("pipe", "pipe:", "pipe:   "):
        with pytest.raises(ValueError, match="needs"):
            resolve_handler(spec)
    with pytest.raises(ValueError, match="not found"):
        resolve_handler("pipe:/no/such/program --flag")
    with pytest.raises(ValueError, match="No closing quotation"):
        resolve_handler("pipe:/bin/sh -c 'unbalanced")
