"""`MboxHandler`: appends each message to an mbox file, durably, before saying 250.

The file is locked the way other mbox programs expect, with `mailbox.mbox.lock` (``lockf``
plus a ``FILE.lock`` dot-lock), so a mail reader or another delivery agent never sees half a
message. The entry is then appended, fsync'd (and the directory too when the file is new), and
only then does the client get its 250. On any failure the file is cut back to its length
before the append and the client gets 451, so the mbox never holds a partial entry.

The append itself is our own unbuffered write rather than `mailbox.mbox.add`, whose buffered
writes can fail on their final flush (disk full) after its own rollback point, leaving a
partial message and a stale buffer behind; the format is the stdlib's (``From `` line,
``>From `` quoting, blank line after each message), and `mailbox.mbox` reads it back.
"""

from __future__ import annotations

import errno
import logging
import mailbox
import os
import stat
import time
from contextlib import suppress

from transports._blocking import run_blocking
from transports.errors import Smtp451Error
from transports.handler import Handler, MaybeAwaitable, Session

from ._files import fsync_directory, path_lock
from .stored import StoredMessage
from .trace import trace_headers

__all__ = ["MboxHandler", "mbox_entry"]

_LOG = logging.getLogger("smtpcore.handlers.mbox")


def mbox_entry(message: StoredMessage, content: bytes) -> bytes:
    """``content`` as one mbox entry: the ``From sender date`` line (``MAILER-DAEMON`` for
    ``<>``, the date in UTC as `mailbox` writes it), lines starting ``From `` quoted as
    ``>From `` (mboxo, as `mailbox`), a final newline and the blank separator line."""
    sender = message.sender or "MAILER-DAEMON"
    when = time.asctime(message.received_at.utctimetuple())
    body = content.replace(b"\nFrom ", b"\n>From ")
    if body.startswith(b"From "):
        body = b">" + body
    if not body.endswith(b"\n"):
        body += b"\n"
    return f"From {sender} {when}\n".encode() + body + b"\n"


class MboxHandler(Handler):
    """Appends every message to the mbox file at ``path`` (created, mode 0600, if missing),
    with ``Return-Path:`` and ``Received:`` on top of the content.

    Args:
        path: the mbox file; its directory must exist.
        hostname: our name in ``Received:``; the server's hostname by default.
        lock_timeout: seconds to wait for another program's lock before answering 451.
        stale_lock_after: a ``FILE.lock`` older than this many seconds is left over from a
            crashed program and is removed (as procmail and mutt do).

    The content is stored as received, CRLF line endings included (lossless; readers cope).
    `mailbox.mbox` indexes a file by reading it whole, which we avoid; still, for large
    volumes prefer `MaildirHandler`, which never rewrites or rereads anything.

    Raises:
        ValueError: if the directory is missing or ``path`` is not a regular file (a device
            such as ``/dev/full`` would also get ``.lock`` files created beside it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hostname: str | None = None,
        lock_timeout: float = 10.0,
        stale_lock_after: float = 300.0,
    ) -> None:
        self.path = os.fspath(path)
        self.hostname = hostname
        self.lock_timeout = lock_timeout
        self.stale_lock_after = stale_lock_after
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValueError(f"mbox {self.path!r}: directory {directory!r} does not exist")
        if os.path.lexists(self.path) and not os.path.isfile(self.path):
            raise ValueError(f"mbox {self.path!r} is not a regular file")

    def on_message(self, ctx: Session) -> MaybeAwaitable:
        message = StoredMessage.from_session(ctx)
        return run_blocking(lambda: self.deliver(message))

    def deliver(self, message: StoredMessage) -> None:
        """Append ``message`` (with its trace headers) durably.

        Raises:
            Smtp451Error: the message could not be stored; the file is as it was.
        """
        content = trace_headers(message, hostname=self.hostname) + message.raw
        try:
            self._append(mbox_entry(message, content))
        except (OSError, mailbox.Error) as exc:
            _LOG.error("message %s not stored in mbox %s: %s", message.id, self.path, exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "mailbox busy"
            raise Smtp451Error(f"Cannot store the message now ({reason}), try again later") from exc
        _LOG.info("message %s from <%s> stored in mbox %s", message.id, message.sender, self.path)

    def _append(self, entry: bytes) -> None:
        with path_lock(self.path):
            created = _create(self.path)
            box = mailbox.mbox(self.path, create=False)
            try:
                self._lock(box)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
                try:
                    _append_durably(fd, entry)
                finally:
                    os.close(fd)
            finally:
                box.close()  # also unlocks
            if created:
                fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def _lock(self, box: mailbox.mbox) -> None:
        """`mailbox.mbox.lock` does not wait: retry until ``lock_timeout``."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        while True:
            try:
                box.lock()
                return
            except mailbox.ExternalClashError:
                self._break_stale_dot_lock()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def _break_stale_dot_lock(self) -> None:
        lock = self.path + ".lock"
        with suppress(OSError):
            if time.time() - os.stat(lock).st_mtime > self.stale_lock_after:
                os.remove(lock)
                _LOG.warning("removed stale lock %s", lock)


def _create(path: str) -> bool:
    """Create the file (0600: mail is private) if missing; True if we created it. A path that
    is not a regular file (a directory, a device) is refused, as an OSError."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path) from None
        return False
    return True


def _append_durably(fd: int, entry: bytes) -> None:
    """Append ``entry`` after a blank line, fsync; on failure truncate back to the old end."""
    size = os.fstat(fd).st_size
    if size:  # another writer may have left out the final newline or the blank line
        tail = os.pread(fd, 2, max(0, size - 2))
        if tail != b"\n\n":
            entry = (b"\n" if tail.endswith(b"\n") else b"\n\n") + entry
    try:
        view = memoryview(entry)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        with suppress(OSError):
            os.ftruncate(fd, size)
            os.fsync(fd)
        raise
