"""What the mailbox handlers share: durable writes and one lock per mailbox path."""

from __future__ import annotations

import os
import threading

__all__ = ["fsync_directory", "path_lock"]

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def path_lock(path: str) -> threading.Lock:
    """The process-wide lock for the mailbox at ``path`` (resolved, so two spellings of one
    path share it).

    Needed beside the mailbox's own file locks: POSIX ``lockf`` locks belong to the process,
    so two threads of one server would both "hold" the lock, and releasing one releases both.
    """
    key = os.path.realpath(path)
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = threading.Lock()
        return lock


def fsync_directory(path: str) -> None:
    """fsync a directory, so an entry just created (or linked) in it survives a crash: fsync
    on a file makes its data durable, not the name that points to it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
