"""Helpers of the scale-out tests: a recording handler, a server per transport, the
multi-process server as a child process, HTTP GETs. Every wait is bounded; every child process
is killed when its test ends, however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpcore import SmtpConfig
from smtpcore.proxy import ProxyInfo
from tests.integration._support import Recorder
from transports.controller import ServerThread
from transports.handler import Session
from transports.options import Listener, ServerOptions

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ["threads", "asyncio", "trio", "anyio", "anyio-trio"]
TRUSTED = ("127.0.0.1/32",)


@dataclass(frozen=True, slots=True)
class Seen:
    """What `on_connect` saw of a session."""

    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int
    proxy_info: ProxyInfo | None
    peer: tuple[str, int] | None


class ProxyRecorder(Recorder):
    """Records every session's addresses as `on_connect` sees them; `on_proxy` refuses the
    source addresses in ``refuse``."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.refuse = refuse
        self.seen: list[Seen] = []
        self.proxied: list[str | None] = []

    def on_proxy(self, ctx: Session, info: ProxyInfo) -> None:
        with self.cond:
            self.proxied.append(info.source_address)
            self.cond.notify_all()
        if info.source_address in self.refuse:
            raise PermissionError(f"{info.source_address} is not welcome")

    def on_connect(self, ctx: Session) -> None:
        proxy = ctx.proxy
        seen = Seen(
            ctx.remote_ip,
            ctx.remote_port,
            ctx.local_ip,
            ctx.local_port,
            None if proxy is None else proxy.info,
            None if proxy is None else (proxy.peer_ip, proxy.peer_port),
        )
        with self.cond:
            self.seen.append(seen)
            self.cond.notify_all()

    def log_text(self) -> str:
        with self.cond:
            return "\n".join(line.message for line in self.logs)


@contextmanager
def proxy_server(
    transport: str,
    handler: Any,
    *,
    listeners: tuple[Listener, ...] = (Listener("127.0.0.1", 0, proxy_protocol=True),),
    **options: Any,
) -> Iterator[ServerThread]:
    options.setdefault("config", SmtpConfig(hostname="mx.test"))
    options.setdefault("trusted_proxies", TRUSTED)
    built = ServerOptions(listeners=listeners, **options)
    with ServerThread(transport, handler, built, ready_timeout=10.0) as server:
        try:
            yield server
        finally:
            server.stop(grace=1.0, timeout=15.0)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET (error statuses included, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` (labels included in ``name``); 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------- the multi-process server


@dataclass
class Workers:
    """`tests.scaleout._serve_workers` running as a child process."""

    process: subprocess.Popen[str]
    addresses: list[tuple[str, int]]
    ops: tuple[str, int] | None
    log: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.addresses[0]

    @property
    def url(self) -> str:
        """The ops endpoint's base URL."""
        assert self.ops is not None
        return f"http://{self.ops[0]}:{self.ops[1]}"

    def worker_pids(self) -> list[int]:
        """The supervisor's live children (Linux /proc)."""
        pid = self.process.pid
        path = Path(f"/proc/{pid}/task/{pid}/children")
        with suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def wait_workers(
        self, count: int, timeout: float = 10.0, exclude: tuple[int, ...] = ()
    ) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(self.worker_pids()) == count and len(pids) >= count - len(exclude):
                return self.worker_pids()
            time.sleep(0.05)
        raise AssertionError(f"expected {count} workers, have {self.worker_pids()}")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line with {text!r} in:\n" + "\n".join(self.log))

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def workers(*args: str, ready_timeout: float = 15.0) -> Iterator[Workers]:
    """Run the multi-process server with ``args``; killed (all its processes) at the end."""
    command = [sys.executable, "-m", "tests.scaleout._serve_workers", *args]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as one at the end
    )
    log: list[str] = []
    reader = threading.Thread(target=_collect, args=(process.stderr, log), daemon=True)
    reader.start()
    try:
        line = _readline(process, ready_timeout)
        info = json.loads(line)
        server = Workers(
            process,
            [(str(a[0]), int(a[1])) for a in info["addresses"]],
            None if info["ops"] is None else (str(info["ops"][0]), int(info["ops"][1])),
            log,
        )
        yield server
    finally:
        with suppress(ProcessLookupError):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    process.wait(15)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        reader.join(5)


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, within ``timeout``."""
    box: list[str] = []
    thread = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    thread.start()
    thread.join(timeout)
    if not box or not box[0]:
        raise AssertionError(f"the workers did not start (exit {process.poll()})")
    return box[0]


def _collect(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))
