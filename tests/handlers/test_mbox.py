"""`MboxHandler`: the stdlib's mbox format, byte for byte, locked, durable before 250, and cut
back to its old length when a write fails."""

from __future__ import annotations

import mailbox
import os
import re
import threading
import time
from pathlib import Path

import pytest

from transports.handlers import MboxHandler, resolve_handler

from ._support import (
    MESSAGE,
    file_size_limited_server,
    send,
    send_expecting,
    serve,
    smtp_client,
    split_trace,
)

pytestmark = pytest.mark.network

FROM_LINE = rb"From (\S+) [A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\n"
QUOTED = MESSAGE.replace(b"\r\nFrom the desk", b"\r\n>From the desk")


def entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """(envelope sender, content) of each entry, checking the separators on the way."""
    found = []
    position = 0
    while position < len(data):
        line = re.compile(FROM_LINE).match(data, position)
        assert line is not None, data[position : position + 100]
        end = data.find(b"\n\nFrom ", line.end())
        end = len(data) - 1 if end == -1 else end + 1
        assert data[end : end + 1] == b"\n", "each entry ends with a blank line"
        found.append((line.group(1), data[line.end() : end]))
        position = end + 1
    return found


@pytest.mark.parametrize("transport", ["asyncio", "threads"])
def test_messages_appended_byte_for_byte(tmp_path: Path, transport: str) -> None:
    path = tmp_path / "inbox.mbox"
    with serve(MboxHandler(path), transport) as server:
        send(server)
        send(server, ["carol@example.org", "dan@example.org"], sender="")
    data = path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o600
    (sender1, content1), (sender2, content2) = entries(data)
    assert sender1 == b"alice@example.org" and sender2 == b"MAILER-DAEMON"
    _, rest = split_trace(content1, return_path="alice@example.org")
    assert rest == QUOTED  # the content as received, "From " lines quoted as mbox wants
    _, rest = split_trace(content2, return_path="", recipient=None)
    assert rest == QUOTED
    assert data.count(b"Return-Path:") == 2 and data.count(b"Received:") == 2
    assert not os.path.exists(f"{path}.lock")  # unlocked after each delivery
    # The stdlib reads the file back: two messages, envelope senders in their From lines.
    box = mailbox.mbox(path)
    first, second = box.values()
    assert first.get_from().startswith("alice@example.org ")
    assert first["Subject"] == "Quarterly numbers" and second["Return-Path"] == "<>"
    assert box.get_bytes(box.keys()[0]).endswith(b">From the desk of Alice\r\n")
    box.close()


def test_waits_for_another_programs_lock(tmp_path: Path) -> None:
    """A mail reader holds the lock for a moment: the delivery waits, then goes through."""
    path = tmp_path / "inbox.mbox"
    path.write_bytes(b"")
    reader = mailbox.mbox(path)
    reader.lock()
    threading.Timer(0.5, reader.unlock).start()
    started = time.monotonic()
    with serve(MboxHandler(path)) as server:
        send(server)
    assert time.monotonic() - started >= 0.4
    reader.close()
    assert len(entries(path.read_bytes())) == 1


def test_lock_not_released_in_time_gives_451(tmp_path: Path) -> None:
    path = tmp_path / "inbox.mbox"
    path.write_bytes(b"")
    reader = mailbox.mbox(path)
    reader.lock()
    try:
        with serve(MboxHandler(path, lock_timeout=0.3)) as server:
            exc = send_expecting(server, 451)
        assert "mailbox busy" in str(exc)
    finally:
        reader.close()
    assert path.read_bytes() == b""


def test_stale_dot_lock_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "inbox.mbox"
    lock = tmp_path / "inbox.mbox.lock"
    lock.write_bytes(b"")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with serve(MboxHandler(path, stale_lock_after=60)) as server:
        send(server)
    assert len(entries(path.read_bytes())) == 1
    assert not lock.exists()


def test_concurrent_sessions_never_interleave(tmp_path: Path) -> None:
    """Threads of one process: lockf alone would let them all in (it is per process)."""
    path = tmp_path / "inbox.mbox"
    count = 12
    with serve(MboxHandler(path), "threads") as server:

        def deliver(number: int) -> None:
            body = MESSAGE + f"message {number}\r\n".encode() * 300
            with smtp_client(server.address) as client:
                client.sendmail("a@example.org", [f"r{number}@example.org"], body)

        threads = [threading.Thread(target=deliver, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    found = entries(path.read_bytes())
    assert len(found) == count
    numbers = []
    for _, content in found:
        number = re.search(rb"for <r(\d+)@example\.org>", content)
        assert number is not None
        numbers.append(int(number.group(1)))
        recipient = f"r{numbers[-1]}@example.org"
        _, rest = split_trace(content, return_path="a@example.org", recipient=recipient)
        assert rest == QUOTED + f"message {numbers[-1]}\r\n".encode() * 300
    assert sorted(numbers) == list(range(count))


def test_missing_final_newline_of_another_writer_is_mended(tmp_path: Path) -> None:
    path = tmp_path / "inbox.mbox"
    path.write_bytes(b"From x@y Thu Jan  1 00:00:00 2024\nSubject: old\n\nno newline at the end")
    with serve(MboxHandler(path)) as server:
        send(server)
    box = mailbox.mbox(path)
    old, new = box.values()
    assert old.get_payload() == "no newline at the end\n"
    assert new["Subject"] == "Quarterly numbers"
    box.close()


def test_a_directory_in_place_of_the_file_gives_451(tmp_path: Path) -> None:
    path = tmp_path / "inbox.mbox"
    handler = MboxHandler(path)
    path.mkdir()
    with serve(handler) as server:
        exc = send_expecting(server, 451)
    assert "not a regular file" in str(exc)
    assert os.listdir(path) == []


def test_disk_full_mid_write_gives_451_and_keeps_the_file_as_it_was(tmp_path: Path) -> None:
    """The file may not grow past its size plus 1000 octets: the append fails part-way."""
    path = tmp_path / "inbox.mbox"
    with serve(MboxHandler(path)) as server:
        send(server)
    before = path.read_bytes()
    big = MESSAGE + b"y" * 70 + b"\r\n" + (b"z" * 70 + b"\r\n") * 40
    with file_size_limited_server(f"mbox:{path}", len(before) + 1000) as address:
        exc = send_expecting(address, 451, message=big)
        assert "File too large" in str(exc)
        assert path.read_bytes() == before  # cut back: no partial entry
        send(address)  # a small one still fits
    assert len(entries(path.read_bytes())) == 2
    assert not os.path.exists(f"{path}.lock")


def test_spec_and_construction_errors(tmp_path: Path) -> None:
    assert isinstance(resolve_handler(f"mbox:{tmp_path / 'box'}"), MboxHandler)
    assert not (tmp_path / "box").exists()  # made at the first message
    with pytest.raises(ValueError, match="mbox:FILE"):
        resolve_handler("mbox")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_handler(f"mbox:{tmp_path / 'nowhere' / 'box'}")
    with pytest.raises(ValueError, match="not a regular file"):
        resolve_handler("mbox:/dev/full")  # would be read forever and locked in /dev
    with pytest.raises(ValueError, match="not a regular file"):
        MboxHandler(tmp_path)
