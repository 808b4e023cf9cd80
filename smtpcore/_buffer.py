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

    def append(self, data: bytes) -> None:
        self._data += data

    def clear(self) -> int:
        """Drop everything; return how many octets were dropped."""
        dropped = len(self._data)
        self._data.clear()
        self._scanned = 0
        return dropped

    def take_line(self) -> bytes | None:
        """Remove and return the next line up to and including LF, or None if incomplete."""
        end = self._data.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._data)
            return None
        line = bytes(self._data[: end + 1])
        del self._data[: end + 1]
        self._scanned = 0
        return line

    def take(self, count: int) -> bytes:
        """Remove and return up to ``count`` octets."""
        chunk = bytes(self._data[:count])
        del self._data[:count]
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
