"""MAIL FROM and RCPT TO: paths and ESMTP parameters (RFC 5321 §4.1.1.2-3, §4.1.2)."""

from __future__ import annotations

from typing import Any

import pytest

from smtpcore import (
    MailFrom,
    ProtocolViolation,
    RcptTo,
    Reply,
    SmtpConfig,
    SmtpConnection,
    State,
)
from tests.core._support import MAIL, config, connect, of_type, rejecting, send

SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
MAIL_SYNTAX = "501 5.5.2 Syntax: MAIL FROM:<address>"
RCPT_SYNTAX = "501 5.5.2 Syntax: RCPT TO:<address>"
BAD_PARAMS = "501 5.5.4 Syntax error in parameters"
NEEDS_UTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
AUTH_CFG: dict[str, Any] = {"auth_mode": "optional", "allow_insecure_auth": True}


def unsupported(key: str) -> str:
    return f"555 5.5.4 Unsupported parameter {key}"


def mail(argument: str, cfg: SmtpConfig | None = None) -> tuple[MailFrom | None, list[str]]:
    """Send ``MAIL <argument>`` after EHLO; the accepted event (if any) and the reply."""
    conn = connect(cfg)
    events, lines = send(conn, f"MAIL {argument}\r\n".encode())
    found = of_type(events, MailFrom)
    if found:
        assert conn.envelope.mail_from == found[0]
        assert conn.state is State.MAIL
    else:
        assert [type(e) for e in events] == [ProtocolViolation]
        assert conn.state is State.READY
    return (found[0] if found else None), lines


def rcpt(
    argument: str, cfg: SmtpConfig | None = None, *, mail_from: bytes = MAIL
) -> tuple[RcptTo | None, list[str]]:
    """Send ``RCPT <argument>`` after EHLO and ``mail_from``."""
    conn = connect(cfg)
    _, lines = send(conn, mail_from)
    assert lines == [SENDER_OK]
    events, lines = send(conn, f"RCPT {argument}\r\n".encode())
    found = of_type(events, RcptTo)
    if found:
        assert conn.envelope.rcpt_tos == (found[0],)
    else:
        assert conn.envelope.rcpt_tos == ()
    return (found[0] if found else None), lines


# ---------------------------------------------------------------- reverse paths


@pytest.mark.parametrize(
    ("path", "address"),
    [
        ("<user@example.org>", "user@example.org"),
        ("<First.Last+tag@Sub.Example.ORG>", "First.Last+tag@Sub.Example.ORG"),
        ("<!#$%&'*+/=?^_`{|}~-@example.org>", "!#$%&'*+/=?^_`{|}~-@example.org"),
        ('<"john doe"@example.org>', '"john doe"@example.org'),
        ('<"a\\"b\\\\c"@example.org>', '"a\\"b\\\\c"@example.org'),
        ('<"@"@example.org>', '"@"@example.org'),
        ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]"),
        ("<user@[IPv6:::ffff:192.0.2.1]>", "user@[IPv6:::ffff:192.0.2.1]"),
        ("<user@[x-tag:some-literal]>", "user@[x-tag:some-literal]"),
        ("<@relay.example:user@example.org>", "user@example.org"),
        ("<@a.example,@b.example:user@example.org>", "user@example.org"),
        ("<>", ""),
        ("<user@xn--bcher-kva.example>", "user@xn--bcher-kva.example"),
    ],
)
def test_valid_reverse_paths(path: str, address: str) -> None:
    """Quoted local parts, address literals, source routes (dropped, RFC 5321 §4.1.1.3)."""
    event, lines = mail(f"FROM:{path}")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.address == address


def test_space_after_colon_is_tolerated() -> None:
    event, lines = mail("FROM: <user@example.org>")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.address == "user@example.org"


def test_keyword_is_case_insensitive() -> None:
    conn = connect()
    events, lines = send(conn, b"mail from:<user@example.org>\r\n")
    assert lines == [SENDER_OK]
    assert of_type(events, MailFrom)[0].address == "user@example.org"


@pytest.mark.parametrize(
    "path",
    [
        "<user@[999.0.0.1]>",
        "<user@[192.0.2.1.5]>",
        "<user@[IPv6:zz::1]>",
        "<user@[IPv6:1::2::3]>",
        "<user@[IPv6:fe80::1%eth0]>",
        "<user@[not a literal]>",
        "<user>",
        "<@example.org>",
        "<user@>",
        "<user@-bad.example>",
        "<user@example..org>",
        "<.user@example.org>",
        "<user.@example.org>",
        "<a b@example.org>",
        '<"unterminated@example.org>',
        "<user@example.org",
        "user@example.org",
        "<user@example.org>garbage",
        "<Postmaster>",
        "<<user@example.org>>",
    ],
)
def test_invalid_reverse_paths_are_501_5_1_7(path: str) -> None:
    event, lines = mail(f"FROM:{path}")
    assert event is None
    assert lines == [BAD_SENDER]


@pytest.mark.parametrize("argument", ["", "FROM:", "FROM: ", "<user@example.org>", "TO:<a@b.c>"])
def test_missing_from_keyword_or_path_is_501_5_5_2(argument: str) -> None:
    event, lines = mail(argument)
    assert event is None
    assert lines == [MAIL_SYNTAX]


# ---------------------------------------------------------------- forward paths


@pytest.mark.parametrize(
    ("path", "address"),
    [
        ("<rcpt@example.net>", "rcpt@example.net"),
        ('<"x y"@example.net>', '"x y"@example.net'),
        ("<rcpt@[198.51.100.7]>", "rcpt@[198.51.100.7]"),
        ("<rcpt@[IPv6:2001:db8::7]>", "rcpt@[IPv6:2001:db8::7]"),
        ("<@hop1.example,@hop2.example:rcpt@example.net>", "rcpt@example.net"),
    ],
)
def test_valid_forward_paths(path: str, address: str) -> None:
    event, lines = rcpt(f"TO:{path}")
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.address == address


@pytest.mark.parametrize("path", ["<Postmaster>", "<postmaster>", "<POSTMASTER>"])
def test_bare_postmaster_is_a_valid_recipient(path: str) -> None:
    """RFC 5321 §4.1.1.3: ``<Postmaster>`` (any case) without a domain is accepted."""
    event, lines = rcpt(f"TO:{path}")
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.address.lower() == "postmaster"


def test_postmaster_with_domain_is_an_ordinary_address() -> None:
    event, lines = rcpt("TO:<Postmaster@example.net>")
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.address == "Postmaster@example.net"


def test_null_forward_path_is_refused() -> None:
    """RFC 5321 §4.1.1.3/§4.1.2: ``Forward-path = Path``; only MAIL may use ``<>``."""
    event, lines = rcpt("TO:<>")
    assert event is None
    assert lines == [BAD_RECIPIENT]


@pytest.mark.parametrize(
    "path", ["<rcpt>", "<rcpt@[300.1.1.1]>", "rcpt@example.net", "<rcpt@example.net>x"]
)
def test_invalid_forward_paths_are_501_5_1_3(path: str) -> None:
    event, lines = rcpt(f"TO:{path}")
    assert event is None
    assert lines == [BAD_RECIPIENT]


@pytest.mark.parametrize("argument", ["", "TO:", "<rcpt@example.net>", "FROM:<rcpt@example.net>"])
def test_missing_to_keyword_or_path_is_501_5_5_2(argument: str) -> None:
    event, lines = rcpt(argument)
    assert event is None
    assert lines == [RCPT_SYNTAX]


# ---------------------------------------------------------------- SMTPUTF8 (RFC 6531)


@pytest.mark.parametrize(
    "path", ["<jörg@example.org>", "<user@bücher.example>", "<用户@例子.广告>"]
)
def test_utf8_sender_needs_smtputf8(path: str) -> None:
    """RFC 6531 §3.5: a non-ASCII address without SMTPUTF8 gets 553 5.6.7."""
    event, lines = mail(f"FROM:{path}")
    assert event is None
    assert lines == [NEEDS_UTF8]


@pytest.mark.parametrize("path", ["<jörg@example.org>", "<用户@例子.广告>"])
def test_utf8_sender_with_smtputf8(path: str) -> None:
    event, lines = mail(f"FROM:{path} SMTPUTF8")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.address == path[1:-1]
    assert event.smtputf8 is True


def test_utf8_recipient_after_smtputf8_mail() -> None:
    event, lines = rcpt("TO:<用户@例子.广告>", mail_from=b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.address == "用户@例子.广告"


def test_utf8_recipient_without_smtputf8_mail() -> None:
    event, lines = rcpt("TO:<jörg@example.net>")
    assert event is None
    assert lines == [NEEDS_UTF8]


def test_smtputf8_disabled_refuses_the_parameter() -> None:
    event, lines = mail("FROM:<jörg@example.org> SMTPUTF8", config(smtputf8=False))
    assert event is None
    assert lines == [unsupported("SMTPUTF8")]


def test_smtputf8_disabled_refuses_utf8_addresses() -> None:
    event, lines = mail("FROM:<jörg@example.org>", config(smtputf8=False))
    assert event is None
    assert lines == [NEEDS_UTF8]


def test_smtputf8_with_a_value_is_malformed() -> None:
    event, lines = mail("FROM:<a@example.org> SMTPUTF8=yes")
    assert event is None
    assert lines == [BAD_PARAMS]


# ---------------------------------------------------------------- relaxed addresses


@pytest.mark.parametrize(
    ("argument", "address", "size"),
    [
        ("FROM:user@example.org", "user@example.org", None),
        ("FROM:user@example.org SIZE=100", "user@example.org", 100),
        ("FROM:<user@example.org>", "user@example.org", None),
    ],
)
def test_relaxed_mode_accepts_paths_without_brackets(
    argument: str, address: str, size: int | None
) -> None:
    event, lines = mail(argument, config(relaxed_addresses=True))
    assert lines == [SENDER_OK]
    assert event is not None
    assert (event.address, event.size) == (address, size)


def test_relaxed_mode_recipient_without_brackets() -> None:
    event, lines = rcpt("TO:rcpt@example.net", config(relaxed_addresses=True))
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.address == "rcpt@example.net"


def test_relaxed_mode_still_checks_the_address() -> None:
    event, lines = mail("FROM:not-an-address", config(relaxed_addresses=True))
    assert event is None
    assert lines == [BAD_SENDER]


def test_strict_mode_wants_brackets() -> None:
    assert mail("FROM:user@example.org")[1] == [BAD_SENDER]
    assert rcpt("TO:rcpt@example.net")[1] == [BAD_RECIPIENT]


# ---------------------------------------------------------------- MAIL parameters


def test_size_parameter() -> None:
    """RFC 1870 §6: SIZE declares the message size."""
    event, lines = mail("FROM:<a@example.org> SIZE=1000")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.size == 1000
    assert event.params == {"SIZE": "1000"}


def test_size_at_the_limit_is_accepted() -> None:
    event, lines = mail("FROM:<a@example.org> SIZE=1000", config(max_message_size=1000))
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.size == 1000


def test_size_over_the_limit_is_552_5_3_4() -> None:
    """RFC 1870 §6.1: a declared size over the fixed maximum gets 552 (RFC 3463 5.3.4)."""
    event, lines = mail("FROM:<a@example.org> SIZE=1001", config(max_message_size=1000))
    assert event is None
    assert lines == [TOO_BIG]


def test_size_without_limit_accepts_anything() -> None:
    event, lines = mail("FROM:<a@example.org> SIZE=999999999999", config(max_message_size=None))
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.size == 999999999999


@pytest.mark.parametrize("param", ["SIZE", "SIZE=abc", "SIZE=-1", "SIZE=1.5", "SIZE=" + "9" * 21])
def test_malformed_size_is_501_5_5_4(param: str) -> None:
    event, lines = mail(f"FROM:<a@example.org> {param}")
    assert event is None
    assert lines == [BAD_PARAMS]


@pytest.mark.parametrize(
    ("value", "body"),
    [
        ("7BIT", "7BIT"),
        ("8BITMIME", "8BITMIME"),
        ("8bitmime", "8BITMIME"),
        ("BINARYMIME", "BINARYMIME"),
    ],
)
def test_body_parameter(value: str, body: str) -> None:
    """RFC 6152 §2 (8BITMIME) and RFC 3030 §3 (BINARYMIME)."""
    event, lines = mail(f"FROM:<a@example.org> BODY={value}")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.body == body


@pytest.mark.parametrize("param", ["BODY", "BODY=QUOTED-PRINTABLE", "BODY=8BIT"])
def test_malformed_body_is_501_5_5_4(param: str) -> None:
    assert mail(f"FROM:<a@example.org> {param}")[1] == [BAD_PARAMS]


def test_body_8bitmime_when_8bitmime_is_off() -> None:
    cfg = config(eightbitmime=False, smtputf8=False)
    assert mail("FROM:<a@example.org> BODY=8BITMIME", cfg)[1] == [unsupported("BODY=8BITMIME")]


def test_body_binarymime_without_chunking() -> None:
    """RFC 3030 §3: BINARYMIME is not offered without CHUNKING, so BODY=BINARYMIME fails."""
    cfg = config(chunking=False)
    event, lines = mail("FROM:<a@example.org> BODY=BINARYMIME", cfg)
    assert event is None
    assert lines[0].startswith("555 5.5.4 Unsupported parameter BODY")


def test_body_when_no_body_extension_is_on() -> None:
    cfg = config(eightbitmime=False, smtputf8=False, chunking=False)
    assert mail("FROM:<a@example.org> BODY=7BIT", cfg)[1] == [unsupported("BODY")]


@pytest.mark.parametrize(("value", "ret"), [("FULL", "FULL"), ("hdrs", "HDRS")])
def test_ret_parameter(value: str, ret: str) -> None:
    """RFC 3461 §4.3."""
    event, lines = mail(f"FROM:<a@example.org> RET={value}")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.ret == ret


@pytest.mark.parametrize("param", ["RET", "RET=ALL", "RET="])
def test_malformed_ret_is_501_5_5_4(param: str) -> None:
    assert mail(f"FROM:<a@example.org> {param}")[1] == [BAD_PARAMS]


@pytest.mark.parametrize(
    ("value", "envid"),
    [
        ("QQ314159", "QQ314159"),
        ("a+2Bb+3Dc", "a+b=c"),
        ("id+20with+20spaces", "id with spaces"),
        ("x" * 100, "x" * 100),
    ],
)
def test_envid_is_xtext_decoded(value: str, envid: str) -> None:
    """RFC 3461 §4.4: ENVID is xtext (``+XX`` escapes)."""
    event, lines = mail(f"FROM:<a@example.org> ENVID={value}")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.envid == envid
    assert event.params["ENVID"] == value


@pytest.mark.parametrize("value", ["a+2b", "a+", "a+G1", "a+2"])
def test_malformed_envid_xtext_is_501_5_5_4(value: str) -> None:
    """RFC 3461 §4: hexchar is ``+`` and two upper-case hexadecimal digits."""
    assert mail(f"FROM:<a@example.org> ENVID={value}")[1] == [BAD_PARAMS]


@pytest.mark.parametrize("value", ["abc+0D+0AX-Injected:+20yes", "abc+00def", "abc+7F"])
def test_envid_must_decode_to_printable_ascii(value: str) -> None:
    """RFC 3461 §4.4: ENVID before xtext encoding MUST be printable US-ASCII.

    A decoded CR LF would otherwise reach the DSN's Original-Envelope-Id field.
    """
    event, lines = mail(f"FROM:<a@example.org> ENVID={value}")
    assert event is None
    assert lines == [BAD_PARAMS]


@pytest.mark.parametrize(
    ("value", "auth"), [("<>", "<>"), ("user+40example.org", "user@example.org")]
)
def test_auth_parameter_when_auth_is_offered(value: str, auth: str) -> None:
    """RFC 4954 §5: AUTH=<> or an xtext identity."""
    event, lines = mail(f"FROM:<a@example.org> AUTH={value}", config(**AUTH_CFG))
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.auth == auth


def test_auth_parameter_when_auth_is_not_offered() -> None:
    assert mail("FROM:<a@example.org> AUTH=<>")[1] == [unsupported("AUTH")]


def test_auth_parameter_on_cleartext_without_insecure_auth() -> None:
    cfg = config(auth_mode="optional")
    assert mail("FROM:<a@example.org> AUTH=<>", cfg)[1] == [unsupported("AUTH")]


def test_smtputf8_parameter() -> None:
    event, lines = mail("FROM:<a@example.org> SMTPUTF8")
    assert lines == [SENDER_OK]
    assert event is not None
    assert event.smtputf8 is True
    assert event.params == {"SMTPUTF8": None}


def test_all_parameters_together() -> None:
    argument = "FROM:<a@example.org> size=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id1 AUTH=<>"
    event, lines = mail(argument, config(**AUTH_CFG))
    assert lines == [SENDER_OK]
    assert event is not None
    assert (event.size, event.body, event.smtputf8, event.ret, event.envid, event.auth) == (
        100,
        "8BITMIME",
        True,
        "HDRS",
        "id1",
        "<>",
    )
    assert set(event.params) == {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"}


@pytest.mark.parametrize("param", ["FOO=BAR", "XYZ", "X-CUSTOM=1"])
def test_unknown_mail_parameter_is_555_5_5_4(param: str) -> None:
    """RFC 5321 §4.1.1.11: 555 for parameters not recognized."""
    key = param.split("=")[0].upper()
    assert mail(f"FROM:<a@example.org> {param}")[1] == [unsupported(key)]


@pytest.mark.parametrize("param", ["=VALUE", "SIZE=", "BAD_KEY=1", "-KEY=1", "KEY=a=b"])
def test_malformed_parameter_is_501_5_5_4(param: str) -> None:
    assert mail(f"FROM:<a@example.org> {param}")[1] == [BAD_PARAMS]


def test_duplicate_parameter_is_501_5_5_4() -> None:
    lines = mail("FROM:<a@example.org> SIZE=1 size=2")[1]
    assert lines == ["501 5.5.4 Duplicate parameter SIZE"]


@pytest.mark.parametrize(
    ("setting", "param"),
    [
        ({"size_extension": False}, "SIZE=10"),
        ({"dsn": False}, "RET=FULL"),
        ({"dsn": False}, "ENVID=x"),
        ({"smtputf8": False}, "SMTPUTF8"),
    ],
)
def test_disabled_extension_parameters_are_555(setting: dict[str, bool], param: str) -> None:
    key = param.split("=")[0]
    assert mail(f"FROM:<a@example.org> {param}", config(**setting))[1] == [unsupported(key)]


# ---------------------------------------------------------------- RCPT parameters


@pytest.mark.parametrize(
    ("value", "notify"),
    [
        ("SUCCESS,FAILURE", ("SUCCESS", "FAILURE")),
        ("delay", ("DELAY",)),
        ("NEVER", ("NEVER",)),
        ("SUCCESS,FAILURE,DELAY", ("SUCCESS", "FAILURE", "DELAY")),
    ],
)
def test_notify_parameter(value: str, notify: tuple[str, ...]) -> None:
    """RFC 3461 §4.1."""
    event, lines = rcpt(f"TO:<r@example.net> NOTIFY={value}")
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.notify == notify


@pytest.mark.parametrize(
    "param", ["NOTIFY", "NOTIFY=", "NOTIFY=SOMETIMES", "NOTIFY=NEVER,DELAY", "NOTIFY=SUCCESS,"]
)
def test_malformed_notify_is_501_5_5_4(param: str) -> None:
    """RFC 3461 §4.1: NEVER must appear alone; only SUCCESS, FAILURE, DELAY otherwise."""
    assert rcpt(f"TO:<r@example.net> {param}")[1] == [BAD_PARAMS]


@pytest.mark.parametrize(
    ("value", "orcpt"),
    [
        ("rfc822;user@example.org", ("rfc822", "user@example.org")),
        ("RFC822;a+2Bb@example.org", ("rfc822", "a+b@example.org")),
    ],
)
def test_orcpt_parameter(value: str, orcpt: tuple[str, str]) -> None:
    """RFC 3461 §4.2: ``addr-type ; xtext``."""
    event, lines = rcpt(f"TO:<r@example.net> ORCPT={value}")
    assert lines == [RECIPIENT_OK]
    assert event is not None
    assert event.orcpt == orcpt


@pytest.mark.parametrize(
    "param", ["ORCPT", "ORCPT=rfc822", "ORCPT=;user@example.org", "ORCPT=rfc822;"]
)
def test_malformed_orcpt_is_501_5_5_4(param: str) -> None:
    assert rcpt(f"TO:<r@example.net> {param}")[1] == [BAD_PARAMS]


def test_orcpt_must_decode_to_printable_ascii() -> None:
    """RFC 3461 §4.2: the original recipient before xtext encoding MUST be printable ASCII."""
    event, lines = rcpt("TO:<r@example.net> ORCPT=rfc822;a@example.org+0D+0ABcc:+20x@evil")
    assert event is None
    assert lines == [BAD_PARAMS]


@pytest.mark.parametrize("param", ["FOO=1", "SIZE=10", "BODY=8BITMIME", "SMTPUTF8"])
def test_unknown_rcpt_parameter_is_555(param: str) -> None:
    key = param.split("=")[0]
    assert rcpt(f"TO:<r@example.net> {param}")[1] == [unsupported(key)]


@pytest.mark.parametrize("param", ["NOTIFY=NEVER", "ORCPT=rfc822;a@example.org"])
def test_dsn_rcpt_parameters_disabled(param: str) -> None:
    key = param.split("=")[0]
    assert rcpt(f"TO:<r@example.net> {param}", config(dsn=False))[1] == [unsupported(key)]


# ---------------------------------------------------------------- decisions


def test_rejected_recipient_keeps_the_transaction() -> None:
    conn = connect()
    send(conn, MAIL)
    _, lines = send(conn, b"RCPT TO:<nobody@example.net>\r\n", rejecting(RcptTo))
    assert lines == ["550 5.1.1 Requested action not taken: mailbox unavailable"]
    assert conn.state is State.MAIL
    assert conn.envelope.sender == "sender@example.org"
    _, lines = send(conn, b"RCPT TO:<somebody@example.net>\r\n")
    assert lines == [RECIPIENT_OK]
    assert conn.envelope.recipients == ("somebody@example.net",)


def test_rejected_sender_default_reply_is_a_sender_code() -> None:
    """RFC 3463: X.1.1 is "Bad destination mailbox address"; a refused sender needs another.

    Accepted: 550 with X.1.0 (other address status), X.1.7/X.1.8 (sender) or X.7.1 (policy).
    """
    conn = connect()
    _, lines = send(conn, MAIL, rejecting(MailFrom))
    assert len(lines) == 1
    assert lines[0][:4] == "550 "
    assert lines[0][4:9] in {"5.1.0", "5.1.7", "5.1.8", "5.7.1"}, lines
    assert conn.state is State.READY
    assert conn.envelope.mail_from is None


def test_rejected_sender_with_custom_reply() -> None:
    conn = connect()
    reply = Reply(550, "Sender blocked", "5.7.1")
    _, lines = send(conn, MAIL + b"RCPT TO:<r@example.net>\r\n", rejecting(MailFrom, reply=reply))
    assert lines == ["550 5.7.1 Sender blocked", "503 5.5.1 Need MAIL command"]


def test_accept_with_rewrite_records_the_new_addresses() -> None:
    def decide(conn: SmtpConnection, event: object) -> None:
        if isinstance(event, MailFrom):
            conn.accept(event, rewrite="bounce+123@example.org")
        elif isinstance(event, RcptTo):
            conn.accept(event, rewrite="mailbox-7@store.example")
        else:
            conn.accept(event)  # type: ignore[arg-type]

    conn = connect()
    events, lines = send(conn, MAIL + b"RCPT TO:<alias@example.net> NOTIFY=NEVER\r\n", decide)
    assert lines == [SENDER_OK, RECIPIENT_OK]
    assert conn.envelope.sender == "bounce+123@example.org"
    assert conn.envelope.recipients == ("mailbox-7@store.example",)
    assert conn.envelope.rcpt_tos[0].notify == ("NEVER",)
    # the events themselves still carry what the client sent
    assert of_type(events, RcptTo)[0].address == "alias@example.net"


def test_accept_with_custom_replies() -> None:
    def decide(conn: SmtpConnection, event: object) -> None:
        if isinstance(event, MailFrom):
            conn.accept(event, Reply(250, "Originator <a@example.org> ok", "2.1.0"))
        elif isinstance(event, RcptTo):
            conn.accept(event, Reply(251, "User not local; will forward", "2.1.5"))
        else:
            conn.accept(event)  # type: ignore[arg-type]

    conn = connect()
    _, lines = send(conn, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r@example.net>\r\n", decide)
    assert lines == [
        "250 2.1.0 Originator <a@example.org> ok",
        "251 2.1.5 User not local; will forward",
    ]


def test_envelope_collects_accepted_commands() -> None:
    conn = connect()
    send(conn, MAIL + b"RCPT TO:<r1@example.net>\r\nRCPT TO:<r2@example.net>\r\n")
    env = conn.envelope
    assert env.sender == "sender@example.org"
    assert env.recipients == ("r1@example.net", "r2@example.net")
    assert conn.state is State.RCPT
