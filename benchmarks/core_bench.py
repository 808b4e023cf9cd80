"""Micro-benchmark of the sans-IO core, without sockets.

Run as ``python benchmarks/core_bench.py`` (stdlib only, well under a minute). It measures:

1. whole small transactions per second (EHLO, MAIL, RCPT, DATA with a 1 KiB body, QUIT), each
   on a fresh `SmtpConnection`, fed one chunk per client round trip, every decision accepted;
2. DATA throughput for a 10 MiB text message fed in 64 KiB chunks, for each CRLF mode, with
   and without dot-stuffed lines, consuming every `DataChunk`;
3. two references over the very same chunks: (a) a bare bulk pass, one ``find``, ``replace``
   and ``count`` per chunk (the C-level work of a whole-buffer reader, with no state machine
   and no chunk-boundary handling), and (b) a per-line Python loop (buffer, ``find`` per line,
   unstuffing per line).

The target is a core DATA path at least as fast as (a).

Throughput is wire octets (dot-stuffed body plus terminator) per second, in MiB/s; each figure
is the best of several repeats, timed with `time.perf_counter` with the garbage collector off;
the repeats are interleaved (one round runs every benchmark) so that load from other processes
skews the ratios as little as possible, and extra rounds are run (up to a time budget) while a
benchmark's best shot still shows, by its CPU time, that it shared the CPU; such rows get "*".

Options: ``--quick`` (fewer repeats), ``--profile`` (cProfile of one 10 MiB DATA pass),
``--smtpcore DIR`` (import ``smtpcore`` from DIR, e.g. a scratch copy, to compare a change;
by default the ``smtpcore`` next to this file is used, not an installed one).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtpcore import CrlfMode, SmtpConfig, SmtpConnection

KiB = 1024
MiB = 1024 * KiB
BODY_SIZE = 10 * MiB
CHUNK_SIZE = 64 * KiB
SMALL_BODY_SIZE = 1 * KiB
TERMINATOR = b"\r\n.\r\n"
DOT_LINE_EVERY = 40
"""In the dotted variant, about one body line in this many starts with '.' (then stuffed)."""

_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more out up into do any your what some can only other new time could about "
    "message server client delivery queue envelope recipient mailbox header content transfer "
    "encoding boundary multipart charset quoted printable base64 subject reference"
)
_WORDS = tuple(_WORD_TEXT.split())


# ---------------------------------------------------------------------------- test data


def make_body(size: int, *, dots: bool, seed: int = 5321) -> bytes:
    """A plausible message (headers, blank line, text) of about ``size`` octets, not stuffed.

    Lines are CRLF-terminated and ~76 characters long; with ``dots`` some lines begin with
    '.' (a lone '.' line among them), as quoted text and signatures do.
    """
    rng = random.Random(seed)
    out: list[bytes] = [
        b"From: Alice <alice@example.org>\r\n",
        b"To: Bob <bob@example.net>\r\n",
        b"Subject: core benchmark message\r\n",
        b"Message-ID: <bench.1@example.org>\r\n",
        b"MIME-Version: 1.0\r\n",
        b"Content-Type: text/plain; charset=us-ascii\r\n",
        b"\r\n",
    ]
    total = sum(map(len, out))
    while total < size:
        words: list[str] = []
        width = rng.randint(60, 76)
        length = 0
        while length < width:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        line = " ".join(words)[:76]
        if dots and rng.randrange(DOT_LINE_EVERY) == 0:
            line = "." if rng.randrange(8) == 0 else "." + line[1:]
        encoded = line.encode("ascii") + b"\r\n"
        out.append(encoded)
        total += len(encoded)
    return b"".join(out)


def stuff(body: bytes) -> bytes:
    """The DATA wire form of a body ending in CRLF: dot-stuffed, then ``.CRLF``."""
    assert body.endswith(b"\r\n")
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + TERMINATOR[2:]


def split_chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    body: bytes
    chunks: list[bytes]

    @property
    def wire_size(self) -> int:
        return sum(map(len, self.chunks))


def make_workload(name: str, *, dots: bool) -> Workload:
    body = make_body(BODY_SIZE, dots=dots)
    return Workload(name, body, split_chunks(stuff(body), CHUNK_SIZE))


# ---------------------------------------------------------------------------- timing


Shot = tuple[float, float]
"""Wall time (`time.perf_counter`) and CPU time (`time.process_time`) of one timed run."""
CONTENDED = 1.05
"""A shot whose wall time exceeds its CPU time by this factor shared the CPU with others."""


def timed(run: Callable[[], object]) -> Shot:
    """Time one call of ``run``, with the garbage collector off while it runs."""
    gc.collect()
    gc.disable()
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
        return wall, time.process_time() - cpu
    finally:
        gc.enable()


@dataclass(slots=True)
class Bench:
    """One line of the table: ``shot()`` times one run of ``amount`` units (MiB or tx)."""

    name: str
    shot: Callable[[], Shot]
    amount: float
    unit: str
    best: float = float("inf")
    best_cpu: float = float("inf")

    @property
    def rate(self) -> float:
        return self.amount / self.best

    @property
    def contended(self) -> bool:
        """True if even the best shot lost time to other processes."""
        return self.best > CONTENDED * self.best_cpu

    def take(self) -> None:
        wall, cpu = self.shot()
        if wall < self.best:
            self.best, self.best_cpu = wall, cpu


def run_rounds(benches: Sequence[Bench], rounds: int, budget: float) -> int:
    """Time every bench once per round, keeping each one's best (smallest wall time).

    Interleaving the repeats spreads the load of other processes over all benches alike, so
    the ratios between them stay meaningful on a shared machine. After ``rounds`` rounds,
    more are run (within ``budget`` seconds) while some bench has no uncontended shot yet.
    Returns the number of rounds run.
    """
    deadline = time.perf_counter() + budget
    done = 0
    while done < rounds or (
        time.perf_counter() < deadline and any(bench.contended for bench in benches)
    ):
        for bench in benches:
            bench.take()
        done += 1
    return done


# ---------------------------------------------------------------------------- the core


class Core:
    """The pieces of ``smtpcore`` used here, imported once (possibly from a scratch copy)."""

    def __init__(self) -> None:
        import smtpcore

        self.module = smtpcore
        self.SmtpConfig = smtpcore.SmtpConfig
        self.SmtpConnection = smtpcore.SmtpConnection
        self.CrlfMode = smtpcore.CrlfMode
        self.DataChunk = smtpcore.DataChunk
        self.MessageComplete = smtpcore.MessageComplete
        self.ConnectionClosed = smtpcore.ConnectionClosed
        self.NEED_DATA = smtpcore.NEED_DATA
        self.PAUSED = smtpcore.PAUSED

    def pump(self, conn: SmtpConnection) -> int:
        """Take events until NEED_DATA/PAUSED/close, accepting decisions; content octets seen."""
        need_data, paused, data_chunk = self.NEED_DATA, self.PAUSED, self.DataChunk
        closed = self.ConnectionClosed
        seen = 0
        while True:
            event = conn.next_event()
            if event is need_data or event is paused:
                return seen
            kind = type(event)
            if kind is data_chunk:
                seen += len(event.data)  # type: ignore[union-attr]
            elif kind is closed:
                return seen
            elif event.needs_reply:  # type: ignore[union-attr]
                conn.accept(event)  # type: ignore[arg-type]


TRANSACTION_COMMANDS = (
    b"EHLO client.example.org\r\n",
    b"MAIL FROM:<alice@example.org> SIZE=1100\r\n",
    b"RCPT TO:<bob@example.net>\r\n",
    b"DATA\r\n",
)


def transaction_chunks() -> list[bytes]:
    body = make_body(SMALL_BODY_SIZE, dots=False, seed=1)[:SMALL_BODY_SIZE]
    body = body[: body.rfind(b"\r\n") + 2]  # whole lines, just under 1 KiB
    body += b"x" * (SMALL_BODY_SIZE - len(body) - 2) + b"\r\n"
    assert len(body) == SMALL_BODY_SIZE
    return [*TRANSACTION_COMMANDS, stuff(body), b"QUIT\r\n"]


def run_transaction(core: Core, config: SmtpConfig, chunks: Sequence[bytes]) -> bytes:
    """One whole session, as a client that waits for each reply; returns what was written."""
    conn = core.SmtpConnection(config)
    pump = core.pump
    pump(conn)
    out = conn.data_to_send()
    for chunk in chunks:
        conn.receive_data(chunk)
        pump(conn)
        out += conn.data_to_send()
    return out


def transactions_bench(core: Core, count: int) -> Bench:
    """Transactions per second, ``count`` sessions per timed shot."""
    config = core.SmtpConfig(hostname="mx.example.net")
    chunks = transaction_chunks()
    written = run_transaction(core, config, chunks)
    codes = [line[:3] for line in written.split(b"\r\n")[:-1] if line[3:4] != b"-"]
    expected = [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert codes == expected, f"unexpected replies: {written!r}"

    def loop() -> None:
        for _ in range(count):
            run_transaction(core, config, chunks)

    return Bench("transaction EHLO/MAIL/RCPT/DATA 1 KiB/QUIT", partial(timed, loop), count, "tx/s")


def open_data(core: Core, config: SmtpConfig) -> SmtpConnection:
    """A connection that has just accepted DATA (354 sent)."""
    conn = core.SmtpConnection(config)
    core.pump(conn)
    for command in TRANSACTION_COMMANDS:
        conn.receive_data(command)
        core.pump(conn)
    conn.data_to_send()
    assert conn.reading_data
    return conn


def feed_data(core: Core, conn: SmtpConnection, chunks: Sequence[bytes]) -> int:
    """Feed the DATA chunks; consume the events; return the content octets delivered."""
    need_data, data_chunk, complete = core.NEED_DATA, core.DataChunk, core.MessageComplete
    receive, next_event = conn.receive_data, conn.next_event
    seen = 0
    done = False
    for chunk in chunks:
        receive(chunk)
        while True:
            event = next_event()
            if event is need_data:
                break
            kind = type(event)
            if kind is data_chunk:
                seen += len(event.data)  # type: ignore[union-attr]
            elif kind is complete:
                conn.accept(event)  # type: ignore[arg-type]
                done = True
            elif event is core.PAUSED:
                raise AssertionError("paused with no decision taken")
    assert done, "the message never completed"
    return seen


def check_data_path(core: Core, workload: Workload, mode: CrlfMode) -> None:
    """Outside timing: the core delivers exactly the original body and answers 250."""
    config = core.SmtpConfig(hostname="mx.example.net", crlf_mode=mode)
    conn = open_data(core, config)
    content = bytearray()
    for chunk in workload.chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not core.NEED_DATA:
            if isinstance(event, core.DataChunk):
                content += event.data
            elif isinstance(event, core.MessageComplete):
                conn.accept(event)
    assert bytes(content) == workload.body, f"{mode}: delivered content differs from the body"
    assert conn.data_to_send().startswith(b"250 "), f"{mode}: message not accepted"


def data_bench(core: Core, workload: Workload, mode: CrlfMode) -> Bench:
    """MiB/s of the DATA path alone: each shot opens a fresh session (not timed) first."""
    check_data_path(core, workload, mode)
    config = core.SmtpConfig(hostname="mx.example.net", crlf_mode=mode)
    chunks = workload.chunks

    def shot() -> Shot:
        conn = open_data(core, config)
        return timed(partial(feed_data, core, conn, chunks))

    name = f"core DATA crlf={mode.value} [{workload.name}]"
    return Bench(name, shot, workload.wire_size / MiB, "MiB/s")


# ---------------------------------------------------------------------------- references


def bulk_pass(chunks: Sequence[bytes]) -> int:
    """Reference (a): one find, one replace and one count per chunk, nothing else."""
    total = 0
    for chunk in chunks:
        chunk.find(TERMINATOR)
        total += len(chunk.replace(b"\r\n.", b"\r\n"))
        chunk.count(b"\n")
    return total


def per_line(chunks: Sequence[bytes]) -> int:
    """Reference (b): a line splitter in Python (buffer + find per line), unstuffing per line."""
    buf = b""
    total = 0
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        find = buf.find
        lines: list[bytes] = []
        append = lines.append
        pos = 0
        while (end := find(b"\n", pos)) >= 0:
            line = buf[pos : end + 1]
            pos = end + 1
            if line[:1] == b".":
                if line == b".\r\n":
                    return total + sum(map(len, lines))
                line = line[1:]
            append(line)
        total += sum(map(len, lines))
        buf = buf[pos:]
    raise AssertionError("no terminator")


def reference_bench(name: str, run: Callable[[Sequence[bytes]], int], workload: Workload) -> Bench:
    shot = partial(timed, partial(run, workload.chunks))
    return Bench(f"{name} [{workload.name}]", shot, workload.wire_size / MiB, "MiB/s")


# ---------------------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def profile_data(core: Core, workload: Workload, mode: CrlfMode) -> str:
    config = core.SmtpConfig(hostname="mx.example.net", crlf_mode=mode)
    conn = open_data(core, config)
    profiler = cProfile.Profile()
    profiler.enable()
    feed_data(core, conn, workload.chunks)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(18)
    return stream.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--profile", action="store_true", help="cProfile one DATA pass")
    parser.add_argument(
        "--smtpcore", type=Path, metavar="DIR", help="import smtpcore from DIR (a scratch copy)"
    )
    args = parser.parse_args(argv)
    root = args.smtpcore or Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    core = Core()

    rounds, budget = (3, 5.0) if args.quick else (9, 30.0)
    tx_count = 300 if args.quick else 1000

    started = time.perf_counter()
    print(f"Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"CPU    {cpu_model()} x {os.cpu_count()}; load average {load_average()}")
    print(f"core   {Path(core.module.__file__ or '?').parent}")
    print(
        f"DATA   {BODY_SIZE // MiB} MiB body in {CHUNK_SIZE // KiB} KiB chunks; "
        "MiB/s counts wire octets"
    )

    workloads = [make_workload("dotted", dots=True), make_workload("no dots", dots=False)]
    modes = [core.CrlfMode.NORMALIZE, core.CrlfMode.STRICT, core.CrlfMode.LEAVE]
    if args.profile:
        print(profile_data(core, workloads[0], core.CrlfMode.NORMALIZE))

    tx = transactions_bench(core, tx_count)
    groups: list[tuple[Workload, list[Bench], Bench, Bench]] = []
    for workload in workloads:
        cores = [data_bench(core, workload, mode) for mode in modes]
        bulk = reference_bench("ref (a) bulk find/replace/count", bulk_pass, workload)
        lines = reference_bench("ref (b) per-line Python loop", per_line, workload)
        groups.append((workload, cores, bulk, lines))
    benches = [tx, *(b for _, cores, *refs in groups for b in (*cores, *refs))]
    done = run_rounds(benches, rounds, budget)

    def mark(bench: Bench) -> str:
        return "*" if bench.contended else " "

    rows: list[tuple[str, str, str, str]] = [
        (tx.name, f"{tx.rate:,.0f} {tx.unit}{mark(tx)}", "", "")
    ]
    below: list[str] = []
    for workload, cores, bulk, lines in groups:
        stuffed = workload.wire_size - 3 - len(workload.body)
        rows.append((f"-- {workload.name} body ({stuffed} dot-stuffed lines)", "", "", ""))
        for bench in (*cores, bulk, lines):
            rows.append(
                (
                    bench.name,
                    f"{bench.rate:8.1f} {bench.unit}{mark(bench)}",
                    f"{bench.rate / bulk.rate:5.2f}",
                    f"{bench.rate / lines.rate:5.2f}",
                )
            )
        below += [bench.name for bench in cores if bench.rate < bulk.rate]

    header = ("benchmark", "speed", "vs bulk", "vs per-line")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(f"\nbest of {done} interleaved rounds (perf_counter wall time, gc off)")
    if any(bench.contended for bench in benches):
        print(f"* even the best shot ran > {CONTENDED:.2f}x its CPU time: the CPU was shared")
    print("target: core DATA / bulk pass (column 'vs bulk') >= 1.00")
    if below:
        print("below target: " + ", ".join(name.removeprefix("core DATA ") for name in below))
    print(f"total run {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
