"""Read a server's CPU time and memory from /proc, and measure idle-connection cost.

Reading /proc/<pid> of the server subprocess measures the server alone, whatever
the load generator (a C program or Python threads in this process) costs.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket  # noqa: TID251, RUF100 - real I/O here; only smtpcore is sans-IO
import time

from .servers import require_loopback

__all__ = [
    "cpu_seconds",
    "idle_connection_cost",
    "open_idle_connections",
    "raise_nofile_limit",
    "rss_bytes",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, include_children: bool = False) -> float:
    """User+system CPU seconds of process ``pid``, all its threads included.

    The process-level /proc/<pid>/stat sums every thread of the thread group (live
    and exited), so a thread-pool server is charged for all its workers.
    ``include_children`` adds waited-for children (cutime/cstime), for servers
    that fork workers and reap them.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # comm (field 2) is in parentheses and may contain spaces or ')' itself.
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if include_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                parts = line.split()
                unit = parts[2].lower() if len(parts) > 2 else b"kb"
                scale = {b"kb": 1024, b"mb": 1024**2, b"gb": 1024**3}.get(unit, 1)
                return int(parts[1]) * scale
    raise RuntimeError(f"no VmRSS for pid {pid} (zombie or kernel thread?)")


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped at the hard limit).

    Hundreds of idle sockets on each side exceed the usual soft limit of 1024;
    children started afterwards (the server) inherit the raised limit. Returns
    the soft limit now in force; never lowers it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _raise_nofile_limit_of(pid: int, wanted: int) -> None:
    """Raise the server's own soft fd limit too, if it started with a lower one."""
    try:
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (target, hard))
    except OSError:
        pass  # not ours to change; too few fds then shows up as failed connections


def open_idle_connections(
    host: str, port: int, n: int, *, timeout: float = 20.0
) -> list[socket.socket]:
    """Open ``n`` connections that have each read a 220 greeting, then sit idle.

    Connects in batches and reads the greetings with a selector, so 500
    connections take well under a second; the whole call is bounded by
    ``timeout``. The caller must close the sockets. Raises RuntimeError (after
    closing what it opened) if any connection fails or gets no 220.
    """
    host = require_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    socks: list[socket.socket] = []
    batch = 50  # stays under a typical listen backlog (aiosmtpd: 100)
    try:
        for start in range(0, n, batch):
            pending: dict[socket.socket, bytes] = {}
            for _ in range(min(batch, n - start)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"opened only {len(socks)} of {n} connections")
                s = socket.socket(family, socket.SOCK_STREAM)
                socks.append(s)
                s.settimeout(remaining)
                s.connect((host, port))
                s.setblocking(False)
                pending[s] = b""
            with selectors.DefaultSelector() as sel:
                for s in pending:
                    sel.register(s, selectors.EVENT_READ, s)
                while pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"{len(pending)} connections got no greeting in time")
                    for key, _ in sel.select(timeout=remaining):
                        ready: socket.socket = key.data
                        chunk = ready.recv(4096)
                        if not chunk:
                            raise RuntimeError("server closed a connection before greeting")
                        buf = pending[ready] + chunk
                        complete_lines = buf.split(b"\n")[:-1]
                        if complete_lines and not buf.startswith(b"220"):
                            raise RuntimeError(f"unexpected greeting {buf[:80]!r}")
                        # A multi-line greeting (220-...) ends with its "220 " line.
                        if any(line[3:4] != b"-" for line in complete_lines):
                            sel.unregister(ready)
                            del pending[ready]
                        else:
                            pending[ready] = buf
        return socks
    except BaseException:
        for s in socks:
            s.close()
        raise


def idle_connection_cost(
    host: str,
    port: int,
    pid: int,
    n: int = 500,
    *,
    settle: float = 1.0,
    warmup: int = 10,
    timeout: float = 30.0,
) -> float:
    """Bytes of server RSS per idle, greeted connection.

    RSS is read before and after opening ``n`` connections (each has read its
    220 greeting, then stays silent), after ``settle`` seconds so the server has
    finished its per-connection setup. A few ``warmup`` connections are opened
    and closed first so one-time costs (lazy imports, first buffers) don't get
    charged to the measured connections. Best run on a freshly started server:
    memory freed by an earlier load run can be reused and hide the real cost.
    """
    raise_nofile_limit(n + 256)
    _raise_nofile_limit_of(pid, n + 256)
    if warmup:
        for s in open_idle_connections(host, port, warmup, timeout=timeout):
            s.close()
        time.sleep(settle)
    before = rss_bytes(pid)
    socks = open_idle_connections(host, port, n, timeout=timeout)
    try:
        time.sleep(settle)
        after = rss_bytes(pid)
    finally:
        for s in socks:
            s.close()
    return (after - before) / n
