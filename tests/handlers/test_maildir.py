"""`MaildirHandler`: byte-exact files in new/, durable before 250, 451 and nothing kept when
the disk (or the directory) fails."""

from __future__ import annotations

import mailbox
import os
import shutil
from pathlib import Path

import pytest

from transports.handlers import MaildirHandler, resolve_handler

from ._support import (
    MESSAGE,
    file_size_limited_server,
    run_swaks,
    send,
    send_expecting,
    serve,
    split_trace,
)

pytestmark = pytest.mark.network


def only_file(directory: Path) -> bytes:
    (name,) = os.listdir(directory)
    return (directory / name).read_bytes()


@pytest.mark.parametrize("transport", ["asyncio", "threads", "trio"])
def test_message_stored_byte_for_byte_with_trace_headers(tmp_path: Path, transport: str) -> None:
    box = tmp_path / "Maildir"
    with serve(MaildirHandler(box), transport) as server:
        assert send(server) == {}
    stored = only_file(box / "new")
    _, rest = split_trace(stored, return_path="alice@example.org")
    assert rest == MESSAGE  # dot-unstuffed, CRLF kept, nothing else added or changed
    assert stored.count(b"Return-Path:") == 1 and stored.count(b"Received:") == 1
    assert os.listdir(box / "tmp") == [] and os.listdir(box / "cur") == []
    # The stdlib reads it back as one message with the envelope sender on top.
    (message,) = mailbox.Maildir(box).values()
    assert message["Return-Path"] == "<alice@example.org>"
    assert message["Subject"] == "Quarterly numbers"


def test_several_recipients_one_copy_without_for_clause(tmp_path: Path) -> None:
    with serve(MaildirHandler(tmp_path / "md")) as server:
        send(server, ["bob@example.org", "carol@example.org"], sender="")
    stored = only_file(tmp_path / "md" / "new")
    _, rest = split_trace(stored, return_path="", recipient=None)  # <> and no "for"
    assert rest == MESSAGE


def test_swaks_delivery(tmp_path: Path) -> None:
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE)
    with serve(MaildirHandler(tmp_path / "md"), "threads") as server:
        result = run_swaks(
            server.address, "--from", "s@example.org", "--to", "r@example.org", "--data", f"@{data}"
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Message accepted" in result.stdout
    _, rest = split_trace(
        only_file(tmp_path / "md" / "new"), return_path="s@example.org", recipient="r@example.org"
    )
    assert rest == MESSAGE + b"\r\n"  # swaks always adds a line end before the final dot


@pytest.mark.parametrize("broken", ["tmp", "new"])
def test_a_file_where_a_directory_belongs_gives_451_and_keeps_nothing(
    tmp_path: Path, broken: str
) -> None:
    """Root ignores permissions, so the write is made to fail with a file in the way."""
    box = tmp_path / "md"
    handler = MaildirHandler(box)
    shutil.rmtree(box / broken)
    (box / broken).write_bytes(b"not a directory")
    with serve(handler) as server:
        exc = send_expecting(server, 451)
    assert b"4.3.0" in str(exc).encode() and b"Not a directory" in str(exc).encode()
    for name in {"tmp", "new", "cur"} - {broken}:
        assert os.listdir(box / name) == []


@pytest.mark.parametrize("size", [2_000, 200_000])
def test_disk_full_mid_write_gives_451_and_leaves_no_file(tmp_path: Path, size: int) -> None:
    """Files may not grow past 1000 octets: the write fails part-way with EFBIG, on the final
    flush for a small message (where the stdlib's own cleanup misses its tmp file)."""
    box = tmp_path / "md"
    MaildirHandler(box)
    body = MESSAGE + (b"x" * 70 + b"\r\n") * (size // 72)
    with file_size_limited_server(f"maildir:{box}", 1000) as address:
        exc = send_expecting(address, 451, message=body)
        assert "File too large" in str(exc)
        send(address, message=MESSAGE)  # small enough: the handler still works afterwards
    assert len(os.listdir(box / "new")) == 1
    assert os.listdir(box / "tmp") == []


def test_spec_and_construction_errors(tmp_path: Path) -> None:
    handler = resolve_handler(f"maildir:{tmp_path / 'a' / 'b'}")
    assert isinstance(handler, MaildirHandler)
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["cur", "new", "tmp"]
    existing = tmp_path / "empty"
    existing.mkdir()
    MaildirHandler(existing)  # a plain directory gets its subdirectories
    assert sorted(os.listdir(existing)) == ["cur", "new", "tmp"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot be used"):
        MaildirHandler(tmp_path / "file")
    with pytest.raises(ValueError, match=r"maildir:DIR"):
        resolve_handler("maildir")
    with pytest.raises(ValueError, match=r"maildir:DIR"):
        resolve_handler("maildir:")
