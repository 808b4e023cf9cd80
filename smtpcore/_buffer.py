"""The receive buffer: a bytearray consumed from the front, never rescanned from zero."""

from __future__ import annotations


class ReceiveBuffer:
    """Bytes received but not yet parsed.

    ``del buf[:n]`` on a bytearray is amortised O(n) in CPython, so consuming from the front
    stays linear; ``_scanned`` remembers how far a line end was already looked for.
    """

    __slots__ = ("_data", "_scanned")

    def __init__(self) -> None:
        self._data = bytearray()
        self._scanned = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> int:
        """Drop everything; return how many octets were dropped."""
        dropped = len(self._data)
        self._data.clear()
        self._scanned = 0
        return dropped

    def take_line(self) -> bytes | None:
        """Remove and return the next line up to and including LF, or None if incomplete."""
        data = self._data
        end = data.find(b"\n", self._scanned) + 1
        if not end:
            self._scanned = len(data)
            return None
        self._scanned = 0
        if end == len(data):  # the whole buffer, as with one command per read: no slicing
            line = bytes(data)
            data.clear()
            return line
        line = bytes(data[:end])
        del data[:end]
        return line

    def take(self, count: int, skip: int = 0) -> bytes:
        """Remove and return up to ``count`` octets, and drop ``skip`` more after them."""
        chunk = bytes(self._data[:count])
        del self._data[: count + skip]
        self._scanned = 0
        return chunk

    def prepend(self, data: bytes) -> None:
        """Put octets back in front (the DATA reader's virtual line start)."""
        self._data[:0] = data
        self._scanned = 0

    @property
    def raw(self) -> bytearray:
        """The underlying buffer, for the bulk scans of the content readers."""
        return self._data
