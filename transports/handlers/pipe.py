"""`PipeHandler`: delivers each message to a command's standard input, as ``sendmail -i``,
procmail or Postfix's pipe(8) would, and answers by the command's exit status.

The command is split like a shell would (`shlex.split`) but run without one, so nothing in a
message or an address can inject shell syntax; pass ``/bin/sh -c '...'`` explicitly for shell
features. Exit statuses follow ``sysexits.h`` as mail programs do: 0 delivered (250);
EX_DATAERR (65), EX_NOUSER (67) and EX_NOPERM (77) are permanent (550); EX_TEMPFAIL (75),
any other status, a signal, or a timeout are temporary (451) so the client retries rather than
losing the message.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import suppress

from transports._blocking import run_blocking
from transports.errors import SmtpError
from transports.handler import Handler, MaybeAwaitable, Session

from .stored import StoredMessage
from .trace import trace_headers

__all__ = ["EX_DATAERR", "EX_NOPERM", "EX_NOUSER", "EX_TEMPFAIL", "PipeHandler"]

_LOG = logging.getLogger("smtpcore.handlers.pipe")

EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75
EX_NOPERM = 77

_PERMANENT: Mapping[int, tuple[str, str]] = {
    EX_DATAERR: ("5.6.0", "message refused by the delivery command"),
    EX_NOUSER: ("5.1.1", "no such user"),
    EX_NOPERM: ("5.7.1", "delivery not permitted"),
}


class PipeHandler(Handler):
    """Runs ``command`` once per message with the message on stdin: ``Return-Path:`` and
    ``Received:`` on top of the content as received (CRLF line endings, as SMTP carries it).

    Args:
        command: the program and its arguments, or one string split with `shlex.split`.
        timeout: seconds the command may run; then it (and its process group) is killed and
            the client gets 451.
        env: extra environment variables (the server's environment is inherited).
        hostname: our name in ``Received:``; the server's hostname by default.

    The command also gets ``SENDER`` (empty for ``<>``), ``RECIPIENTS`` (space-separated),
    ``RECIPIENT`` (only when there is exactly one, so a script cannot mistake the first of
    several for the only one), ``CLIENT_ADDRESS``, ``CLIENT_HELO`` and ``SMTPCORE_ID``.

    Raises:
        ValueError: if the command is empty or its program cannot be found.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        hostname: str | None = None,
    ) -> None:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise ValueError("pipe needs a command, e.g. pipe:/usr/bin/procmail -d bob")
        if shutil.which(argv[0]) is None:
            raise ValueError(f"pipe command {argv[0]!r} not found or not executable")
        self.argv = argv
        self.timeout = timeout
        self.env = dict(env or {})
        self.hostname = hostname

    def on_message(self, ctx: Session) -> MaybeAwaitable:
        message = StoredMessage.from_session(ctx)
        return run_blocking(lambda: self.deliver(message))

    def deliver(self, message: StoredMessage) -> None:
        """Run the command on ``message``.

        Raises:
            SmtpError: 550 for a permanent failure status, 451 for anything else but 0.
        """
        data = trace_headers(message, hostname=self.hostname) + message.raw
        status, output = self._run(message, data)
        if status == 0:
            _LOG.info("message %s from <%s> piped to %s", message.id, message.sender, self.argv[0])
            return
        said = _last_line(output)
        _LOG.warning(
            "message %s: %s exited with %s%s",
            message.id,
            shlex.join(self.argv),
            _describe(status),
            f": {said}" if said else "",
        )
        detail = f" ({said})" if said else ""
        if status is not None and status in _PERMANENT:
            enhanced, text = _PERMANENT[status]
            raise SmtpError(550, f"Delivery failed: {text}{detail}", enhanced)
        raise SmtpError(451, f"Delivery deferred: command {_describe(status)}{detail}", "4.3.0")

    def _run(self, message: StoredMessage, data: bytes) -> tuple[int | None, bytes]:
        """The exit status (negative: killed by that signal; None: timed out) and output."""
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._environment(message),
                start_new_session=True,  # its own process group: a timeout kills it all
            )
        except OSError as exc:
            _LOG.error("message %s: cannot run %s: %s", message.id, self.argv[0], exc)
            raise SmtpError(451, "Delivery command cannot be started", "4.3.0") from exc
        try:
            output, _ = proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:  # bounded: a grandchild that left the group may still hold the pipe open
                output, _ = proc.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1.0)  # the child itself is dead: reap it
                output = b""
            return None, output
        return proc.returncode, output

    def _environment(self, message: StoredMessage) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SENDER=message.sender,
            RECIPIENTS=" ".join(message.recipients),
            CLIENT_ADDRESS=message.remote_ip,
            CLIENT_HELO=message.helo or "",
            SMTPCORE_ID=message.id,
        )
        env.pop("RECIPIENT", None)
        if len(message.recipients) == 1:
            env["RECIPIENT"] = message.recipients[0]
        env.update(self.env)
        return env


def _describe(status: int | None) -> str:
    if status is None:
        return "timed out"
    if status < 0:
        with suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
        return f"killed by signal {-status}"
    return f"exit status {status}"


def _last_line(output: bytes) -> str:
    """The command's last line of output (where programs say why), printable and short."""
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return "".join(c if c.isprintable() else "?" for c in last)[:160]
