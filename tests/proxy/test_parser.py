"""`smtpcore.proxy`: PROXY protocol v1/v2 headers parsed back exactly, however the bytes are
cut, with the bytes after the header handed over intact; malformed input refused with
`ProxyProtocolError` (never another exception) and never more than a header's worth kept."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpcore.proxy import (
    PP2_TYPE_ALPN,
    PP2_TYPE_CRC32C,
    V1_MAX_SIZE,
    V2_DEFAULT_MAX_SIZE,
    V2_MAX_SIZE,
    AddressFamily,
    ProxyCommand,
    ProxyHeaderParser,
    ProxyInfo,
    ProxyProtocolError,
    TransportProtocol,
    crc32c,
    trusted,
)

from . import _build as B

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_all(
    pieces: Sequence[bytes], parser: ProxyHeaderParser | None = None
) -> tuple[ProxyInfo, bytes]:
    """Feed pieces until the header is complete; the header and every byte after it."""
    parser = parser or ProxyHeaderParser()
    limit = max(V1_MAX_SIZE, parser.max_size)
    for i, piece in enumerate(pieces):
        info = parser.feed(piece)
        assert parser.buffered <= limit
        if info is not None:
            assert parser.buffered == 0
            assert parser.info is info
            return info, parser.remainder + b"".join(pieces[i + 1 :])
        assert parser.remainder == b""
    raise AssertionError("header never completed")


def refused(pieces: Sequence[bytes], parser: ProxyHeaderParser | None = None) -> str:
    """Feed pieces (then EOF) and return the `ProxyProtocolError` message; fail otherwise."""
    parser = parser or ProxyHeaderParser()
    limit = max(V1_MAX_SIZE, parser.max_size)
    with pytest.raises(ProxyProtocolError) as caught:
        for piece in [*pieces, b""]:
            assert parser.feed(piece) is None
            assert parser.buffered <= limit
    assert parser.buffered == 0
    with pytest.raises(ProxyProtocolError):  # a refused parser stays refused
        parser.feed(b"PROXY UNKNOWN\r\n")
    return str(caught.value)


# ------------------------------------------------------------------ strategies

ports = st.integers(0, 0xFFFF)
cuts = st.lists(st.integers(0, 700), max_size=12)
remainders = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"EHLO client\r\n"))
tlv_types = st.integers(0, 255).filter(lambda t: t != PP2_TYPE_CRC32C)
tlv_lists = st.lists(st.tuples(tlv_types, st.binary(max_size=40)), max_size=6)


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, ProxyInfo]:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        rest = draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
        rest = (" " + rest)[: V1_MAX_SIZE - len("PROXY UNKNOWN\r\n")] if rest else ""
        info = ProxyInfo(1, ProxyCommand.PROXY, AddressFamily.UNSPEC, TransportProtocol.UNSPEC)
        return B.v1_unknown(rest), info
    version = 4 if kind == "TCP4" else 6
    src, dst = draw(st.ip_addresses(v=version)), draw(st.ip_addresses(v=version))
    sport, dport = draw(ports), draw(ports)
    # Senders may write IPv6 compressed or in full: both are valid RFC 4291 text.
    texts = [str(src), str(dst)]
    if version == 6 and draw(st.booleans()):
        texts = [src.exploded, dst.exploded]
    family = AddressFamily.INET if version == 4 else AddressFamily.INET6
    info = ProxyInfo(
        1, ProxyCommand.PROXY, family, TransportProtocol.STREAM, str(src), sport, str(dst), dport
    )
    return B.v1(kind, texts[0], texts[1], sport, dport), info


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, ProxyInfo]:
    command = draw(st.sampled_from([B.PROXY, B.PROXY, B.PROXY, B.LOCAL]))
    family = draw(st.sampled_from([B.INET, B.INET6, B.UNIX, B.UNSPEC]))
    protocol = 0 if family == B.UNSPEC else draw(st.sampled_from([B.STREAM, B.DGRAM]))
    tlvs = draw(tlv_lists)
    crc = draw(st.booleans())
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    if family in (B.INET, B.INET6):
        version = 4 if family == B.INET else 6
        a, b = draw(st.ip_addresses(v=version)), draw(st.ip_addresses(v=version))
        src, dst, sport, dport = str(a), str(b), draw(ports), draw(ports)
        build = B.inet if family == B.INET else B.inet6
        addresses = build(src, dst, sport, dport)
    elif family == B.UNIX:
        paths = st.binary(max_size=107).filter(lambda p: b"\x00" not in p)
        raw_src, raw_dst = draw(paths), draw(paths)
        addresses = B.unix(raw_src, raw_dst)
        src = raw_src.decode("utf-8", "surrogateescape")
        dst = raw_dst.decode("utf-8", "surrogateescape")
        sport = dport = None
    else:
        addresses, src, dst, sport, dport = b"", None, None, None, None
    header = B.v2(command, family, protocol, addresses, tlvs, crc=crc)
    if command == B.LOCAL or family == B.UNSPEC:
        cmd = ProxyCommand.LOCAL if command == B.LOCAL else ProxyCommand.PROXY
        return header, ProxyInfo(2, cmd, AddressFamily.UNSPEC, TransportProtocol.UNSPEC)
    all_tlvs = tuple(tlvs)
    if crc:
        all_tlvs += ((PP2_TYPE_CRC32C, header[-4:]),)
    info = ProxyInfo(
        2,
        ProxyCommand.PROXY,
        AddressFamily(family),
        TransportProtocol(protocol),
        src,
        sport,
        dst,
        dport,
        all_tlvs,
    )
    return header, info


# ------------------------------------------------------------------ round trips


@SETTINGS
@given(v1_headers(), remainders, cuts)
def test_v1_round_trip_any_chunking(
    built: tuple[bytes, ProxyInfo], rest: bytes, cut_at: list[int]
) -> None:
    header, expected = built
    assert len(header) <= V1_MAX_SIZE
    info, after = feed_all(B.chunks(header + rest, cut_at))
    assert info == expected
    assert after == rest


@SETTINGS
@given(v2_headers(), remainders, cuts)
def test_v2_round_trip_any_chunking(
    built: tuple[bytes, ProxyInfo], rest: bytes, cut_at: list[int]
) -> None:
    header, expected = built
    parser = ProxyHeaderParser(max_size=max(V2_DEFAULT_MAX_SIZE, len(header)))
    info, after = feed_all(B.chunks(header + rest, cut_at), parser)
    assert info == expected
    assert after == rest


@SETTINGS
@given(st.one_of(v1_headers(), v2_headers()), remainders)
def test_one_octet_at_a_time(built: tuple[bytes, ProxyInfo], rest: bytes) -> None:
    header, expected = built
    data = header + rest
    parser = ProxyHeaderParser(max_size=V2_MAX_SIZE)
    info, after = feed_all([data[i : i + 1] for i in range(len(data))], parser)
    assert info == expected
    assert after == rest


def test_remainder_of_a_large_first_read_is_kept_whole() -> None:
    rest = b"EHLO x\r\n" + b"A" * 1_000_000
    parser = ProxyHeaderParser()
    info = parser.feed(B.v1("TCP4", "10.0.0.1", "10.0.0.2", 1234, 25) + rest)
    assert info is not None and info.source_address == "10.0.0.1"
    assert parser.remainder == rest


def test_header_larger_than_a_first_read_cap() -> None:
    """A v2 header longer than 107 octets arriving in one piece with data after it."""
    header = B.v2(addresses=B.inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=[(0xE0, b"x" * 300)])
    info, after = feed_all([header + b"QUIT\r\n"])
    assert info.tlvs == ((0xE0, b"x" * 300),)
    assert after == b"QUIT\r\n"


# ------------------------------------------------------------------ the specification's cases


def test_spec_examples_v1() -> None:
    info, _ = feed_all([b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"])
    assert (info.source_address, info.source_port) == ("255.255.255.255", 65535)
    full = "ffff:" * 7 + "ffff"
    longest = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    info, _ = feed_all([longest])
    assert info.family is AddressFamily.INET6 and info.destination_address == full
    unknown_longest = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(unknown_longest) == V1_MAX_SIZE
    info, _ = feed_all([unknown_longest])
    assert info.family is AddressFamily.UNSPEC and not info.addresses_known
    info, _ = feed_all([b"PROXY UNKNOWN\r\n"])
    assert info.source_address is None


def test_spec_example_v2_bytes() -> None:
    """A TCP4 header written out octet by octet, with an ALPN and a UNIQUE_ID TLV."""
    data = bytes.fromhex(
        "0d0a0d0a000d0a515549540a"  # signature
        "21"  # version 2, PROXY
        "11"  # AF_INET, STREAM
        "0018"  # 24 octets follow
        "c0000201"  # 192.0.2.1
        "c6336402"  # 198.51.100.2
        "d431"  # 54321
        "0019"  # 25
        "010004736d7470"  # ALPN "smtp"
        "05000201ff"  # UNIQUE_ID 01 ff
    )
    info, after = feed_all([data])
    assert info == ProxyInfo(
        2,
        ProxyCommand.PROXY,
        AddressFamily.INET,
        TransportProtocol.STREAM,
        "192.0.2.1",
        54321,
        "198.51.100.2",
        25,
        ((PP2_TYPE_ALPN, b"smtp"), (0x05, b"\x01\xff")),
    )
    assert info.addresses_known and info.tlv(PP2_TYPE_ALPN) == b"smtp" and info.tlv(9) is None
    assert after == b""


def test_v2_local_discards_the_block() -> None:
    data = B.v2(B.LOCAL, B.INET, B.STREAM, B.inet("1.2.3.4", "5.6.7.8", 1, 2), [(1, b"h2")])
    info, _ = feed_all([data])
    assert info.command is ProxyCommand.LOCAL and not info.addresses_known
    assert info.source_address is None and info.tlvs == ()
    # "...discard the protocol block including the family which is ignored": any family.
    for family, protocol in [(4, 0), (0xF, 0xF), (B.INET, 0), (B.INET, 3)]:
        data = B.v2(B.LOCAL, family, protocol, b"whatever it is")
        assert feed_all([data])[0] == ProxyInfo(
            2, ProxyCommand.LOCAL, AddressFamily.UNSPEC, TransportProtocol.UNSPEC
        )
    # ...but not its size limit, nor a bad version or command.
    refused([B.v2(B.LOCAL, length=600)])
    refused([B.v2(B.LOCAL, version=1)])


def test_v2_ipv6_compressed_and_mapped() -> None:
    data = B.v2(
        family=B.INET6, addresses=B.inet6("2001:DB8:0:0:0:0:0:1", "::ffff:10.0.0.1", 25, 587)
    )
    info, _ = feed_all([data])
    assert info.source_address == "2001:db8::1"
    assert info.destination_address == "::ffff:a00:1"
    assert ipaddress.ip_address(info.destination_address).ipv4_mapped == ipaddress.IPv4Address(
        "10.0.0.1"
    )


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283 == B.crc32c(b"123456789")


def test_crc32c_checked_unless_disabled() -> None:
    good = B.v2(addresses=B.inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=[(1, b"smtp")], crc=True)
    assert feed_all([good])[0].tlv(PP2_TYPE_CRC32C) == good[-4:]
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert "checksum" in refused([bad])
    tampered = good[:20] + b"\x09" + good[21:]  # a source address octet changed
    assert "checksum" in refused([tampered])
    info, _ = feed_all([bad], ProxyHeaderParser(verify_checksum=False))
    assert info.source_address == "1.2.3.4"
    short = B.v2(addresses=B.inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=[(PP2_TYPE_CRC32C, b"abc")])
    assert "4 octets" in refused([short])


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"EHLO client.example\r\n", id="smtp-not-proxy"),
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", id="http"),
        pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", id="lower-case"),
        pytest.param(b"PROXY\r\n", id="v1-no-space"),
        pytest.param(b"PROXY \r\n", id="v1-empty"),
        pytest.param(b"PROXY TCP4\r\n", id="v1-no-fields"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", id="v1-missing-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", id="v1-extra-field"),
        pytest.param(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", id="v1-double-space"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", id="v1-trailing-space"),
        pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-bad-protocol"),
        pytest.param(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-udp"),
        pytest.param(b"PROXY UNKNOWNX\r\n", id="v1-unknown-glued"),
        pytest.param(b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", id="v1-octet-range"),
        pytest.param(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", id="v1-three-octets"),
        pytest.param(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", id="v1-leading-zero-octet"),
        pytest.param(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", id="v1-v6-in-tcp4"),
        pytest.param(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", id="v1-v4-in-tcp6"),
        pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", id="v1-scope-id"),
        pytest.param(b"PROXY TCP6 ::1::2 ::1 1 2\r\n", id="v1-bad-v6"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", id="v1-port-range"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", id="v1-negative-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", id="v1-plus-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", id="v1-leading-zero-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1a 2\r\n", id="v1-hex-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 0x19 2\r\n", id="v1-0x-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 000025 2\r\n", id="v1-six-digit-port"),
        pytest.param(
            "PROXY TCP4 1.2.3.4 5.6.7.8 \uff12\uff15 2\r\n".encode(), id="v1-fullwidth-port"
        ),
        pytest.param("PROXY TCP4 1.2.3.4 5.6.7.8 1 2é\r\n".encode(), id="v1-non-ascii"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", id="v1-bare-lf"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", id="v1-cr-cr-lf"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", id="v1-eof-before-crlf"),
        pytest.param(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", id="v1-108-octets"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 200, id="v1-no-end"),
        pytest.param(b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c", id="v2-bad-signature"),
        pytest.param(b"\r\n\r\n\r\n", id="v2-signature-diverges"),
        pytest.param(B.SIGNATURE[:7], id="v2-eof-in-signature"),
        pytest.param(B.v2(addresses=B.inet("1.2.3.4", "5.6.7.8", 1, 2))[:20], id="v2-eof"),
        pytest.param(B.v2(version=1, addresses=bytes(12)), id="v2-version-1"),
        pytest.param(B.v2(version=3, addresses=bytes(12)), id="v2-version-3"),
        pytest.param(B.v2(command=2, addresses=bytes(12)), id="v2-command-2"),
        pytest.param(B.v2(command=0xF, addresses=bytes(12)), id="v2-command-f"),
        pytest.param(B.v2(family=4, addresses=bytes(12)), id="v2-family-4"),
        pytest.param(B.v2(family=B.INET, protocol=3, addresses=bytes(12)), id="v2-proto-3"),
        pytest.param(B.v2(family=B.INET, protocol=0, addresses=bytes(12)), id="v2-inet-unspec"),
        pytest.param(B.v2(family=B.UNSPEC, protocol=1), id="v2-unspec-stream"),
        pytest.param(B.v2(family=B.INET, addresses=bytes(11)), id="v2-inet-11"),
        pytest.param(B.v2(family=B.INET, addresses=b""), id="v2-inet-empty"),
        pytest.param(B.v2(family=B.INET6, addresses=bytes(35)), id="v2-inet6-35"),
        pytest.param(B.v2(family=B.INET6, addresses=bytes(12)), id="v2-inet6-as-inet"),
        pytest.param(B.v2(family=B.UNIX, addresses=bytes(215)), id="v2-unix-215"),
        pytest.param(B.v2(addresses=bytes(12) + b"\x01\x00"), id="v2-tlv-head-cut"),
        pytest.param(B.v2(addresses=bytes(12) + b"\x01\x00\x05ab"), id="v2-tlv-overrun"),
        pytest.param(B.v2(addresses=bytes(12) + b"\x01"), id="v2-tlv-one-octet"),
        pytest.param(B.v2(addresses=bytes(12), length=600), id="v2-longer-than-cap"),
        pytest.param(B.v2(addresses=bytes(12), length=0xFFFF), id="v2-max-length"),
        pytest.param(b"\x00" * 64, id="zeros"),
        pytest.param(b"\xff" * 64, id="ones"),
    ],
)
def test_malformed_headers_are_refused(data: bytes) -> None:
    refused([data])
    refused([data[i : i + 1] for i in range(len(data))])


def test_refused_as_early_as_possible() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError):
        parser.feed(b"E")  # no header starts with E
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 ") is None
    with pytest.raises(ProxyProtocolError):
        parser.feed(b"1.2.3.4 5.6.7.8 1 2\n")
    parser = ProxyHeaderParser()
    # The length field says 65535 octets: refused right after the 16 fixed octets.
    with pytest.raises(ProxyProtocolError, match="exceeds"):
        parser.feed(B.v2(addresses=b"", length=0xFFFF)[:16])


def test_eof_before_anything() -> None:
    assert "closed" in refused([])


def test_feeding_after_completion_is_a_usage_error() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_versions_can_be_restricted() -> None:
    v1_only = ProxyHeaderParser(versions={1})
    refused([B.v2(addresses=B.inet("1.2.3.4", "5.6.7.8", 1, 2))], v1_only)
    v2_only = ProxyHeaderParser(versions=[2])
    refused([b"PROXY UNKNOWN\r\n"], v2_only)
    assert ProxyHeaderParser(versions={1}).feed(b"PROXY UNKNOWN\r\n") is not None


@pytest.mark.parametrize("bad", [0, 231, V2_MAX_SIZE + 1])
def test_max_size_range(bad: int) -> None:
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_size=bad)
    with pytest.raises(ValueError):
        ProxyHeaderParser(versions=())
    with pytest.raises(ValueError):
        ProxyHeaderParser(versions={3})


def test_max_size_is_honoured() -> None:
    header = B.v2(addresses=B.inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=[(0xE0, b"x" * 300)])
    assert len(header) == 16 + 12 + 3 + 300
    refused([header], ProxyHeaderParser(max_size=330))
    assert feed_all([header], ProxyHeaderParser(max_size=331))[0].tlvs[0][1] == b"x" * 300


# ------------------------------------------------------------------ fuzzing: nothing else raises


def _feed_fuzz(pieces: Sequence[bytes], max_size: int = V2_DEFAULT_MAX_SIZE) -> None:
    """Whatever comes in: a header, a need for more, or ProxyProtocolError; bounded memory."""
    parser = ProxyHeaderParser(max_size=max_size)
    limit = max(V1_MAX_SIZE, max_size)
    try:
        for piece in [*pieces, b""]:
            if parser.feed(piece) is not None:
                return
            assert parser.buffered <= limit
    except ProxyProtocolError:
        assert parser.buffered == 0


prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", B.SIGNATURE])


@settings(max_examples=500, deadline=None)
@given(prefixes, st.binary(max_size=700), cuts)
@example(B.SIGNATURE, b"\x21\x11\xff\xff", [])
@example(b"PROXY ", b"x" * 700, [1, 2, 3])
def test_random_bytes_never_raise_anything_else(
    prefix: bytes, tail: bytes, cut_at: list[int]
) -> None:
    _feed_fuzz(B.chunks(prefix + tail, cut_at))


@settings(max_examples=500, deadline=None)
@given(st.one_of(v1_headers(), v2_headers()), st.data())
def test_mutated_headers_never_raise_anything_else(
    built: tuple[bytes, ProxyInfo], data: st.DataObject
) -> None:
    header = bytearray(built[0])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(header) - 1, 0)))
        if action == "flip" and header:
            header[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del header[at : at + data.draw(st.integers(1, 8))]
        else:
            header[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    _feed_fuzz(B.chunks(bytes(header), data.draw(cuts)))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([b"PROXY UNKNOWN", B.v2(length=0xFFFF)[:15]]), st.integers(1, 5000))
def test_memory_stays_bounded_on_endless_input(prefix: bytes, chunk_size: int) -> None:
    parser = ProxyHeaderParser()
    try:
        parser.feed(prefix)
        for _ in range(70_000 // chunk_size + 2):  # more than any header may be
            assert parser.feed(b"A" * chunk_size) is None
            assert parser.buffered <= V1_MAX_SIZE
    except ProxyProtocolError:
        assert parser.buffered == 0
    else:
        raise AssertionError("endless input accepted")


# ------------------------------------------------------------------ trusted()


@pytest.mark.parametrize(
    ("peer", "networks", "expected"),
    [
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.1.2.3"], True),
        ("10.1.2.4", ["10.1.2.3/32"], False),
        ("10.1.2.3", ["10.9.9.9/8"], True),  # host bits allowed
        ("11.0.0.1", ["10.0.0.0/8"], False),
        ("::ffff:10.1.2.3", ["10.0.0.0/8"], True),  # dual-stack socket peer
        ("::1", ["127.0.0.0/8"], False),
        ("::1", ["::1"], True),
        ("2001:db8::5", ["2001:db8::/32", "10.0.0.0/8"], True),
        ("2001:db9::5", ["2001:db8::/32"], False),
        ("127.0.0.1", [], False),
        ("/run/haproxy.sock", ["0.0.0.0/0", "::/0"], False),
        ("", ["0.0.0.0/0"], False),
        ("10.0.0.1", " 10.0.0.0/8", True),  # a lone string is one network
    ],
)
def test_trusted(peer: str, networks: Sequence[str], expected: bool) -> None:
    assert trusted(peer, networks) is expected


def test_trusted_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        trusted("10.0.0.1", ["10.0.0.0/33"])
    with pytest.raises(ValueError):
        trusted("10.0.0.1", ["not-a-network"])


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), st.integers(0, 128))
def test_trusted_matches_ipaddress(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int
) -> None:
    network = ipaddress.ip_network(f"{address}/{min(bits, address.max_prefixlen)}", strict=False)
    assert trusted(str(address), [str(network)])
    after = int(network.broadcast_address) + 1
    if after < 2**address.max_prefixlen:
        assert not trusted(str(type(address)(after)), [str(network)])
