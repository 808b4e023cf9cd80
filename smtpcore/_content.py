"""Message content: DATA framing and unstuffing, BDAT chunks, size and header tracking.

All work is done on whole buffers with C-level ``find``/``count``/``replace``; no Python code
runs per line of the message.
"""

from __future__ import annotations

import re

from ._buffer import ReceiveBuffer
from .config import CrlfMode

END_OF_DATA = b"\r\n.\r\n"
_HELD_SUFFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
# The regex engine jumps from one LF (or CR) to the next: cheaper than counting CRLFs.
# A read never ends in CR (it is held back), so a CRLF is never split between two reads.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_BARE_CR = re.compile(rb"\r(?!\n)")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_BARE_OR_DOT_LF = re.compile(rb"\n(?:(?<!\r\n)|(?<=\r\n)\.)")


class DataReader:
    """Reads DATA content up to ``CRLF . CRLF`` out of the receive buffer.

    A virtual CRLF is put in front of the content (when the first of it arrives: a reader
    still waiting leaves the buffer empty), so ``CRLF . CRLF`` is the only terminator
    (RFC 5321 §4.1.1.4; ``LF . LF`` and friends are content, see SMTP smuggling) and a leading
    dot is ``CRLF .`` like any other. A suffix that could begin the terminator (at most 4
    octets) stays in the buffer, so no CRLF or ``CRLF .`` is ever split between two reads.
    """

    __slots__ = ("_buffer", "_crlf_mode", "_data", "_first", "_virtual")

    def __init__(self, buffer: ReceiveBuffer, crlf_mode: CrlfMode) -> None:
        self._buffer = buffer
        self._data = buffer.raw  # the same bytearray for the buffer's whole life
        self._crlf_mode = crlf_mode
        self._virtual = True  # the virtual CRLF is still to be put in front
        self._first = True  # the next content taken starts with the virtual CRLF

    def read(self) -> tuple[bytes, bool, bool] | None:
        """Take what the buffer holds.

        Returns:
            None if nothing can be taken yet, else (content, finished, had_bare): the
            unstuffed content (line endings normalised per the mode), whether the terminator
            was consumed, and whether the content held a bare CR or LF.
        """
        buffer = self._buffer
        data = self._data
        if self._virtual:
            self._virtual = False
            buffer.prepend(b"\r\n")
        # One scan answers the common case: the first LF that is bare or starts a dot line is
        # the terminator's, or there is none; then there is nothing to unstuff and no bare LF.
        hit = _BARE_OR_DOT_LF.search(data)
        dot = -1 if hit is None else data.find(b"\r\n.", max(hit.start() - 1, 0))
        end = -1 if dot < 0 else data.find(END_OF_DATA, dot)
        plain = hit is None or 0 <= end == hit.start() - 1
        if end >= 0:
            raw = buffer.take(end + 2, 3)  # the content keeps its CRLF; ". CRLF" is dropped
            finished = True
        else:
            hold = 0
            for suffix in _HELD_SUFFIXES:
                if data.endswith(suffix):
                    hold = len(suffix)
                    break
            if len(data) == hold:
                return None
            raw = buffer.take(len(data) - hold)
            finished = False
        had_bare = False
        mode = self._crlf_mode
        if not plain:
            if 0 <= dot <= len(raw) - 3:  # a dot line in the content, not just the terminator
                raw = b"\r\n".join(raw.split(b"\r\n."))  # unstuff in one pass (RFC 5321 §4.5.2)
            if mode is not CrlfMode.LEAVE and _BARE_LF.search(raw):
                had_bare = True
                if mode is CrlfMode.NORMALIZE:
                    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if mode is CrlfMode.STRICT and not had_bare and _BARE_CR.search(raw):
            had_bare = True
        if self._first:
            self._first = False
            raw = raw[2:]
        return raw, finished, had_bare


class HeaderTracker:
    """Finds the empty line that ends the header block, across chunk boundaries."""

    __slots__ = ("_tail", "done")

    def __init__(self) -> None:
        self._tail = b"\n"  # the message starts at a line start
        self.done = False

    def split(self, chunk: bytes) -> int | None:
        """Offset in ``chunk`` where the empty line starts, or None if not in this chunk."""
        tail = self._tail
        data = tail + chunk
        hit = _BLANK_LINE.search(data)  # the first LF CRLF or LF LF, even across the edge
        if hit is not None:
            self.done = True
            return hit.start() + 1 - len(tail)
        self._tail = data[-2:]
        return None
