"""SMTP load generators for transport benchmarks.

Two generators with one signature and one result type:

* `run_smtp_source` drives Postfix's C tool ``smtp-source`` (cheap per message, so
  the server is the bottleneck). It is taken from Debian's postfix package
  without installing a mail service: see `ensure_smtp_source`.
* `run_python_load` is a pure-Python fallback with pipelined SMTP over raw
  sockets, one thread per session, which checks every reply code.

Targets are restricted to loopback and every wait is bounded, so a broken server
makes a run fail or time out instead of hanging.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket  # noqa: TID251, RUF100 - real I/O here; only smtpcore is sans-IO
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .servers import require_loopback

__all__ = [
    "CACHE_DIR",
    "GENERATORS",
    "LoadGenerator",
    "LoadResult",
    "build_message",
    "ensure_smtp_source",
    "run_python_load",
    "run_smtp_source",
    "smtp_source_env",
]

CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "postfix"
"""Where the postfix .deb files are downloaded and unpacked (git-ignored)."""

SENDER = "bench@localhost"
RECIPIENT = "sink@localhost"
_MIB = 1024 * 1024


@dataclass
class LoadResult:
    """Outcome of one load run; rates are computed from the accepted messages."""

    generator: str
    sessions: int
    message_size: int
    requested: int
    messages: int
    """Messages the server accepted (2xx after end of data)."""
    errors: int
    """Messages not accepted: rejected, or lost to a failed/aborted session."""
    seconds: float
    timed_out: bool = False
    """The time cap ended the run before all requested messages were sent."""
    client_cpu_s: float = 0.0
    """CPU seconds used by the generator itself, to spot a generator bottleneck."""
    reconnect: bool = False
    """A new connection was opened for every message."""
    detail: str = ""
    msgs_per_s: float = field(init=False)
    mib_per_s: float = field(init=False)
    """Payload MiB/s (message_size bytes per message, headers not counted)."""

    def __post_init__(self) -> None:
        secs = self.seconds if self.seconds > 0 else float("nan")
        self.msgs_per_s = self.messages / secs
        self.mib_per_s = self.messages * self.message_size / _MIB / secs

    @property
    def ok(self) -> bool:
        """True when every requested message was accepted in time."""
        return self.errors == 0 and not self.timed_out and self.messages == self.requested


class LoadGenerator(Protocol):
    """The common signature of `run_smtp_source` and `run_python_load`."""

    def __call__(
        self,
        host: str,
        port: int,
        *,
        sessions: int,
        messages: int,
        message_size: int,
        timeout: float,
        reconnect: bool = False,
    ) -> LoadResult: ...


# --------------------------------------------------------------------------- smtp-source


def _lib_dirs(root: Path) -> list[Path]:
    """Directories under an unpacked tree that hold shared libraries."""
    dirs = [root / "usr" / "lib" / "postfix"]
    for base in (root / "usr" / "lib", root / "lib"):
        dirs.extend(sorted(base.glob("*-linux-*")))
        dirs.append(base)
    return [d for d in dirs if d.is_dir()]


def smtp_source_env(binary: Path) -> dict[str, str]:
    """Environment that lets an unpacked smtp-source find its libraries.

    Debian's postfix links against its private libpostfix-*.so in
    /usr/lib/postfix, which the dynamic loader does not search on its own.
    """
    env = dict(os.environ)
    root = binary.resolve().parents[2]  # <root>/usr/sbin/smtp-source
    dirs = [str(d) for d in _lib_dirs(root)] if root.is_relative_to(CACHE_DIR) else []
    if dirs:
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs + ([old] if old else []))
    return env


def _probe(binary: Path) -> tuple[bool, str]:
    """Run smtp-source without arguments: it should print its usage, not a loader error."""
    try:
        proc = subprocess.run(
            [str(binary)],
            env=smtp_source_env(binary),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    out = (proc.stderr + proc.stdout).decode("utf-8", "replace")
    if "shared object" in out or "error while loading shared libraries" in out:
        return False, out.strip()
    if "usage" in out.lower():
        return True, out.strip()
    return False, f"exit {proc.returncode}: {out.strip()[:500]}"


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class _Apt:
    """apt-get download with a single 'apt-get update' retry (lists may be missing)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.updated = False

    def download(self, *packages: str) -> list[Path]:
        def attempt() -> subprocess.CompletedProcess[str]:
            return _run(["apt-get", "download", *packages], self.cache, 600)

        proc = attempt()
        if proc.returncode != 0 and not self.updated:
            print("apt-get download failed; running apt-get update ...", file=sys.stderr)
            self.updated = True
            upd = _run(["apt-get", "update"], self.cache, 600)
            if upd.returncode != 0:
                print(f"apt-get update failed: {upd.stderr.strip()[-500:]}", file=sys.stderr)
            proc = attempt()
        if proc.returncode != 0:
            raise RuntimeError(
                f"apt-get download {' '.join(packages)} failed: {proc.stderr.strip()[-500:]}"
            )
        debs: list[Path] = []
        for pkg in packages:
            found = sorted(self.cache.glob(f"{pkg}_*.deb"))
            if not found:
                raise RuntimeError(f"apt-get download {pkg} left no .deb in {self.cache}")
            debs.append(found[-1])
        return debs


def _deb_depends(deb: Path) -> list[str]:
    """Package names in a .deb's Depends/Pre-Depends (alternatives included)."""
    names: list[str] = []
    for fld in ("Pre-Depends", "Depends"):
        proc = _run(["dpkg-deb", "-f", str(deb), fld], deb.parent, 60)
        for alt in re.split(r"[,|]", proc.stdout):
            name = alt.strip().split(" ", 1)[0].split(":", 1)[0]
            if name:
                names.append(name)
    return names


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout


_smtp_source: Path | None = None


def ensure_smtp_source() -> Path | None:
    """Return the path of a working ``smtp-source``, fetching it on first use.

    Installing Debian's postfix would start a mail service and take port 25, so
    the package is only downloaded and unpacked into `CACHE_DIR`::

        apt-get download postfix          # in CACHE_DIR; 'apt-get update' first if it fails
        dpkg -x postfix_*.deb CACHE_DIR/root
        LD_LIBRARY_PATH=CACHE_DIR/root/usr/lib/postfix CACHE_DIR/root/usr/sbin/smtp-source

    If shared libraries it needs are not on the machine, the ``lib*`` packages
    postfix depends on (and theirs, a few rounds) are downloaded and unpacked
    into the same tree, which `smtp_source_env` adds to LD_LIBRARY_PATH. A
    system-wide smtp-source is used only when apt is unavailable. Returns None,
    with the reason printed, when none can be had.
    """
    global _smtp_source
    if _smtp_source is not None and _smtp_source.exists():
        return _smtp_source

    root = CACHE_DIR / "root"
    binary = root / "usr" / "sbin" / "smtp-source"
    reason = ""
    if binary.exists() and _probe(binary)[0]:
        _smtp_source = binary
        return binary

    if shutil.which("apt-get") and shutil.which("dpkg-deb"):
        try:
            binary, reason = _fetch_smtp_source(root)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if not reason:
            _smtp_source = binary
            return binary
    else:
        reason = "apt-get/dpkg-deb not available"

    system = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin")
    if system and _probe(Path(system))[0]:
        print(f"using system smtp-source {system} ({reason})", file=sys.stderr)
        _smtp_source = Path(system)
        return _smtp_source
    print(f"smtp-source unavailable: {reason}", file=sys.stderr)
    return None


def _fetch_smtp_source(root: Path) -> tuple[Path, str]:
    """Download and unpack postfix (plus missing libraries); returns (binary, error)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    apt = _Apt(CACHE_DIR)
    debs = sorted(CACHE_DIR.glob("postfix_*.deb")) or apt.download("postfix")
    postfix_deb = debs[-1]

    # Unpack into a private directory and rename, so a concurrent run never sees
    # a half-extracted tree.
    if not (root / "usr" / "sbin" / "smtp-source").exists():
        tmp = CACHE_DIR / f"root.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(postfix_deb), str(tmp)], check=True, timeout=300)
        try:
            tmp.rename(root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    binary = root / "usr" / "sbin" / "smtp-source"

    ok, out = _probe(binary)
    unpacked = {"postfix"}
    frontier = [postfix_deb]
    for _round in range(4):
        if ok:
            return binary, ""
        wanted = sorted(
            {
                name
                for deb in frontier
                for name in _deb_depends(deb)
                if name.startswith("lib") and name not in unpacked and not _installed(name)
            }
        )
        if not wanted:
            break
        print(f"smtp-source needs libraries; fetching {' '.join(wanted)}", file=sys.stderr)
        frontier = []
        for name in wanted:
            unpacked.add(name)
            try:
                (deb,) = apt.download(name)
            except RuntimeError as exc:  # virtual package or alternative not in the archive
                print(f"  skipped {name}: {exc}", file=sys.stderr)
                continue
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=300)
            frontier.append(deb)
        ok, out = _probe(binary)
    return binary, ("" if ok else f"{binary} does not run: {out[:500]}")


def run_smtp_source(
    host: str,
    port: int,
    *,
    sessions: int,
    messages: int,
    message_size: int,
    timeout: float,
    reconnect: bool = False,
    binary: Path | None = None,
) -> LoadResult:
    """Send ``messages`` messages over ``sessions`` parallel sessions with smtp-source.

    ``-d`` keeps each session open across messages so that per-message cost, not
    connection setup, dominates; ``-c`` prints a counter after each DATA, which
    tells how many got through if the run is cut short. smtp-source aborts on
    any non-2xx reply, so every message not counted then is an error. It speaks
    HELO and does not pipeline. The process is killed at ``timeout``.
    ``reconnect`` drops ``-d``: a new connection for every message.
    """
    host = require_loopback(host)
    exe = binary or ensure_smtp_source()
    if exe is None:
        raise RuntimeError("smtp-source is not available")
    sessions = max(1, min(sessions, messages))
    v6 = ":" in host
    argv = [
        str(exe),
        "-6" if v6 else "-4",
        "-c",
        *([] if reconnect else ["-d"]),
        "-s", str(sessions),
        "-m", str(messages),
        "-l", str(message_size),
        "-M", "localhost",
        "-f", SENDER,
        "-t", RECIPIENT,
        f"[{host}]:{port}" if v6 else f"{host}:{port}",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=smtp_source_env(exe),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, err = proc.communicate(timeout=10)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    counts = [int(tok) for tok in re.findall(rb"\d+", out)]
    done = max(counts, default=0)
    detail = err.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode == 0:
        accepted, errors = messages, 0
    elif timed_out:
        accepted, errors = done, 0
    else:  # smtp-source aborts the whole run on any unexpected reply
        accepted, errors = done, max(1, messages - done)
    return LoadResult(
        generator="smtp-source",
        reconnect=reconnect,
        sessions=sessions,
        message_size=message_size,
        requested=messages,
        messages=accepted,
        errors=errors,
        seconds=seconds,
        timed_out=timed_out,
        client_cpu_s=cpu,
        detail=detail[-1] if detail else "",
    )


# --------------------------------------------------------------------------- Python


def build_message(message_size: int, sender: str = SENDER, recipient: str = RECIPIENT) -> bytes:
    """Headers, ``message_size`` body bytes in 80-byte CRLF lines, and the end-of-data.

    Shaped like smtp-source's payload, so both generators cost a line-oriented
    server the same; no line starts with '.', so no dot-stuffing is needed.
    (A 1-byte body is sent as one empty line.)
    """
    headers = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: smtpcore benchmark\r\n"
        f"Message-ID: <bench@localhost>\r\n\r\n"
    ).encode()
    full, rest = divmod(message_size, 80)
    lines = [b"%d" % (i % 10) + b"X" * 77 + b"\r\n" for i in range(full)]
    if rest >= 2:
        lines.append(b"X" * (rest - 2) + b"\r\n")
    elif rest == 1:
        if lines:
            lines[-1] = lines[-1][:-2] + b"X\r\n"  # one 81-byte line
        else:
            lines.append(b"\r\n")
    return headers + b"".join(lines) + b".\r\n"


class _ProtocolError(Exception):
    """The session cannot continue (bad reply, closed connection): reconnect."""


class _Conn:
    """One SMTP client connection with a reply reader bound by a hard deadline."""

    def __init__(self, host: str, port: int, hard_deadline: float, op_timeout: float) -> None:
        self.hard_deadline = hard_deadline
        self.op_timeout = op_timeout
        self.buf = bytearray()
        self.sock = socket.create_connection((host, port), timeout=self._timeout())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _timeout(self) -> float:
        remaining = self.hard_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("hard deadline passed")
        return min(self.op_timeout, remaining)

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._timeout())
        self.sock.sendall(data)

    def reply(self) -> int:
        """Read one complete (possibly multi-line) reply and return its code."""
        buf = self.buf
        while True:
            pos = 0
            while (nl := buf.find(b"\n", pos)) >= 0:
                if buf[pos + 3 : pos + 4] != b"-":  # "250 ..." or bare "250": last line
                    code_bytes = bytes(buf[pos : pos + 3])
                    del buf[: nl + 1]
                    return int(code_bytes) if code_bytes.isdigit() else -1
                pos = nl + 1
            self.sock.settimeout(self._timeout())
            chunk = self.sock.recv(262144)
            if not chunk:
                raise _ProtocolError("server closed the connection")
            buf += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass
class _SessionStats:
    accepted: int = 0
    errors: int = 0
    unsent: int = 0
    failures: list[str] = field(default_factory=list)


def _session(
    host: str,
    port: int,
    count: int,
    message: bytes,
    deadline: float,
    hard_deadline: float,
    op_timeout: float,
    stats: _SessionStats,
    per_connection: int,
) -> None:
    """Send ``count`` messages, ``per_connection`` per connection at most.

    A broken connection is replaced (at most 3 times in a row without progress).
    """
    group = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
    quit_ = b"QUIT\r\n"
    msg_then_group = message + group
    msg_then_quit = message + quit_
    rset_then_group = b"RSET\r\n" + group
    rset_then_quit = b"RSET\r\n" + quit_
    left = count
    failed_connects = 0

    def fail(why: str) -> None:
        stats.errors += 1
        if len(stats.failures) < 5:
            stats.failures.append(why)

    while left > 0 and time.monotonic() < deadline and failed_connects < 3:
        conn: _Conn | None = None
        in_flight = False  # a message's commands are sent but its outcome is not known
        progress = False
        sent_here = 0
        try:
            conn = _Conn(host, port, hard_deadline, op_timeout)
            if (code := conn.reply()) != 220:
                raise _ProtocolError(f"greeting {code}")
            # EHLO and the first transaction's commands in one write; DATA is a
            # synchronisation point, so the body waits for 354.
            conn.send(b"EHLO localhost\r\n" + group)
            if (code := conn.reply()) != 250:
                raise _ProtocolError(f"EHLO {code}")
            while True:
                in_flight = True
                mail, rcpt, data = conn.reply(), conn.reply(), conn.reply()
                # Stop at the soft deadline, after the message in flight.
                sent_here += 1
                last = left == 1 or sent_here >= per_connection or time.monotonic() >= deadline
                broken = ""
                if data == 354:
                    # Body, end of data and the next transaction in one write.
                    conn.send(msg_then_quit if last else msg_then_group)
                    dot = conn.reply()
                    if mail == 250 and rcpt == 250 and 200 <= dot < 300:
                        stats.accepted += 1
                    else:
                        fail(f"MAIL {mail} RCPT {rcpt} end-of-data {dot}")
                    if dot == 421:
                        broken = "421 after end of data"
                else:
                    fail(f"MAIL {mail} RCPT {rcpt} DATA {data}")
                    conn.send(rset_then_quit if last else rset_then_group)
                    if (code := conn.reply()) != 250:
                        broken = f"RSET {code}"
                left -= 1
                in_flight = False
                progress = True
                if broken:
                    raise _ProtocolError(broken)
                if last:
                    conn.reply()  # 221 to QUIT; its code does not matter
                    break
        except (OSError, _ProtocolError) as exc:
            if in_flight:  # its outcome is unknown: count it lost
                left -= 1
                fail(f"{type(exc).__name__}: {exc}")
            elif len(stats.failures) < 5:
                stats.failures.append(f"{type(exc).__name__}: {exc}")
            failed_connects = 0 if progress else failed_connects + 1
            if time.monotonic() >= hard_deadline:
                break
        finally:
            if conn is not None:
                conn.close()
    if failed_connects >= 3 or time.monotonic() >= hard_deadline:
        stats.errors += left  # the server keeps failing us: the rest is lost
    else:
        stats.unsent += left  # cut by the time cap


def run_python_load(
    host: str,
    port: int,
    *,
    sessions: int,
    messages: int,
    message_size: int,
    timeout: float,
    reconnect: bool = False,
) -> LoadResult:
    """Send ``messages`` messages over ``sessions`` parallel sessions, in Python.

    One thread per session with blocking sockets (I/O releases the GIL), SMTP
    commands pipelined (EHLO+MAIL+RCPT+DATA, then body+next MAIL+RCPT+DATA), so a
    message costs one write and one round trip. Every reply code is checked: a
    message counts as accepted only after 250 to MAIL and RCPT, 354 to DATA and
    2xx after the end of data. No new message starts after ``timeout``; in-flight
    I/O gets a short grace period, then sockets time out. ``reconnect`` opens a
    new connection for every message (connection setup cost included).
    """
    host = require_loopback(host)
    sessions = max(1, min(sessions, messages))
    message = build_message(message_size)
    shares = [messages // sessions + (i < messages % sessions) for i in range(sessions)]
    stats = [_SessionStats() for _ in range(sessions)]
    op_timeout = 30.0
    # I/O in flight at the time cap may finish within this grace period; a
    # stalled server is then abandoned. Big messages get a little more.
    grace = min(10.0, max(2.0, timeout / 5)) + message_size / (10 * _MIB)
    barrier = threading.Barrier(sessions + 1)
    times: dict[str, float] = {}

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            stats[i].errors += shares[i]
            return
        _session(
            host,
            port,
            shares[i],
            message,
            times["deadline"],
            times["hard"],
            op_timeout,
            stats[i],
            1 if reconnect else messages,
        )

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"smtp-load-{i}", daemon=True)
        for i in range(sessions)
    ]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    now = time.monotonic()
    times["deadline"] = now + timeout
    times["hard"] = now + timeout + grace
    start = time.perf_counter()
    barrier.wait(timeout=30)
    for t in threads:
        t.join(timeout=max(0.0, times["hard"] + 5 - time.monotonic()))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    hung = sum(t.is_alive() for t in threads)

    accepted = sum(s.accepted for s in stats)
    errors = sum(s.errors for s in stats)
    unsent = sum(s.unsent for s in stats)
    failures = [f for s in stats for f in s.failures]
    if hung:
        failures.insert(0, f"{hung} session threads still running at the hard deadline")
        errors += max(0, messages - accepted - errors - unsent)
    return LoadResult(
        generator="python",
        reconnect=reconnect,
        sessions=sessions,
        message_size=message_size,
        requested=messages,
        messages=accepted,
        errors=errors,
        seconds=seconds,
        timed_out=unsent > 0 or hung > 0,
        client_cpu_s=cpu,
        detail="; ".join(failures[:3]),
    )


GENERATORS: dict[str, LoadGenerator] = {
    "smtp-source": run_smtp_source,
    "python": run_python_load,
}
"""Generators by name; smtp-source needs `ensure_smtp_source` to succeed."""
