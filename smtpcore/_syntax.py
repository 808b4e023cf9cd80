"""RFC 5321 grammar: mail paths, ESMTP parameters (RFC 1870, 3030, 3461, 4954, 6152, 6531).

Functions here are pure string work; they return the parsed value or the `Reply` to send.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from .replies import Reply

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = r"\u0080-\U0010ffff"
_LABEL = r"[A-Za-z0-9{u}](?:[A-Za-z0-9\-{u}]*[A-Za-z0-9{u}])?"


def _dot_string(u: str) -> str:
    atom = f"[{_ATEXT}{u}]+"
    return rf"{atom}(?:\.{atom})*"


def _domain(u: str) -> str:
    label = _LABEL.format(u=u)
    return rf"{label}(?:\.{label})*"


def _path_regex(utf8: bool) -> re.Pattern[str]:
    u = _UTF8 if utf8 else ""
    dot_string = _dot_string(u)
    quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{u}]|\\[\x20-\x7e])*"'
    domain = _domain(u)
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    route = rf"@{domain}(?:,@{domain})*:"
    return re.compile(
        rf"<(?:{route})?(?P<mailbox>(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal}))>"
    )


_PATH = {False: _path_regex(False), True: _path_regex(True)}


def plain_path_argument(keyword: str) -> re.Pattern[str]:
    """``KEYWORD:<local@domain>`` (spaces allowed before ``<``) and nothing more, all ASCII,
    no route, quotes or literal: the common case, whose full parse is that mailbox alone."""
    return re.compile(rf"(?i:{keyword}) *<({_dot_string('')}@{_domain('')})>\Z")


_POSTMASTER = re.compile(r"<postmaster>", re.IGNORECASE)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?:[\x21-\x5a\x5e-\x7e]+\Z")

BAD_PARAMS = Reply(501, "Syntax error in parameters", "5.5.4")
UNKNOWN_PARAM = "Unsupported parameter {}"


def _literal_ok(literal: str) -> bool:
    inner = literal[1:-1]
    if inner[:5].upper() == "IPV6:":
        if "%" in inner:  # a zone id is not in RFC 5321's IPv6-addr grammar
            return False
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if ":" in inner:
        return _GENERAL_LITERAL.match(inner) is not None
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def parse_path(text: str, *, utf8: bool, relaxed: bool, rcpt: bool) -> tuple[str, str] | None:
    """Split ``<path> [params]`` into the mailbox (source route dropped) and the rest.

    Returns ``("", rest)`` for ``<>`` and None when no valid path starts the text. ``rcpt``
    allows the bare ``<Postmaster>`` of RFC 5321 §4.1.1.3.
    """
    if text.startswith("<>"):
        return "", text[2:]
    if rcpt:
        m = _POSTMASTER.match(text)
        if m:
            return "Postmaster", text[m.end() :]
    m = _PATH[utf8].match(text)
    if m is None:
        if relaxed and text and not text.startswith("<"):
            word, sep, rest = text.partition(" ")
            parsed = parse_path(f"<{word}>", utf8=utf8, relaxed=False, rcpt=rcpt)
            if parsed is not None:
                return parsed[0], sep + rest
        return None
    if m.group("domain").startswith("[") and not _literal_ok(m.group("domain")):
        return None
    return m.group("mailbox"), text[m.end() :]


def parse_params(text: str) -> Mapping[str, str | None] | Reply:
    """Parse ``KEY[=VALUE]`` words (RFC 5321 §4.1.2 esmtp-param) into an upper-case mapping."""
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            return BAD_PARAMS
        key = key.upper()
        if key in params:
            return BAD_PARAMS.with_text(f"Duplicate parameter {key}")
        params[key] = value if eq else None
    return MappingProxyType(params)


def decode_xtext(value: str) -> str | None:
    """Decode RFC 3461 xtext (``+XX`` escapes); None if malformed.

    The decoded text must be printable US-ASCII (RFC 3461 §4): no escaped CR, LF or NUL can
    reach a DSN's headers.
    """
    if not _XTEXT.match(value):
        return None
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    return decoded if _PRINTABLE.match(decoded) else None


def keyword_argument(argument: str, keyword: str) -> str | None:
    """Strip ``FROM:``/``TO:`` (any case, spaces allowed after the colon); None if absent."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    return argument[len(keyword) :].lstrip(" ")


BodyType = Literal["7BIT", "8BITMIME", "BINARYMIME"]
BODY_TYPES: Mapping[str, BodyType] = {
    "7BIT": "7BIT",
    "8BITMIME": "8BITMIME",
    "BINARYMIME": "BINARYMIME",
}
