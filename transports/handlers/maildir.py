"""`MaildirHandler`: delivers each message into a Maildir, durably, before saying 250.

A 250 reply hands responsibility for the message to us (RFC 5321 §6.1), so the reply waits
until the file is on disk: the stdlib's `mailbox.Maildir.add` writes it into ``tmp/``, fsyncs
it and links it into ``new/``; we then fsync ``new/`` so the link survives a crash too. Any
failure (disk full, quota, a missing or replaced directory) answers 451: the client keeps the
message and retries, and nothing half-written is left in ``new/``.
"""

from __future__ import annotations

import logging
import mailbox
import os

from transports._blocking import run_blocking
from transports.errors import Smtp451Error
from transports.handler import Handler, MaybeAwaitable, Session

from ._files import fsync_directory, path_lock
from .stored import StoredMessage
from .trace import trace_headers

__all__ = ["MaildirHandler"]

_LOG = logging.getLogger("smtpcore.handlers.maildir")
_SUBDIRS = ("tmp", "new", "cur")


class MaildirHandler(Handler):
    """Delivers every message to the Maildir at ``path`` (made, parents too, if missing), one
    file per message in ``new/``, with ``Return-Path:`` and ``Received:`` on top of the content.

    Args:
        path: the Maildir (the directory holding ``tmp``, ``new`` and ``cur``).
        hostname: our name in ``Received:``; the server's hostname by default.

    The content is stored byte for byte as received, CRLF line endings included: lossless
    (binary MIME parts, DKIM signatures) and read fine by Dovecot, mutt and `mailbox`.
    One copy per message whatever the recipients: this is a catch-all mailbox.

    Raises:
        ValueError: if the Maildir cannot be created (a file in the way, no permission).
    """

    def __init__(self, path: str | os.PathLike[str], *, hostname: str | None = None) -> None:
        self.path = os.fspath(path)
        self.hostname = hostname
        try:  # Maildir() makes neither missing parents nor the subdirectories of an existing dir
            for name in _SUBDIRS:
                os.makedirs(os.path.join(self.path, name), mode=0o700, exist_ok=True)
            self._box = mailbox.Maildir(self.path, create=False)
        except OSError as exc:
            raise ValueError(f"maildir {self.path!r} cannot be used: {exc}") from exc

    def on_message(self, ctx: Session) -> MaybeAwaitable:
        message = StoredMessage.from_session(ctx)
        return run_blocking(lambda: self.deliver(message))

    def deliver(self, message: StoredMessage) -> str:
        """Write ``message`` (with its trace headers) and return its Maildir key.

        Raises:
            Smtp451Error: the message could not be stored; nothing was delivered.
        """
        data = trace_headers(message, hostname=self.hostname) + message.raw
        try:
            key = self._store(data)
        except (OSError, mailbox.Error) as exc:
            _LOG.error("message %s not stored in maildir %s: %s", message.id, self.path, exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "mailbox busy"
            raise Smtp451Error(f"Cannot store the message now ({reason}), try again later") from exc
        _LOG.info(
            "message %s from <%s> stored in maildir %s as %s",
            message.id,
            message.sender,
            self.path,
            key,
        )
        return key

    def _store(self, data: bytes) -> str:
        tmp = os.path.join(self.path, "tmp")
        # Serialised per Maildir so that, should a write fail, the tmp/ file the stdlib leaves
        # behind (it fsyncs outside its cleanup) is known to be ours and can be removed.
        with path_lock(self.path):
            before = set(os.listdir(tmp))
            try:
                key = self._box.add(data)
            except BaseException:
                _remove_own_leftovers(tmp, before)
                raise
            fsync_directory(os.path.join(self.path, "new"))
        return key


def _remove_own_leftovers(tmp: str, before: set[str]) -> None:
    """Delete tmp/ files this process created since ``before`` (Maildir names hold our pid)."""
    ours = f"P{os.getpid()}Q"
    try:
        created = set(os.listdir(tmp)) - before
    except OSError:
        return
    for name in created:
        if ours in name:
            try:
                os.remove(os.path.join(tmp, name))
            except OSError as exc:
                _LOG.warning("cannot remove %s from %s: %s", name, tmp, exc)
