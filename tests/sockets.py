"""Read raw SMTP replies off a socket in tests that talk to a server byte by byte."""

from __future__ import annotations

import socket


def read_reply(sock: socket.socket) -> bytes:
    """Bytes up to the end of one (possibly multi-line) reply, or what came before the end
    of the stream."""
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
