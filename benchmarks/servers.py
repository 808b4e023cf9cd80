"""Start and stop SMTP servers under test as subprocesses.

The server runs in its own process so that its CPU time and RSS can be read from
``/proc/<pid>`` without the load generator's own cost mixed in.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import os
import signal
import socket  # noqa: TID251, RUF100 - real I/O here; only smtpcore is sans-IO
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import IO, Self

__all__ = [
    "AIOSMTPD_VERSION",
    "ServerProcess",
    "aiosmtpd_command",
    "ensure_aiosmtpd",
    "free_port",
    "require_loopback",
    "wait_for_greeting",
]

AIOSMTPD_VERSION = "1.4.6"
"""The aiosmtpd release the reference figures were taken with."""


def require_loopback(host: str) -> str:
    """Refuse any target but loopback: load must never leave this machine."""
    name = "127.0.0.1" if host == "localhost" else host
    try:
        addr = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        raise ValueError(f"benchmark target must be a loopback address, got {host!r}") from None
    if not addr.is_loopback:
        raise ValueError(f"benchmark target must be a loopback address, got {host!r}")
    return str(addr)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port the kernel reports free now, so parallel runs don't collide.

    There is a small race until the server binds it; `ServerProcess` reports a
    clear error if the server then fails to start.
    """
    host = require_loopback(host)
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_greeting(host: str, port: int, timeout: float = 15.0) -> bytes:
    """Poll until the server accepts a connection and sends a 220 greeting.

    A listening socket alone is not enough: some servers bind before they are
    ready to serve, and we want the measured run to start with a ready server.
    Returns the greeting line; raises TimeoutError when ``timeout`` runs out.
    """
    host = require_loopback(host)
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no 220 greeting from {host}:{port} within {timeout:.1f}s ({last_error})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(2.0, remaining)) as s:
                s.settimeout(min(2.0, max(remaining, 0.05)))
                buf = b""
                while b"\n" not in buf and len(buf) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                line = buf.split(b"\n", 1)[0].rstrip(b"\r")
                if line.startswith(b"220"):
                    # Be polite; the answer does not matter.
                    try:
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    except OSError:
                        pass
                    return line
                last_error = f"unexpected greeting {line[:80]!r}"
        except OSError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)


def ensure_aiosmtpd(version: str = AIOSMTPD_VERSION) -> None:
    """Install aiosmtpd into this interpreter's environment if it is missing.

    It is the reference server every transport is compared against, and the
    ``bench`` extra may not have been installed.
    """
    installed: str | None
    try:
        installed = importlib.metadata.version("aiosmtpd")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed == version:
        return
    if installed is not None:
        print(
            f"note: aiosmtpd {installed} installed, reference figures are for {version}",
            file=sys.stderr,
        )
        return
    print(f"installing aiosmtpd=={version} with pip ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", f"aiosmtpd=={version}"],
        check=True,
        timeout=300,
    )


def aiosmtpd_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """Command line for aiosmtpd with its Sink handler (accepts and discards mail)."""
    ensure_aiosmtpd()
    host = require_loopback(host)
    # aiosmtpd splits on the last colon and takes no brackets: "::1:8025" works.
    listen = f"{host}:{port}"
    return [sys.executable, "-m", "aiosmtpd", "-n", "-l", listen, "-c", "aiosmtpd.handlers.Sink"]


class ServerProcess:
    """A server subprocess that is ready (220 greeting) on enter and gone on exit.

    Output goes to a temporary log file rather than a pipe, so a chatty server can
    never block on a full pipe while being measured; the log tail is shown if it
    fails to start.
    """

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        host: str = "127.0.0.1",
        *,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        nofile: int = 4096,
        cpus: Collection[int] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.host = require_loopback(host)
        self.port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.nofile = nofile
        self.cpus = set(cpus) if cpus else None
        """The CPUs the server may run on (None: any); its threads inherit them."""
        self.greeting = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the started process, for /proc readings.

        That is the server itself only if ``argv`` execs it directly: a shell or
        launcher wrapper would be measured instead of the server.
        """
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    def log_tail(self, limit: int = 2000) -> str:
        """Last bytes of the server's combined stdout/stderr, for error messages."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode("utf-8", "replace")

    def start(self) -> Self:
        """Start the server and wait for its greeting; stops it again on failure."""
        # Imported here: procstats imports nothing from us, and the child inherits
        # our limit, so idle-connection tests with many sockets don't hit EMFILE.
        from .procstats import raise_nofile_limit

        raise_nofile_limit(self.nofile)
        self._log = tempfile.TemporaryFile(prefix="smtpcore-bench-")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, not the server
        )
        if self.cpus:  # before the interpreter is up, so before it starts any thread
            os.sched_setaffinity(self._proc.pid, self.cpus)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self._proc.returncode} during startup: "
                        f"{self.argv}\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"server not ready on {self.host}:{self.port} after "
                        f"{self.startup_timeout:.0f}s: {self.argv}\n{self.log_tail()}"
                    )
                try:
                    self.greeting = wait_for_greeting(
                        self.host, self.port, timeout=min(0.5, remaining)
                    )
                    return self
                except TimeoutError:
                    continue
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; returns the exit status."""
        proc, self._proc = self._proc, None
        rc: int | None = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout)
            rc = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
