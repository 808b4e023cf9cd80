"""HAProxy's PROXY protocol (versions 1 and 2), receiver side, without any I/O.

A load balancer or proxy in front of the server (HAProxy, nginx ``proxy_protocol``, AWS NLB,
stunnel...) opens each connection with a header that names the real client. This module
parses that header from the bytes of a connection; it never reads a socket.

How a transport uses it (per listener, only when the listener is configured for it)::

    if not trusted(peer_ip, trusted_networks):   # a peer that may not speak for others
        close the connection                      # (or serve it without the header)
    parser = ProxyHeaderParser()
    info = None
    while info is None:                           # with a deadline: the header comes first
        data = recv()                             # b"" when the peer closed
        info = parser.feed(data)                  # raises ProxyProtocolError: close, no reply
    if info.addresses_known:                      # PROXY over TCP4/TCP6: the real client
        remote_ip, remote_port = info.source_address, info.source_port
        local_ip, local_port = info.destination_address, info.destination_port
    # else (LOCAL command, UNKNOWN/UNSPEC family): keep the socket's own addresses
    conn = SmtpConnection(config)                 # only now: the banner follows the header
    if parser.remainder:
        conn.receive_data(parser.remainder)       # bytes after the header belong to SMTP

Read and parse the header *before* creating the `SmtpConnection` (and before sending the
banner, running ``on_connect`` or any DNS/access check on the peer address), and send nothing
to the peer until the header is complete. On `ProxyProtocolError` close the connection
without replying: the peer is not speaking SMTP. `trusted` tells whether the immediate peer
(the socket's address) is one of the configured proxies; never accept a header from anyone
else, or any client could claim any address.

The parser keeps at most the header itself in memory: a v1 header longer than 107 octets or a
v2 header longer than ``max_size`` (536 by default, as the specification recommends to
receivers; at least 232, the size of a v2 header with AF_UNIX addresses) is refused as soon
as that is known. TLVs of v2 are kept raw as ``(type, value)`` pairs, in order; a
``PP2_TYPE_CRC32C`` TLV is verified when present.

Reference: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = [
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX_SIZE",
    "V2_DEFAULT_MAX_SIZE",
    "V2_MAX_SIZE",
    "V2_MIN_MAX_SIZE",
    "V2_SIGNATURE",
    "AddressFamily",
    "ProxyCommand",
    "ProxyHeaderParser",
    "ProxyInfo",
    "ProxyProtocolError",
    "TransportProtocol",
    "trusted",
]

V1_PREFIX = b"PROXY "
V1_MAX_SIZE = 107
"""The longest v1 header, CRLF included (``PROXY TCP6`` with two full-length addresses)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = struct.Struct("!12sBBH")
V2_DEFAULT_MAX_SIZE = 536
"""What the specification recommends a receiver to accept for a v2 header."""
V2_MIN_MAX_SIZE = 16 + 216
"""The smallest sensible cap: the fixed part plus AF_UNIX addresses."""
V2_MAX_SIZE = 16 + 0xFFFF

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30

_V4_ADDRESSES = struct.Struct("!4s4sHH")
_V6_ADDRESSES = struct.Struct("!16s16sHH")
_UNIX_ADDRESSES = struct.Struct("!108s108s")
_TLV_HEAD = struct.Struct("!BH")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (or the peer closed before one).

    The connection should be closed without a reply.
    """


class ProxyCommand(enum.Enum):
    LOCAL = "LOCAL"
    """The proxy's own connection (a health check): use the socket's real addresses."""
    PROXY = "PROXY"
    """Relayed for a client whose addresses the header carries (unless the family is UNSPEC)."""


class AddressFamily(enum.IntEnum):
    """v2's address family nibble; v1 ``TCP4``/``TCP6``/``UNKNOWN`` map to INET/INET6/UNSPEC."""

    UNSPEC = 0
    INET = 1
    INET6 = 2
    UNIX = 3


class TransportProtocol(enum.IntEnum):
    """v2's transport protocol nibble; v1 is always STREAM (TCP) or UNSPEC (UNKNOWN)."""

    UNSPEC = 0
    STREAM = 1
    DGRAM = 2


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY header said.

    Addresses are normalised text (``ipaddress``'s ``str``: IPv6 compressed, lower case) and
    ports integers, for INET and INET6; for UNIX they are the socket paths and the ports are
    None; for a LOCAL command or the UNSPEC family all four are None.
    """

    version: int
    command: ProxyCommand
    family: AddressFamily
    protocol: TransportProtocol
    source_address: str | None = None
    source_port: int | None = None
    destination_address: str | None = None
    destination_port: int | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    """v2's type-length-value fields as ``(type, raw value)``, in header order."""

    @property
    def addresses_known(self) -> bool:
        """True when the header names the real client over IP: PROXY with INET or INET6.

        Otherwise the transport keeps the socket's own addresses.
        """
        return self.command is ProxyCommand.PROXY and self.family in (
            AddressFamily.INET,
            AddressFamily.INET6,
        )

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        for tlv_type, value in self.tlvs:
            if tlv_type == kind:
                return value
        return None


class ProxyHeaderParser:
    """Reads one PROXY header (v1 or v2, told apart by the first octet) from the start of a
    connection's byte stream.

    Args:
        max_size: the largest v2 header accepted, fixed part included (default 536, range
            232..65551). A v1 header is always capped at its own 107 octets.
        versions: the versions accepted (``{1, 2}`` by default).
        verify_checksum: check a v2 ``PP2_TYPE_CRC32C`` TLV when one is present.

    Call `feed` with each piece of data received (``b""`` when the peer closed) until it
    returns a `ProxyInfo`; then `remainder` holds the bytes that followed the header, which
    belong to the next protocol (SMTP). Malformed input raises `ProxyProtocolError`, and the
    parser then refuses any further input.
    """

    __slots__ = ("_buffer", "_failed", "_info", "_versions", "max_size", "remainder", "verify")

    def __init__(
        self,
        max_size: int = V2_DEFAULT_MAX_SIZE,
        *,
        versions: Collection[int] = (1, 2),
        verify_checksum: bool = True,
    ) -> None:
        if not V2_MIN_MAX_SIZE <= max_size <= V2_MAX_SIZE:
            raise ValueError(f"max_size must be in {V2_MIN_MAX_SIZE}..{V2_MAX_SIZE}")
        wanted = frozenset(versions)
        if not wanted or not wanted <= {1, 2}:
            raise ValueError("versions must be a non-empty subset of {1, 2}")
        self.max_size = max_size
        self.verify = verify_checksum
        self._versions = wanted
        self._buffer = bytearray()
        self._info: ProxyInfo | None = None
        self._failed = False
        self.remainder = b""
        """The bytes received after the header (empty until the header is complete)."""

    @property
    def info(self) -> ProxyInfo | None:
        """The parsed header, once complete."""
        return self._info

    @property
    def buffered(self) -> int:
        """Octets of an incomplete header held so far (never more than the cap)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> ProxyInfo | None:
        """Add received bytes; return the header once complete, None while more is needed.

        Raises:
            ProxyProtocolError: the input cannot be a valid header (checked as early as the
                octets allow), or ``data`` is ``b""`` (peer closed) before the header ended.
            RuntimeError: `feed` called again after the header was complete.
        """
        if self._info is not None:
            raise RuntimeError("the PROXY header is complete: pass further data to SMTP")
        if self._failed:
            raise ProxyProtocolError("the PROXY header was already refused")
        try:
            return self._feed(data)
        except ProxyProtocolError:
            self._failed = True
            self._buffer.clear()
            raise

    # ---------------------------------------------------------------- internals

    def _feed(self, data: bytes) -> ProxyInfo | None:
        if not data:
            raise ProxyProtocolError("connection closed before the PROXY header was complete")
        buffer = self._buffer
        used = 0
        while True:
            # Take only what the header may still need; the rest of ``data`` stays untouched.
            start = len(buffer)
            taken = min(len(data) - used, self._cap() - start)
            buffer += data[used : used + taken]
            used += taken
            self._check_prefix()
            header_size = self._header_size(start)
            if header_size is not None:
                break
            if used == len(data):
                return None
            # The cap grew (v2's length is now known): take more of this chunk.
        if buffer[0] == 0x50:  # "P"
            info = _parse_v1(bytes(buffer[:header_size]))
        else:
            info = _parse_v2(bytes(buffer[:header_size]), self.verify)
        self.remainder = bytes(buffer[header_size:]) + data[used:]
        buffer.clear()
        self._info = info
        return info

    def _header_size(self, scanned: int) -> int | None:
        """The complete header's size, or None while it is incomplete; raises when the header
        is already known to be too long."""
        buffer = self._buffer
        if buffer[0] == 0x50:  # "P": v1, up to the first LF
            end = buffer.find(b"\n", max(scanned - 1, 0))
            if end < 0:
                if len(buffer) >= V1_MAX_SIZE:
                    raise ProxyProtocolError("v1 header longer than 107 octets")
                return None
            return end + 1
        if len(buffer) < V2_HEADER.size:
            return None
        _sig, ver_cmd, fam, length = V2_HEADER.unpack_from(buffer)
        _check_v2_fixed(ver_cmd, fam)
        size = V2_HEADER.size + int(length)
        if size > self.max_size:
            raise ProxyProtocolError(
                f"v2 header of {size} octets exceeds the limit of {self.max_size}"
            )
        return size if len(buffer) >= size else None

    def _cap(self) -> int:
        buffer = self._buffer
        if not buffer:
            return max(V1_MAX_SIZE, V2_HEADER.size)
        if buffer[0] == 0x50:
            return V1_MAX_SIZE
        if len(buffer) >= V2_HEADER.size:
            (length,) = struct.unpack_from("!H", buffer, 14)
            return min(V2_HEADER.size + int(length), self.max_size)
        return V2_HEADER.size

    def _check_prefix(self) -> None:
        """Refuse as soon as the first octets cannot start an accepted header."""
        buffer = self._buffer
        if buffer[0] == 0x50 and 1 in self._versions:
            signature = V1_PREFIX
        elif buffer[0] == 0x0D and 2 in self._versions:
            signature = V2_SIGNATURE
        else:
            raise ProxyProtocolError("not a PROXY protocol header")
        n = min(len(buffer), len(signature))
        if buffer[:n] != signature[:n]:
            raise ProxyProtocolError("not a PROXY protocol header")


# -------------------------------------------------------------------- version 1


def _parse_v1(line: bytes) -> ProxyInfo:
    """Parse a v1 line (at most 107 octets, up to and including its first LF)."""
    if not line.endswith(b"\r\n"):
        raise ProxyProtocolError("v1 header must end with CRLF")
    if line[6:14] in (b"UNKNOWN\r", b"UNKNOWN "):
        # Whatever follows UNKNOWN is to be ignored; the receiver uses the real addresses.
        return ProxyInfo(1, ProxyCommand.PROXY, AddressFamily.UNSPEC, TransportProtocol.UNSPEC)
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    parts = text.split(" ")
    proto = parts[1]
    if proto == "TCP4":
        family = AddressFamily.INET
    elif proto == "TCP6":
        family = AddressFamily.INET6
    else:
        raise ProxyProtocolError(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, not {proto!r}")
    if len(parts) != 6:
        raise ProxyProtocolError(f"v1 header needs: PROXY {proto} src dst sport dport")
    _, _, src, dst, sport, dport = parts
    return ProxyInfo(
        1,
        ProxyCommand.PROXY,
        family,
        TransportProtocol.STREAM,
        _v1_address(src, family),
        _v1_port(sport),
        _v1_address(dst, family),
        _v1_port(dport),
    )


def _v1_address(text: str, family: AddressFamily) -> str:
    try:
        if family is AddressFamily.INET:
            return str(ipaddress.IPv4Address(text))
        if "%" in text:  # ipaddress takes a scope id; the protocol has none
            raise ValueError(text)
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyProtocolError(f"bad {family.name} address in v1 header: {text!r}") from None


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= len(text) <= 5) or (
        len(text) > 1 and text[0] == "0"
    ):
        raise ProxyProtocolError(f"bad port in v1 header: {text!r}")
    port = int(text)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"port out of range in v1 header: {text!r}")
    return port


# -------------------------------------------------------------------- version 2

_V2_FAMILIES = {
    0x00: (AddressFamily.UNSPEC, TransportProtocol.UNSPEC),
    0x11: (AddressFamily.INET, TransportProtocol.STREAM),
    0x12: (AddressFamily.INET, TransportProtocol.DGRAM),
    0x21: (AddressFamily.INET6, TransportProtocol.STREAM),
    0x22: (AddressFamily.INET6, TransportProtocol.DGRAM),
    0x31: (AddressFamily.UNIX, TransportProtocol.STREAM),
    0x32: (AddressFamily.UNIX, TransportProtocol.DGRAM),
}


def _check_v2_fixed(ver_cmd: int, fam: int) -> None:
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"unsupported PROXY protocol version {ver_cmd >> 4}")
    if ver_cmd & 0x0F > 1:
        raise ProxyProtocolError(f"unknown v2 command {ver_cmd & 0x0F}")
    # LOCAL ignores the family ("discard the protocol block including the family").
    if ver_cmd & 0x0F == 1 and fam not in _V2_FAMILIES:
        raise ProxyProtocolError(f"unknown v2 address family/protocol 0x{fam:02x}")


def _parse_v2(header: bytes, verify: bool) -> ProxyInfo:
    _sig, ver_cmd, fam, length = V2_HEADER.unpack_from(header)
    _check_v2_fixed(ver_cmd, fam)
    if ver_cmd & 0x0F == 0:
        # LOCAL: "discard the protocol block including the family".
        return ProxyInfo(2, ProxyCommand.LOCAL, AddressFamily.UNSPEC, TransportProtocol.UNSPEC)
    family, protocol = _V2_FAMILIES[fam]
    if family is AddressFamily.UNSPEC:
        # The receiver ignores the address information, and thus the whole block.
        return ProxyInfo(2, ProxyCommand.PROXY, family, protocol)
    offset = V2_HEADER.size
    src: str
    dst: str
    sport: int | None
    dport: int | None
    if family is AddressFamily.INET:
        layout = _V4_ADDRESSES
    elif family is AddressFamily.INET6:
        layout = _V6_ADDRESSES
    else:
        layout = _UNIX_ADDRESSES
    if length < layout.size:
        raise ProxyProtocolError(
            f"v2 {family.name} header needs {layout.size} octets of addresses, has {length}"
        )
    if family is AddressFamily.UNIX:
        raw_src, raw_dst = _UNIX_ADDRESSES.unpack_from(header, offset)
        src, dst, sport, dport = _unix_path(raw_src), _unix_path(raw_dst), None, None
    else:
        raw_src, raw_dst, sport, dport = layout.unpack_from(header, offset)
        if family is AddressFamily.INET:
            src, dst = str(ipaddress.IPv4Address(raw_src)), str(ipaddress.IPv4Address(raw_dst))
        else:
            src, dst = str(ipaddress.IPv6Address(raw_src)), str(ipaddress.IPv6Address(raw_dst))
    tlvs = _parse_tlvs(header, offset + layout.size)
    if verify:
        _verify_crc32c(header, tlvs, offset + layout.size)
    return ProxyInfo(2, ProxyCommand.PROXY, family, protocol, src, sport, dst, dport, tlvs)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_tlvs(header: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    end = len(header)
    while offset < end:
        if end - offset < _TLV_HEAD.size:
            raise ProxyProtocolError("truncated TLV in v2 header")
        kind, size = _TLV_HEAD.unpack_from(header, offset)
        offset += _TLV_HEAD.size
        if end - offset < size:
            raise ProxyProtocolError(f"TLV 0x{kind:02x} of {size} octets overruns the v2 header")
        tlvs.append((kind, header[offset : offset + size]))
        offset += size
    return tuple(tlvs)


def _verify_crc32c(header: bytes, tlvs: tuple[tuple[int, bytes], ...], offset: int) -> None:
    """Check a PP2_TYPE_CRC32C TLV: the CRC-32C of the whole header with its value zeroed."""
    position = offset
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise ProxyProtocolError("PP2_TYPE_CRC32C TLV must hold 4 octets")
            start = position + _TLV_HEAD.size
            zeroed = header[:start] + b"\x00\x00\x00\x00" + header[start + 4 :]
            if crc32c(zeroed) != int.from_bytes(value, "big"):
                raise ProxyProtocolError("v2 header checksum (CRC32C) mismatch")
            return
        position += _TLV_HEAD.size + len(value)


@functools.cache
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the v2 PP2_TYPE_CRC32C TLV uses."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -------------------------------------------------------------------- trust

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=64)
def _networks(networks: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)


def trusted(peer_ip: str, networks: Sequence[str]) -> bool:
    """True if ``peer_ip`` (the socket's peer, i.e. the proxy) lies in one of ``networks``.

    ``networks`` are CIDRs or single addresses (``"10.0.0.0/8"``, ``"::1"``); host bits are
    allowed (``"10.1.2.3/8"`` means ``10.0.0.0/8``). An IPv4-mapped IPv6 peer
    (``::ffff:10.1.2.3``, as dual-stack sockets report) also matches the IPv4 networks. A peer
    that is not an IP address (a UNIX socket path, say) is not trusted.

    Raises:
        ValueError: a network is not valid: that is a configuration error.
    """
    if isinstance(networks, str):  # a lone "10.0.0.0/8" would be iterated by character
        networks = (networks,)
    parsed = _networks(tuple(networks))
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate.version == network.version and candidate in network
        for network in parsed
        for candidate in candidates
    )
