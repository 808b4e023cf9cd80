"""The README's examples run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_quick_start_is_two_commands() -> None:
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    commands = [line for line in first.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "smtpcore serve" in commands[0]
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].split("#")[0].strip() in ci


def test_driving_the_core_by_hand() -> None:
    block = next(b for b in _python_blocks() if "SmtpConnection(" in b)
    assert len(block.strip().splitlines()) <= 25
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "220 mx.example.org ESMTP ready"
    assert "550 5.1.1 No such user" in lines
    assert "354 End data with <CR><LF>.<CR><LF>" in lines
    assert "250 2.0.0 Message accepted" in lines
    assert lines[-2] == "221 2.0.0 Bye"
    assert lines[-1] == repr(b"Subject: hi\r\n\r\n.a line with a leading dot\r\n")
