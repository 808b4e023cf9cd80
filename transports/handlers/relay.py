"""`RelayHandler`: forwards each message, envelope and all, to an upstream SMTP server.

The client gets its reply only once the upstream server has answered: 250 after upstream took
the message, otherwise an error, so a message is never acknowledged and then lost. Upstream
unreachable, timing out or failing mid-way gives 451 4.4.x (the client retries); a permanent
upstream refusal (5xx) is passed through with upstream's code and text.

Recipients refused upstream while others are accepted (the client's RCPTs were accepted long
before): in LMTP each recipient gets its own answer, upstream's; in SMTP, if any refusal is
temporary the whole transaction is dropped upstream before DATA and the client gets 451 (it
retries everyone; nobody got a copy, so nobody gets two); if all refusals are permanent the
others are delivered, the client gets 250 and the refused recipients are logged at WARNING
(upstream would not take them on a retry either). One upstream connection per message.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from contextlib import suppress

from smtpcore import MailFrom
from transports._blocking import run_blocking
from transports.errors import SmtpError
from transports.handler import Handler, MaybeAwaitable, Session

from .stored import StoredMessage
from .trace import trace_headers

__all__ = ["RelayHandler", "parse_relay_target"]

_LOG = logging.getLogger("smtpcore.handlers.relay")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\b")
_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
Refusals = dict[str, tuple[int, str]]


def parse_relay_target(argument: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` too) from a ``relay:HOST:PORT`` spec.

    Raises:
        ValueError: if the host or the port (1 to 65535) is missing or malformed.
    """
    host, colon, port = argument.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"relay needs HOST:PORT (e.g. relay:smtp.example.org:25), not {argument!r}"
        )
    return host, int(port)


class RelayHandler(Handler):
    """Forwards every message to ``host:port`` with the envelope it came with: the same
    MAIL FROM, the same RCPT TO list, the content with our ``Received:`` on top.

    Args:
        host, port: the upstream SMTP server.
        starttls: require STARTTLS upstream (a server without it gets no mail: 451).
        username, password: AUTH upstream after EHLO (and STARTTLS).
        timeout: seconds for each upstream network operation.
        ssl_context: for STARTTLS; the default context (verifying ``host``) if None.
        local_hostname: our EHLO name upstream; the server's hostname by default.
        hostname: our name in ``Received:``; the server's hostname by default.
        max_hops: refuse (554 5.4.6) a message with this many ``Received:`` fields: it is
            looping (RFC 5321 §6.3 asks for a threshold of at least 100).

    What upstream advertises decides which parameters travel on: SIZE (recomputed),
    BODY=8BITMIME, SMTPUTF8 (required if the client used it: without it upstream, 550 5.6.7),
    and DSN's RET, ENVID, NOTIFY, ORCPT. BODY=BINARYMIME is refused at MAIL FROM (555), as
    smtplib cannot send BDAT.
    """

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        hostname: str | None = None,
        max_hops: int = 100,
    ) -> None:
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad relay target {host!r}:{port!r}")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.host, self.port = host, port
        self.starttls = starttls
        self.username, self.password = username, password
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self.hostname = hostname
        self.max_hops = max_hops

    def on_mail_from(self, ctx: Session, address: str, event: MailFrom) -> None:
        if event.body == "BINARYMIME":
            raise SmtpError(555, "BODY=BINARYMIME cannot be relayed from here", "5.5.4")

    def on_message(self, ctx: Session) -> MaybeAwaitable:
        message = StoredMessage.from_session(ctx)
        header_block = _HEADER_END.split(message.raw, maxsplit=1)[0]
        if len(_RECEIVED.findall(header_block)) + 1 >= self.max_hops:
            raise SmtpError(554, "Too many hops: the message is looping", "5.4.6")
        return run_blocking(lambda: self._relay(message))

    def _relay(self, message: StoredMessage) -> list[SmtpError | None] | None:
        refused = self.forward(message, per_recipient=message.lmtp)
        if message.lmtp:
            return [
                None if rcpt not in refused else _upstream_error(*refused[rcpt], "recipient")
                for rcpt in message.recipients
            ]
        for rcpt, (code, text) in refused.items():
            _LOG.warning(
                "message %s: upstream %s:%s refused <%s> (%s %s); delivered to the others",
                message.id,
                self.host,
                self.port,
                rcpt,
                code,
                text,
            )
        return None

    def forward(self, message: StoredMessage, *, per_recipient: bool = False) -> Refusals:
        """Send ``message`` upstream; return the recipients upstream refused while it took
        the message for the others (``{address: (code, text)}``).

        Args:
            per_recipient: the caller can answer each recipient (LMTP), so temporary
                refusals need not fail the whole message.

        Raises:
            SmtpError: the message was not delivered to anyone: 451 4.4.x or upstream's 5xx.
        """
        data = trace_headers(message, return_path=False, hostname=self.hostname) + message.raw
        where = f"{self.host}:{self.port}"
        try:
            smtp = smtplib.SMTP(
                self.host,
                self.port,
                local_hostname=self.local_hostname or message.hostname,
                timeout=self.timeout,
            )
        except (OSError, smtplib.SMTPException) as exc:
            _LOG.error("message %s: upstream %s unreachable: %s", message.id, where, exc)
            raise SmtpError(451, f"Upstream {where} unreachable, try again later", "4.4.1") from exc
        try:
            self._open(smtp)
            refused = self._transaction(smtp, message, data, per_recipient)
            with suppress(Exception):  # upstream has the message: nothing may turn it into an error
                smtp.quit()
        except SmtpError:
            raise
        except smtplib.SMTPResponseException as exc:
            text = _text(exc.smtp_error)
            _LOG.error("message %s: upstream %s said %s %s", message.id, where, exc.smtp_code, text)
            raise _upstream_error(exc.smtp_code, text, "the message") from exc
        except (OSError, smtplib.SMTPException, UnicodeError) as exc:
            _LOG.error("message %s: relaying to %s failed: %r", message.id, where, exc)
            raise SmtpError(451, f"Upstream {where} failed, try again later", "4.4.2") from exc
        finally:
            smtp.close()
        _LOG.info("message %s from <%s> relayed to %s", message.id, message.sender, where)
        return refused

    def _open(self, smtp: smtplib.SMTP) -> None:
        """EHLO, then STARTTLS and AUTH as configured. Whatever upstream says here is about
        us, not about the message (a refused greeting, no STARTTLS, our credentials): 451
        whatever its code, so the client's message is never bounced for our configuration."""
        try:
            smtp.ehlo_or_helo_if_needed()
        except smtplib.SMTPResponseException as exc:
            raise SmtpError(451, "Upstream refused our greeting", "4.4.0") from exc
        if self.starttls:
            if not smtp.has_extn("starttls"):
                raise SmtpError(451, "Upstream offers no STARTTLS", "4.7.0")
            try:
                smtp.starttls(context=self.ssl_context or ssl.create_default_context())
                smtp.ehlo()
            except smtplib.SMTPResponseException as exc:
                raise SmtpError(451, "Upstream STARTTLS failed", "4.7.0") from exc
        if self.username is not None and self.password is not None:
            try:
                smtp.login(self.username, self.password)
            except smtplib.SMTPException as exc:
                raise SmtpError(451, "Upstream refused our credentials", "4.7.0") from exc

    def _transaction(
        self, smtp: smtplib.SMTP, message: StoredMessage, data: bytes, per_recipient: bool
    ) -> Refusals:
        params = self._mail_params(smtp, message, len(data))
        code, reply = smtp.docmd("MAIL", f"FROM:<{message.sender}>{params}")
        if code != 250:
            raise _upstream_error(code, _text(reply), "the sender")
        dsn = smtp.has_extn("dsn")
        refused: Refusals = {}
        for rcpt, rcpt_params in zip(message.recipients, _padded(message), strict=True):
            extra = _params(rcpt_params, ("NOTIFY", "ORCPT") if dsn else ())
            code, reply = smtp.docmd("RCPT", f"TO:<{rcpt}>{extra}")
            if code not in (250, 251):
                refused[rcpt] = (code, _text(reply))
        if len(refused) == len(message.recipients):
            smtp.rset()
            # Permanent only if every refusal is: one "try later" means the client should.
            transient = [r for r in refused.values() if r[0] < 500]
            raise _upstream_error(*(transient or list(refused.values()))[0], "every recipient")
        temporary = {rcpt: r for rcpt, r in refused.items() if r[0] < 500}
        if temporary and not per_recipient:
            smtp.rset()
            rcpt, (code, text) = next(iter(temporary.items()))
            raise _upstream_error(code, f"<{rcpt}>: {text}", "a recipient for now")
        code, reply = smtp.data(data)
        if code != 250:
            raise _upstream_error(code, _text(reply), "the message")
        return refused

    def _mail_params(self, smtp: smtplib.SMTP, message: StoredMessage, size: int) -> str:
        words = []
        if smtp.has_extn("size"):
            words.append(f"SIZE={size}")
        if (message.mail_params.get("BODY") or "").upper() == "8BITMIME" and smtp.has_extn(
            "8bitmime"
        ):
            words.append("BODY=8BITMIME")
        if message.smtputf8:
            if not smtp.has_extn("smtputf8"):
                raise SmtpError(550, "Upstream does not accept SMTPUTF8 mail", "5.6.7")
            words.append("SMTPUTF8")
            smtp.command_encoding = "utf-8"
        extra = _params(message.mail_params, ("RET", "ENVID") if smtp.has_extn("dsn") else ())
        return (" " + " ".join(words) if words else "") + extra


def _padded(message: StoredMessage) -> Sequence[Mapping[str, str | None]]:
    """RCPT parameters per recipient (none for records made by hand without them)."""
    params = list(message.rcpt_params)
    return params + [{}] * (len(message.recipients) - len(params))


def _params(params: Mapping[str, str | None], keys: Sequence[str]) -> str:
    """`` KEY=VALUE`` for each of ``keys`` present (values as the client sent them: xtext)."""
    return "".join(
        f" {key}" if params[key] is None else f" {key}={params[key]}"
        for key in keys
        if key in params
    )


def _text(reply: bytes | str) -> str:
    """An upstream reply's text on one line, short enough to quote in ours."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def _upstream_error(code: int, text: str, what: str) -> SmtpError:
    """Upstream's permanent refusal passed through (its code, and its enhanced code when it
    gave one); anything else becomes 451 4.4.0, quoting upstream."""
    if 500 <= code < 600:
        found = _ENHANCED.match(text)
        enhanced = found.group(0) if found and found.group(1) == "5" else "5.0.0"
        detail = text[found.end() :].strip() if found else text
        return SmtpError(code, f"Upstream refused {what}: {detail}", enhanced)
    return SmtpError(451, f"Upstream refused {what} for now: {code} {text}", "4.4.0")
