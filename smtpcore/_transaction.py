"""MAIL FROM and RCPT TO: from the argument text to an event, or to the reply refusing it."""

from __future__ import annotations

from collections.abc import Mapping

from ._syntax import (
    BAD_PARAMS,
    BODY_TYPES,
    decode_xtext,
    keyword_argument,
    parse_params,
    parse_path,
    plain_path_argument,
)
from .config import SmtpConfig
from .events import MailFrom, RcptTo
from .replies import Reply

_MAIL_SYNTAX = Reply(501, "Syntax: MAIL FROM:<address>", "5.5.2")
_RCPT_SYNTAX = Reply(501, "Syntax: RCPT TO:<address>", "5.5.2")
_BAD_SENDER = Reply(501, "Bad sender address syntax", "5.1.7")
_BAD_RECIPIENT = Reply(501, "Bad recipient address syntax", "5.1.3")
_NEEDS_SMTPUTF8 = Reply(553, "Non-ASCII address requires SMTPUTF8", "5.6.7")
_TOO_BIG = Reply(552, "Message size exceeds fixed maximum message size", "5.3.4")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_PLAIN_MAIL = plain_path_argument("FROM:")
_PLAIN_RCPT = plain_path_argument("TO:")


def _unsupported(key: str) -> Reply:
    return Reply(555, f"Unsupported parameter {key}", "5.5.4")


def _split(
    argument: str, keyword: str, *, utf8: bool, config: SmtpConfig, rcpt: bool
) -> tuple[str, Mapping[str, str | None]] | Reply:
    syntax, bad_path = (_RCPT_SYNTAX, _BAD_RECIPIENT) if rcpt else (_MAIL_SYNTAX, _BAD_SENDER)
    text = keyword_argument(argument, keyword)
    if text is None or not text:
        return syntax
    parsed = parse_path(text, utf8=True, relaxed=config.relaxed_addresses, rcpt=rcpt)
    if parsed is None:
        return bad_path
    address, rest = parsed
    if rest and not rest.startswith(" "):
        return bad_path
    params = parse_params(rest)
    if isinstance(params, Reply):
        return params
    if not address.isascii() and not (utf8 or "SMTPUTF8" in params):
        return _NEEDS_SMTPUTF8
    return address, params


def parse_mail(argument: str, config: SmtpConfig, *, auth_offered: bool) -> MailFrom | Reply:
    """Parse ``FROM:<path> [params]`` against what the configuration advertises."""
    plain = _PLAIN_MAIL.match(argument)
    if plain is not None:  # what the full parse below makes of such an argument
        return MailFrom(address=plain[1])
    split = _split(argument, "FROM:", utf8=False, config=config, rcpt=False)
    if isinstance(split, Reply):
        return split
    address, params = split
    size: int | None = None
    body = ret = envid = auth = None
    smtputf8 = False
    for key, value in params.items():
        if key == "SIZE" and config.size_extension:
            if value is None or not value.isdigit() or len(value) > 20:
                return BAD_PARAMS
            size = int(value)
            if config.max_message_size is not None and size > config.max_message_size:
                return _TOO_BIG
        elif key == "BODY" and (config.eightbitmime or config.binarymime):
            body = BODY_TYPES.get((value or "").upper())
            if body is None:
                return BAD_PARAMS
            if (body == "8BITMIME" and not config.eightbitmime) or (
                body == "BINARYMIME" and not config.binarymime
            ):
                return _unsupported(f"BODY={body}")
        elif key == "SMTPUTF8" and config.smtputf8:
            if value is not None:
                return BAD_PARAMS
            smtputf8 = True
        elif key == "RET" and config.dsn:
            ret = (value or "").upper()
            if ret not in ("FULL", "HDRS"):
                return BAD_PARAMS
        elif key == "ENVID" and config.dsn:
            envid = decode_xtext(value or "")
            if not envid or len(value or "") > 100:
                return BAD_PARAMS
        elif key == "AUTH" and auth_offered:
            auth = value if value == "<>" else decode_xtext(value or "")
            if not auth:
                return BAD_PARAMS
        else:
            return _unsupported(key)
    return MailFrom(
        address=address,
        params=params,
        size=size,
        body=body,
        smtputf8=smtputf8,
        ret=ret,  # type: ignore[arg-type]  # checked above
        envid=envid,
        auth=auth,
    )


def parse_rcpt(argument: str, config: SmtpConfig, *, smtputf8: bool) -> RcptTo | Reply:
    """Parse ``TO:<path> [params]``; ``smtputf8`` says whether MAIL asked for SMTPUTF8."""
    plain = _PLAIN_RCPT.match(argument)
    if plain is not None:  # what the full parse below makes of such an argument
        return RcptTo(address=plain[1])
    split = _split(argument, "TO:", utf8=smtputf8, config=config, rcpt=True)
    if isinstance(split, Reply):
        return split
    address, params = split
    if not address:  # only the reverse-path may be null (RFC 5321 §4.1.2)
        return _BAD_RECIPIENT
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for key, value in params.items():
        if key == "NOTIFY" and config.dsn:
            words = tuple((value or "").upper().split(","))
            if words != ("NEVER",) and not (words and set(words) <= _NOTIFY_WORDS):
                return BAD_PARAMS
            notify = words
        elif key == "ORCPT" and config.dsn:
            addr_type, semi, raw = (value or "").partition(";")
            decoded = decode_xtext(raw)
            if not semi or not addr_type or not decoded:
                return BAD_PARAMS
            orcpt = (addr_type.lower(), decoded)
        else:
            return _unsupported(key)
    return RcptTo(address=address, params=params, notify=notify, orcpt=orcpt)
