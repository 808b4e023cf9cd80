"""PROXY protocol headers built the way a sender (HAProxy) writes them, independently of the
parser under test: plain string formatting for v1, `struct` for v2, `zlib`-free CRC32C."""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Sequence

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

LOCAL, PROXY = 0x0, 0x1
UNSPEC, INET, INET6, UNIX = 0x0, 0x1, 0x2, 0x3
STREAM, DGRAM = 0x1, 0x2


def v1(family: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v1_unknown(rest: str = "") -> bytes:
    return f"PROXY UNKNOWN{rest}\r\n".encode("ascii")


def v2(
    command: int = PROXY,
    family: int = INET,
    protocol: int = STREAM,
    addresses: bytes = b"",
    tlvs: Sequence[tuple[int, bytes]] = (),
    *,
    crc: bool = False,
    length: int | None = None,
    version: int = 2,
) -> bytes:
    """A v2 header; ``crc`` appends a correct PP2_TYPE_CRC32C TLV, ``length`` forces the
    length field."""
    body = addresses + b"".join(struct.pack("!BH", t, len(v)) + v for t, v in tlvs)
    if crc:
        body += struct.pack("!BH", 0x03, 4) + b"\x00\x00\x00\x00"
    size = len(body) if length is None else length
    header = SIGNATURE + bytes([version << 4 | command, family << 4 | protocol])
    header += struct.pack("!H", size) + body
    if crc:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")


def crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def chunks(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates and out-of-range ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]
