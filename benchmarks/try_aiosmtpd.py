"""Prove the benchmark harness on aiosmtpd (Sink handler) alone.

Runs each load generator against a fresh aiosmtpd and prints throughput, server
CPU per 10,000 messages and RSS per idle connection, next to figures measured
earlier on this machine, so a generator bottleneck or a broken measurement shows
up before the transports are benchmarked. Bounded: about a minute in all.

    python -m benchmarks.try_aiosmtpd [--generator smtp-source|python|both]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import (
    GENERATORS,
    LoadGenerator,
    LoadResult,
    ensure_smtp_source,
)
from benchmarks.procstats import cpu_seconds, idle_connection_cost
from benchmarks.servers import (
    ServerProcess,
    aiosmtpd_command,
    ensure_aiosmtpd,
    free_port,
)

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * 1024
TIME_CAP = 60.0
"""Seconds after which a workload stops starting new messages."""


@dataclass(frozen=True)
class Workload:
    """One measured load shape."""

    name: str
    sessions: int
    messages: int
    message_size: int
    reconnect: bool = False


WORKLOADS = [
    Workload("1 KiB, 1 session", 1, 3_000, KIB),
    Workload("1 KiB, 10 sessions", 10, 6_000, KIB),
    Workload("1 KiB, 50 sessions", 50, 10_000, KIB),
    Workload("1 KiB, 50 sessions, conn/msg", 50, 6_000, KIB, reconnect=True),
    Workload("10 MiB, 1 session", 1, 6, 10 * MIB),
]

REFERENCE = {
    "msgs/s, 1 KiB, 50 sessions": "~1,900",
    "server CPU-s / 10k msgs": "~5",
    "MiB/s, 10 MiB messages": "~23",
    "bytes / idle connection": "~10,400",
}
"""aiosmtpd 1.4.6 Sink, measured earlier on this machine (generator not recorded)."""


@dataclass(frozen=True)
class Row:
    """A load result with the server CPU it cost."""

    workload: Workload
    result: LoadResult
    server_cpu_s: float

    @property
    def cpu_per_10k(self) -> float:
        return self.server_cpu_s / self.result.messages * 10_000 if self.result.messages else 0.0


def measure(name: str, generator: LoadGenerator) -> list[Row]:
    """All workloads against one fresh aiosmtpd, after a short warm-up."""
    rows: list[Row] = []
    port = free_port(HOST)
    with ServerProcess(aiosmtpd_command(port, HOST), port, HOST) as server:
        warm = generator(HOST, port, sessions=10, messages=500, message_size=KIB, timeout=30)
        if not warm.ok:
            print(f"warning: {name} warm-up: {warm}", file=sys.stderr)
        for w in WORKLOADS:
            before = cpu_seconds(server.pid)
            result = generator(
                HOST,
                port,
                sessions=w.sessions,
                messages=w.messages,
                message_size=w.message_size,
                timeout=TIME_CAP,
                reconnect=w.reconnect,
            )
            rows.append(Row(w, result, cpu_seconds(server.pid) - before))
            print(
                f"  {name:<11} {w.name:<30} {result.msgs_per_s:9,.0f} msgs/s"
                f" {result.mib_per_s:7.1f} MiB/s  errors {result.errors}",
                flush=True,
            )
    return rows


def measure_idle(n: int) -> float:
    """Bytes per idle connection, on a fresh server (no memory freed by earlier load)."""
    port = free_port(HOST)
    with ServerProcess(aiosmtpd_command(port, HOST), port, HOST) as server:
        return idle_connection_cost(HOST, port, server.pid, n)


def print_tables(rows: list[Row], idle: float, idle_n: int) -> None:
    """The detailed table, then a summary next to the reference figures."""
    header = (
        f"{'workload':<30} {'generator':<11} {'msgs':>6} {'err':>4} {'secs':>6} "
        f"{'msgs/s':>8} {'MiB/s':>7} {'srv CPU-s/10k':>13} {'gen CPU-s':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in sorted(rows, key=lambda r: (WORKLOADS.index(r.workload), r.result.generator)):
        r = row.result
        flag = " (time cap)" if r.timed_out else ""
        print(
            f"{row.workload.name:<30} {r.generator:<11} {r.messages:>6} {r.errors:>4} "
            f"{r.seconds:>6.2f} {r.msgs_per_s:>8,.0f} {r.mib_per_s:>7.1f} "
            f"{row.cpu_per_10k:>13.2f} {r.client_cpu_s:>9.2f}{flag}"
        )
    print()

    gens = sorted({r.result.generator for r in rows}, key=list(GENERATORS).index)

    def pick(workload: Workload, gen: str) -> Row | None:
        return next((r for r in rows if r.workload == workload and r.result.generator == gen), None)

    fifty, conn_per_msg, big = WORKLOADS[2], WORKLOADS[3], WORKLOADS[4]
    lines: list[tuple[str, str, list[str]]] = []
    for label, workload, value in (
        ("msgs/s, 1 KiB, 1 session", WORKLOADS[0], "msgs"),
        ("msgs/s, 1 KiB, 10 sessions", WORKLOADS[1], "msgs"),
        ("msgs/s, 1 KiB, 50 sessions", fifty, "msgs"),
        ("  same, new connection per msg", conn_per_msg, "msgs"),
        ("server CPU-s / 10k msgs", fifty, "cpu"),
        ("  same, new connection per msg", conn_per_msg, "cpu"),
        ("MiB/s, 10 MiB messages", big, "mib"),
    ):
        cells = []
        for gen in gens:
            found = pick(workload, gen)
            if found is None:
                cells.append("-")
            elif value == "msgs":
                cells.append(f"{found.result.msgs_per_s:,.0f}")
            elif value == "cpu":
                cells.append(f"{found.cpu_per_10k:.2f}")
            else:
                cells.append(f"{found.result.mib_per_s:.1f}")
        lines.append((label, REFERENCE.get(label, ""), cells))
    idle_label = "bytes / idle connection"
    lines.append((idle_label, REFERENCE[idle_label], [f"{idle:,.0f} (n={idle_n})"] * len(gens)))

    print(f"{'aiosmtpd 1.4.6 Sink':<32} {'reference':>10} " + " ".join(f"{g:>16}" for g in gens))
    for label, ref, cells in lines:
        print(f"{label:<32} {ref:>10} " + " ".join(f"{c:>16}" for c in cells))
    errors = sum(r.result.errors for r in rows)
    print(f"\nerrors: {errors}; bytes/idle connection does not depend on the generator")


def main(argv: list[str] | None = None) -> int:
    """Run the workloads with the chosen generators; exit 1 on any error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--generator", choices=[*GENERATORS, "both"], default="both")
    parser.add_argument("--idle-connections", type=int, default=500)
    args = parser.parse_args(argv)

    ensure_aiosmtpd()
    names = list(GENERATORS) if args.generator == "both" else [args.generator]
    if "smtp-source" in names and ensure_smtp_source() is None:
        print("skipping smtp-source (see reason above)", file=sys.stderr)
        names.remove("smtp-source")
    if not names:
        return 1
    rows: list[Row] = []
    print(f"measuring with: {', '.join(names)}", flush=True)
    for name in names:
        rows.extend(measure(name, GENERATORS[name]))
    idle = measure_idle(args.idle_connections)
    print()
    print_tables(rows, idle, args.idle_connections)
    bad = [r for r in rows if r.result.errors or r.result.timed_out]
    for r in bad:
        print(f"problem: {r.workload.name} {r.result.generator}: {r.result}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
