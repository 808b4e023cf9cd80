"""Benchmark every smtpcore transport against aiosmtpd, one server after the other, in one run.

    python -m benchmarks.run [--quick] [--only NAMES] [--generators NAMES] [--no-pin]
    python -m benchmarks.run --profile NAME [--profile-seconds S]

Each server runs as a subprocess on 127.0.0.1 with a sink handler (aiosmtpd 1.4.6 with
``aiosmtpd.handlers.Sink``; ours with ``smtpcore serve --handler sink``) and is driven by the
same load generators: Postfix's C ``smtp-source`` (no pipelining: one round trip per command)
when it can be had, and the Python generator of `benchmarks.loadgen` (pipelined: one round
trip per message). For each server and generator it measures

* msgs/s for 1 KiB messages at 1, 10 and 50 sessions (each session kept open for many
  messages), and at 50 sessions with a new connection per message (smtp-source's default
  way of sending, which includes connection setup and teardown in every message);
* the server's CPU seconds per 10,000 messages (user+system from /proc, 50-session runs);
* MiB/s for 10 MiB messages (one session, a few messages);

and, once per server, on a freshly started one before any load, the server's RSS growth per
idle connection (500 connections that have read their greeting). Every ratio compares a
server with aiosmtpd measured by the same generator in the same run, so the table stays
meaningful on a machine that is slower or busier than the one that set the targets.

The "compiled" servers are the same transports run from a copy of the tree built with
``SMTPCORE_COMPILE=1`` (the core, the session driver and the asyncio transport compiled with
mypyc, see setup.py and `benchmarks.compiled`); the build takes about half a minute at the start.

Beside them run the bare-bones servers of `benchmarks.bare` (canned replies, no SMTP logic)
on asyncio, uvloop, trio and threads: how far each event loop lets any server go on this
machine. The targets table prints each transport's ratio next to its loop's ceiling.

Every server runs on one CPU and the load generators on the others (`split_cpus`; ``--no-pin``
lets them share every CPU). A full run makes three rounds over all servers (each server started
afresh per round) and keeps each figure's best: highest rate, lowest CPU per message, lowest
memory (on a small virtual machine one round can be much slower than the next). Errors,
time caps and an unsaturated server (one that used well under a core: the generator or the
round trips, not the server, set the pace) are noted below the table. The full run takes
about 8-12 minutes (hard budget 15), ``--quick`` (one round, fewer messages) about 3
(hard budget 4). Results also go to ``benchmarks/results.md`` as Markdown.

``--profile NAME`` instead runs one server under cProfile (every thread profiled) while the
50-session load runs for a few seconds, then prints where the server's time went.

aiosmtpd is always measured (the ratios need it); it is installed with pip if missing (it is
the ``bench`` extra). Every server started is stopped on exit, on errors and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import io
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.compiled import build_compiled_tree
from benchmarks.core_bench import cpu_model, load_average
from benchmarks.loadgen import (
    CACHE_DIR,
    GENERATORS,
    LoadGenerator,
    LoadResult,
    ensure_smtp_source,
    run_python_load,
)
from benchmarks.procstats import cpu_seconds, idle_connection_cost
from benchmarks.servers import (
    AIOSMTPD_VERSION,
    ServerProcess,
    aiosmtpd_command,
    ensure_aiosmtpd,
    free_port,
)

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.md"
KIB = 1024
MIB = 1024 * KIB
REFERENCE = "aiosmtpd"
UNSATURATED = 0.70
"""A single-threaded server below this share of one core was not the bottleneck."""
BUSY_MACHINE = 0.15
"""Below this share of idle CPU (all cores) the machine was saturated during a run."""


# ---------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    """One server under test: aiosmtpd (``transport`` None), an ``smtpcore serve``, or a
    bare-bones ceiling of `benchmarks.bare` (``bare``)."""

    name: str
    transport: str | None
    loop: str = "asyncio"
    needs: tuple[str, ...] = ()
    """Modules that must be importable, else the server is skipped (with a note)."""
    bare: bool = False
    compiled: bool = False
    """Run from the compiled tree (`benchmarks.compiled`) instead of the sources."""

    def module_argv(self, port: int) -> list[str]:
        """``[module, *args]``: what follows ``python -m`` to run this server."""
        if self.transport is None:
            return aiosmtpd_command(port, HOST)[2:]
        if self.bare:
            loop = self.transport if self.loop == "asyncio" else self.loop
            return ["benchmarks.bare", loop, "--host", HOST, "--port", str(port)]
        argv = ["transports.cli", "serve", "--transport", self.transport]
        if self.loop != "asyncio":
            argv += ["--loop", self.loop]
        return [*argv, "--handler", "sink", "--host", HOST, "--port", str(port)]

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", *self.module_argv(port)]

    def missing(self) -> list[str]:
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


SERVERS = [
    ServerSpec(REFERENCE, None),
    ServerSpec("threads", "threads"),
    ServerSpec("asyncio", "asyncio"),
    ServerSpec("asyncio+uvloop", "asyncio", "uvloop", ("uvloop",)),
    ServerSpec("trio", "trio", needs=("trio",)),
    ServerSpec("anyio", "anyio", needs=("anyio",)),
    ServerSpec("anyio+uvloop", "anyio", "uvloop", ("anyio", "uvloop")),
    ServerSpec("asyncio compiled", "asyncio", needs=("mypyc",), compiled=True),
    ServerSpec("asyncio+uvloop compiled", "asyncio", "uvloop", ("uvloop", "mypyc"), compiled=True),
    ServerSpec("trio compiled", "trio", needs=("trio", "mypyc"), compiled=True),
    ServerSpec("threads compiled", "threads", needs=("mypyc",), compiled=True),
    ServerSpec("bare asyncio", "asyncio", bare=True),
    ServerSpec("bare uvloop", "asyncio", "uvloop", ("uvloop",), bare=True),
    ServerSpec("bare trio", "trio", needs=("trio",), bare=True),
    ServerSpec("bare threads", "threads", bare=True),
]
SERVER_NAMES = [s.name for s in SERVERS]
BARE = {s.name for s in SERVERS if s.bare}
CEILING = {
    "threads": "bare threads",
    "asyncio": "bare asyncio",
    "asyncio+uvloop": "bare uvloop",
    "trio": "bare trio",
    "anyio": "bare asyncio",
    "anyio+uvloop": "bare uvloop",
    "asyncio compiled": "bare asyncio",
    "asyncio+uvloop compiled": "bare uvloop",
    "trio compiled": "bare trio",
    "threads compiled": "bare threads",
}
"""The bare-bones server on the same event loop: the most any server there can reach."""


# ---------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    column: str
    """Short table heading."""
    sessions: int
    messages: int
    message_size: int
    reconnect: bool = False


@dataclass(frozen=True)
class Plan:
    """Counts and time limits of a run (full or quick)."""

    rounds: int
    workloads: tuple[Workload, ...]
    time_cap: float
    """Seconds after which one workload starts no new message."""
    budget: float
    """Seconds after which no new workload (nor server) starts."""
    warmup_messages: int
    idle_connections: int
    idle_settle: float


def make_plan(quick: bool) -> Plan:
    m1, m10, m50, big = (1_500, 3_000, 5_000, 8) if quick else (3_000, 5_000, 10_000, 20)
    workloads = (
        Workload("s1", "1 KiB, 1 session", "msgs/s @1", 1, m1, KIB),
        Workload("s10", "1 KiB, 10 sessions", "msgs/s @10", 10, m10, KIB),
        Workload("s50", "1 KiB, 50 sessions", "msgs/s @50", 50, m50, KIB),
        Workload(
            "conn",
            "1 KiB, 50 sessions, conn/msg",
            "msgs/s @50 conn/msg",
            50,
            m50 // 2,
            KIB,
            reconnect=True,
        ),
        Workload("big", "10 MiB, 1 session", "MiB/s 10 MiB", 1, big, 10 * MIB),
    )
    return Plan(
        rounds=1 if quick else 3,
        workloads=workloads,
        time_cap=5.0 if quick else 12.0,
        budget=240.0 if quick else 900.0,
        warmup_messages=300 if quick else 600,
        idle_connections=500,
        idle_settle=0.5 if quick else 1.0,
    )


# ---------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    server: str
    generator: str
    workload: Workload
    round: int
    result: LoadResult
    server_cpu_s: float
    machine_idle: float
    """Share of all CPUs' time that was idle during the run (/proc/stat)."""

    @property
    def clean(self) -> bool:
        return self.result.errors == 0 and self.result.messages > 0

    @property
    def util(self) -> float:
        """Server CPU seconds per wall second (1.0 = one core busy throughout)."""
        return self.server_cpu_s / self.result.seconds if self.result.seconds > 0 else 0.0

    @property
    def gen_share(self) -> float:
        """Generator CPU seconds per wall second."""
        r = self.result
        return r.client_cpu_s / r.seconds if r.seconds > 0 else 0.0

    @property
    def cpu_per_10k(self) -> float:
        msgs = self.result.messages
        return self.server_cpu_s / msgs * 10_000 if msgs else float("nan")


@dataclass
class Results:
    generators: list[str]
    servers: list[str]
    runs: list[Measurement] = field(default_factory=list)
    idle: dict[str, list[float]] = field(default_factory=dict)
    """Bytes of RSS per idle connection, one entry per fresh start."""
    failures: dict[str, list[str]] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    """Servers that did not start or died: not started again in later rounds."""
    skipped: list[str] = field(default_factory=list)

    def fail(self, server: str, why: str, *, fatal: bool = False) -> None:
        self.failures.setdefault(server, []).append(why)
        if fatal:
            self.broken.add(server)

    def of(self, server: str, generator: str, key: str) -> list[Measurement]:
        return [
            m
            for m in self.runs
            if m.server == server and m.generator == generator and m.workload.key == key
        ]

    def best(self, server: str, generator: str, key: str) -> Measurement | None:
        """Highest-rate clean run (any run if none is clean)."""
        found = self.of(server, generator, key)
        pool = [m for m in found if m.clean] or found
        return max(pool, key=lambda m: m.result.msgs_per_s, default=None)

    def best_cpu(self, server: str, generator: str, key: str = "s50") -> Measurement | None:
        """Lowest CPU per message among the clean runs of workload ``key``."""
        pool = [m for m in self.of(server, generator, key) if m.clean]
        return min(pool, key=lambda m: m.cpu_per_10k, default=None)

    def idle_kb(self, server: str) -> float | None:
        values = self.idle.get(server)
        return min(values) / 1024 if values else None


def cpu_times() -> tuple[int, int]:
    """All CPUs' (total, idle + iowait) jiffies from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a dead, not yet reaped child is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


class Runner:
    """Runs the plan, one server at a time, and collects `Results`."""

    def __init__(
        self,
        plan: Plan,
        servers: Sequence[ServerSpec],
        generators: Sequence[str],
        compiled_tree: Path | None = None,
        server_cpus: set[int] | None = None,
    ):
        self.plan = plan
        self.server_cpus = server_cpus
        """The CPUs every server runs on (None: any), apart from the load generators'."""
        self.compiled_tree = compiled_tree
        """Where the compiled servers run from (None: no compiled server in this run)."""
        self.servers = list(servers)
        self.generators = list(generators)
        self.results = Results(list(generators), [s.name for s in servers])
        self.started = time.monotonic()
        self.deadline = self.started + plan.budget
        self.busy_jiffies = [0, 0]
        """All CPUs' total and idle jiffies summed over the measured runs."""

    def machine_idle(self) -> float | None:
        total, idle = self.busy_jiffies
        return idle / total if total else None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self) -> Results:
        durations: dict[str, float] = {}
        for rnd in range(1, self.plan.rounds + 1):
            gens = self.generators if rnd % 2 else self.generators[::-1]
            for spec in self.servers:
                if spec.name in self.results.broken:
                    continue
                estimate = durations.get(spec.name, 0.0) * 1.2
                if self.remaining() <= 0 or estimate > self.remaining():
                    self.results.skipped.append(f"round {rnd} of {spec.name} (time budget)")
                    continue
                t0 = time.monotonic()
                print(f"-- round {rnd}/{self.plan.rounds}: {spec.name}", flush=True)
                self.run_server(spec, rnd, gens)
                durations.setdefault(spec.name, time.monotonic() - t0)
        return self.results

    def run_server(self, spec: ServerSpec, rnd: int, gens: Sequence[str]) -> None:
        port = free_port(HOST)
        try:
            cwd = self.compiled_tree if spec.compiled else ROOT
            server = ServerProcess(spec.argv(port), port, HOST, cwd=cwd, cpus=self.server_cpus)
            server.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            self.results.fail(spec.name, f"did not start: {first_line(exc)}", fatal=True)
            print(f"   FAILED to start: {exc}", file=sys.stderr, flush=True)
            return
        try:
            self.measure_idle(spec, server)
            warm = run_python_load(
                HOST,
                port,
                sessions=10,
                messages=self.plan.warmup_messages,
                message_size=KIB,
                timeout=10,
            )
            if not warm.ok:
                print(f"   warm-up not clean: {warm.detail or warm}", file=sys.stderr)
            for gen in gens:
                for workload in self.plan.workloads:
                    if not alive(server.pid):
                        return  # reported below
                    if self.remaining() <= 0:
                        self.results.skipped.append(
                            f"{spec.name} {gen} {workload.label} round {rnd} (time budget)"
                        )
                        continue
                    self.measure(spec, server, gen, workload, rnd)
        finally:
            tail = server.log_tail()
            running = alive(server.pid)
            rc = server.stop()
            if not running:
                if spec.name not in self.results.broken:
                    why = f"died during the run (status {rc}): {last_line(tail)}"
                    self.results.fail(spec.name, why, fatal=True)
                    print(f"   {spec.name} {why}\n{tail}", file=sys.stderr, flush=True)
            elif rc == -signal.SIGKILL:
                why = f"ignored SIGTERM for {server.stop_timeout:g} s and was killed"
                self.results.fail(spec.name, why)
                print(f"   {spec.name} {why}", file=sys.stderr)
            elif rc not in (0, None, -signal.SIGTERM):
                self.results.fail(spec.name, f"exited with status {rc}: {last_line(tail)}")
                print(f"   {spec.name} exited with status {rc}\n{tail}", file=sys.stderr)

    def measure_idle(self, spec: ServerSpec, server: ServerProcess) -> None:
        n = self.plan.idle_connections
        try:
            cost = idle_connection_cost(
                HOST, server.port, server.pid, n, settle=self.plan.idle_settle
            )
        except (OSError, RuntimeError, TimeoutError) as exc:
            self.results.fail(spec.name, f"idle connections: {first_line(exc)}")
            print(f"   idle connections failed: {exc}", file=sys.stderr, flush=True)
            return
        self.results.idle.setdefault(spec.name, []).append(cost)
        print(f"   {n} idle connections: {cost / 1024:,.1f} KB each", flush=True)

    def measure(
        self, spec: ServerSpec, server: ServerProcess, gen: str, workload: Workload, rnd: int
    ) -> None:
        generator: LoadGenerator = GENERATORS[gen]
        timeout = max(1.0, min(self.plan.time_cap, self.remaining()))
        before = cpu_seconds(server.pid)
        total0, idle0 = cpu_times()
        try:
            result = generator(
                HOST,
                server.port,
                sessions=workload.sessions,
                messages=workload.messages,
                message_size=workload.message_size,
                timeout=timeout,
                reconnect=workload.reconnect,
            )
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            self.results.fail(spec.name, f"{gen} {workload.label}: {first_line(exc)}")
            print(f"   {gen} {workload.label}: {exc}", file=sys.stderr, flush=True)
            return
        used = cpu_seconds(server.pid) - before
        total1, idle1 = cpu_times()
        idle = (idle1 - idle0) / (total1 - total0) if total1 > total0 else 0.0
        self.busy_jiffies[0] += total1 - total0
        self.busy_jiffies[1] += idle1 - idle0
        m = Measurement(spec.name, gen, workload, rnd, result, used, idle)
        self.results.runs.append(m)
        r = result
        flags = (" TIME CAP" if r.timed_out else "") + (f" ERRORS {r.errors}" if r.errors else "")
        cpu = f"{used:5.2f} CPU-s" if workload.key == "big" else f"{m.cpu_per_10k:5.2f} CPU-s/10k"
        print(
            f"   {gen:<11} {workload.label:<30} {r.msgs_per_s:9,.0f} msgs/s {r.mib_per_s:8.1f}"
            f" MiB/s  srv {cpu}, {m.util:4.0%} of a core;"
            f" gen {m.gen_share:4.0%}; machine idle {idle:4.0%}{flags}",
            flush=True,
        )
        if r.errors and r.detail:
            print(f"     {r.detail}", file=sys.stderr, flush=True)


def first_line(obj: object) -> str:
    text = str(obj).strip()
    return text.splitlines()[0][:200] if text else type(obj).__name__


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    metric: str
    """A workload key (msgs/s or MiB/s ratio), ``cpu:KEY`` (aiosmtpd CPU/ours in that
    workload), or idle (KB)."""
    label: str
    value: float


def ratio_targets(factor: float) -> list[Target]:
    return [
        Target("s50", f"msgs/s @50 >= {factor:g}x", factor),
        Target("conn", f"msgs/s @50 conn/msg >= {factor:g}x", factor),
        Target("cpu:s50", f"CPU/msg @50 >= {factor:g}x less", factor),
        Target("cpu:conn", f"CPU/msg @50 conn/msg >= {factor:g}x less", factor),
        Target("big", f"MiB/s >= {factor:g}x", factor),
    ]


TARGETS: dict[str, list[Target]] = {
    "threads": [Target("s10", "msgs/s @10 >= 2x", 2.0)],
    "asyncio": [*ratio_targets(6.0), Target("idle", "idle conn <= 3 KB", 3.0)],
    "asyncio+uvloop": [*ratio_targets(6.0), Target("idle", "idle conn <= 3 KB", 3.0)],
    "trio": ratio_targets(3.0),
    "anyio": ratio_targets(3.0),
    "anyio+uvloop": ratio_targets(3.0),
    "asyncio compiled": [*ratio_targets(6.0), Target("idle", "idle conn <= 3 KB", 3.0)],
    "asyncio+uvloop compiled": [*ratio_targets(6.0), Target("idle", "idle conn <= 3 KB", 3.0)],
    "trio compiled": ratio_targets(3.0),
    "threads compiled": [Target("s10", "msgs/s @10 >= 2x", 2.0)],
}


def ratio(res: Results, server: str, gen: str, metric: str) -> float | None:
    """Ours relative to aiosmtpd, same generator, same run (higher is better)."""
    if metric.startswith("cpu"):
        key = metric.partition(":")[2] or "s50"
        ours, ref = res.best_cpu(server, gen, key), res.best_cpu(REFERENCE, gen, key)
        if ours is None or ref is None or ours.cpu_per_10k <= 0:
            return None
        return ref.cpu_per_10k / ours.cpu_per_10k
    ours_m, ref_m = res.best(server, gen, metric), res.best(REFERENCE, gen, metric)
    if ours_m is None or ref_m is None or ref_m.result.msgs_per_s <= 0:
        return None
    return ours_m.result.msgs_per_s / ref_m.result.msgs_per_s


# ---------------------------------------------------------------------------- report


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def text(self) -> str:
        widths = [
            max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        out = [self.title, line(self.header), "  ".join("-" * w for w in widths)]
        return "\n".join(out + [line(r) for r in self.rows])

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(out)


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def mark(m: Measurement) -> str:
    return ("!" if not m.clean else "") + ("~" if m.result.timed_out else "")


def generator_table(res: Results, gen: str, plan: Plan) -> Table:
    keys = [w.key for w in plan.workloads]
    header = ["server"]
    for w in plan.workloads:
        header += [w.column, "vs aio"]
    header += ["CPU-s/10k msgs @50", "aio/ours", "CPU-s/10k conn/msg", "aio/ours"]
    table = Table(f"Generator: {gen}", header)
    for server in res.servers:
        if server in res.failures and not any(m.server == server for m in res.runs):
            table.rows.append([server, *(["FAILED"] + [""] * (len(header) - 2))])
            continue
        row = [server]
        for key in keys:
            m = res.best(server, gen, key)
            if m is None:
                row += ["-", "-"]
                continue
            value = m.result.mib_per_s if key == "big" else m.result.msgs_per_s
            text = f"{value:,.1f}" if key == "big" else f"{value:,.0f}"
            row += [text + mark(m), fmt_x(ratio(res, server, gen, key))]
        for key in ("s50", "conn"):
            cpu = res.best_cpu(server, gen, key)
            row += [
                "-" if cpu is None else f"{cpu.cpu_per_10k:.2f}",
                fmt_x(ratio(res, server, gen, f"cpu:{key}")),
            ]
        table.rows.append(row)
    return table


def idle_table(res: Results, n: int) -> Table:
    table = Table(
        f"Memory: server RSS growth per idle connection ({n} connections, fresh server)",
        ["server", "KB / idle connection", "aio/ours"],
    )
    ref = res.idle_kb(REFERENCE)
    for server in res.servers:
        kb = res.idle_kb(server)
        rel = fmt_x(ref / kb) if kb and ref else "-"
        table.rows.append([server, "-" if kb is None else f"{kb:,.2f}", rel])
    return table


def ceiling_note(res: Results, server: str, gen: str, metric: str) -> str:
    """`` (N.NNx)``: the bare server's ratio on the same loop; ``*`` when that rate was set by
    the generator (the bare server used under `UNSATURATED` of a core)."""
    bare = CEILING[server]
    value = ratio(res, bare, gen, metric)
    if value is None:
        return ""
    best = None if metric.startswith("cpu") else res.best(bare, gen, metric)
    starved = best is not None and best.util < UNSATURATED
    return f" ({fmt_x(value)}{'*' if starved else ''})"


def target_table(res: Results) -> Table:
    """Each target's ratio, with the bare-bones server of the same loop in brackets."""
    table = Table(
        "Targets (ratios to aiosmtpd in this run; in brackets: the bare-bones ceiling)",
        ["server", "target"],
    )
    table.header += [*res.generators, "verdict"]
    for server in res.servers:
        for target in TARGETS.get(server, []):
            cells: list[str] = []
            met: list[bool] = []
            if target.metric == "idle":
                kb = res.idle_kb(server)
                cell = "-" if kb is None else f"{kb:.2f} KB"
                cells = [cell] * len(res.generators)
                if kb is not None:
                    met = [kb <= target.value]
            else:
                for gen in res.generators:
                    r = ratio(res, server, gen, target.metric)
                    cells.append(fmt_x(r) + ceiling_note(res, server, gen, target.metric))
                    if r is not None:
                        met.append(r >= target.value)
            verdict = (
                "-" if not met else "met" if all(met) else "MISSED" if not any(met) else "mixed"
            )
            table.rows.append([server, target.label, *cells, verdict])
    return table


def detail_table(res: Results) -> Table:
    header = ["server", "generator", "workload", "round", "msgs", "err", "secs", "msgs/s"]
    header += ["MiB/s", "srv CPU-s", "srv % core", "gen % core", "machine idle", "note"]
    table = Table("Every measurement", header)
    for m in res.runs:
        r = m.result
        note = "; ".join(
            x
            for x in (
                "time cap" if r.timed_out else "",
                f"{r.errors} errors" if r.errors else "",
                r.detail[:80] if r.errors else "",
            )
            if x
        )
        table.rows.append(
            [
                m.server,
                m.generator,
                m.workload.label,
                str(m.round),
                f"{r.messages:,}",
                str(r.errors),
                f"{r.seconds:.2f}",
                f"{r.msgs_per_s:,.0f}",
                f"{r.mib_per_s:,.1f}",
                f"{m.server_cpu_s:.2f}",
                f"{m.util:.0%}",
                f"{m.gen_share:.0%}",
                f"{m.machine_idle:.0%}",
                note,
            ]
        )
    return table


def notes(res: Results) -> list[str]:
    out: list[str] = []
    for server, whys in res.failures.items():
        out += [f"{server} FAILED: {why}" for why in whys]
    for m in res.runs:
        r = m.result
        what = f"{m.server} / {m.generator} / {m.workload.label} (round {m.round})"
        if r.errors:
            out.append(f"{what}: {r.errors} errors ({r.detail[:120] or 'no detail'})")
        if r.timed_out:
            out.append(f"{what}: stopped by the time cap after {r.messages:,} messages")
    # Unsaturated servers in the runs that made the table (threads may use more than a core).
    contended: list[str] = []
    for server in res.servers:
        for gen in res.generators:
            for key in ("s10", "s50", "big"):
                best = res.best(server, gen, key)
                if best is None or "threads" in server or best.util >= UNSATURATED:
                    continue
                if server in BARE:  # a ceiling: latency-bound by design
                    continue
                what = f"{server} / {gen} / {best.workload.column}"
                if best.machine_idle < BUSY_MACHINE:
                    contended.append(f"{what} ({best.util:.0%})")
                    continue
                out.append(
                    f"{what}: server used only {best.util:.0%} of a core while the machine was"
                    f" {best.machine_idle:.0%} idle (generator {best.gen_share:.0%}):"
                    " round-trip latency or the generator set the pace, not the server"
                )
    if contended:
        shown = ", ".join(contended[:8]) + (
            f" and {len(contended) - 8} more (see the details)" if len(contended) > 8 else ""
        )
        out.append(
            f"server got < {UNSATURATED:.0%} of a core while the machine had"
            f" < {BUSY_MACHINE:.0%} idle CPU (other load, or generator and server sharing"
            f" the cores) in: {shown}. Those rates understate the server;"
            " CPU-s/10k is much less affected."
        )
    out += [f"skipped: {s}" for s in res.skipped]
    return out


# ---------------------------------------------------------------------------- environment


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_revision() -> str:
    """The commit of the tree being measured, and whether it has local changes (read-only)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "smtpcore", "transports"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in smtpcore/ or transports/" if dirty else "")


def describe_generator(gen: str, binary: Path | None) -> str:
    if gen == "python":
        return (
            "python: benchmarks.loadgen.run_python_load (threads, pipelined, every reply checked)"
        )
    debs = sorted(CACHE_DIR.glob("postfix_*.deb"))
    origin = (
        f"from {debs[-1].name}" if binary and binary.is_relative_to(CACHE_DIR) and debs
        else str(binary)
    )  # fmt: skip
    return (
        f"smtp-source: Postfix's C tool ({origin}; HELO, no pipelining;"
        " -d sessions kept open but for conn/msg)"
    )


@dataclass
class Environment:
    date: str
    python: str
    cpu: str
    load_start: str
    revision: str
    versions: str
    generators: list[str]
    command: str
    placement: str = "any CPU for servers and load generators alike"
    load_end: str = ""
    machine_idle: float | None = None
    """Share of all CPUs idle during the measured runs."""


def environment(generators: list[str], binary: Path | None, argv: Sequence[str]) -> Environment:
    versions = ", ".join(f"{d} {version_of(d)}" for d in ("aiosmtpd", "trio", "anyio", "uvloop"))
    return Environment(
        date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        python=f"{platform.python_version()} ({platform.python_implementation()})",
        cpu=f"{cpu_model()} x {os.cpu_count()}",
        load_start=load_average(),
        revision=source_revision(),
        versions=versions,
        generators=[describe_generator(g, binary) for g in generators],
        command="python -m benchmarks.run " + " ".join(argv),
    )


def header_lines(env: Environment, plan: Plan) -> list[str]:
    sizes = ", ".join(f"{w.label}: {w.messages:,} msgs" for w in plan.workloads)
    lines = [
        f"date: {env.date}",
        f"command: {env.command}",
        f"source: {env.revision}",
        f"Python: {env.python}; {env.versions}",
        f"CPU: {env.cpu}; {env.placement}",
        f"load average at start: {env.load_start}"
        + (f"; at end: {env.load_end}" if env.load_end else "")
        + (
            f"; all CPUs {env.machine_idle:.0%} idle during the measurements"
            + (" (BUSY: rates are unreliable)" if env.machine_idle < BUSY_MACHINE else "")
            if env.machine_idle is not None
            else ""
        ),
        *(f"generator {g}" for g in env.generators),
        f"plan: {plan.rounds} round(s), best kept; {sizes}; time cap {plan.time_cap:g} s each",
    ]
    return lines


LEGEND = [
    "@N: N sessions, each kept open for many 1 KiB messages; conn/msg: a new connection for"
    " every message (connect, greeting, HELO, MAIL, RCPT, DATA, QUIT); MiB/s 10 MiB: one"
    " session.",
    "bare *: canned replies and no SMTP logic (benchmarks/bare.py): what the event loop alone"
    " allows on this machine, not an SMTP server. In the targets table a ceiling marked *"
    " came from a bare server that used under 70% of a core: the generator set that pace.",
    "compiled: the same transport with the core, the session driver and the asyncio transport"
    " compiled by mypyc (SMTPCORE_COMPILE=1, setup.py); the other rows run the Python sources.",
    "vs aio: our rate / aiosmtpd's with the same generator; aio/ours: aiosmtpd's CPU per"
    " message / ours (both > 1 when we are better).",
    "! = some messages failed in that run; ~ = stopped by the time cap (rate still valid).",
    "CPU-s/10k: the server process's user+system CPU (/proc) per 10,000 accepted"
    " messages in the 50-session runs.",
]


def report(res: Results, env: Environment, plan: Plan) -> tuple[str, str]:
    """The text report (for the terminal) and the Markdown one (results.md)."""
    tables = [generator_table(res, g, plan) for g in res.generators]
    tables += [idle_table(res, plan.idle_connections), target_table(res)]
    note_lines = notes(res)
    head = header_lines(env, plan)

    text = ["", *head, ""]
    for t in tables:
        text += [t.text(), ""]
    text += LEGEND
    if note_lines:
        text += ["", "notes:", *(f"  - {n}" for n in note_lines)]

    md = [
        f"# smtpcore transports vs aiosmtpd {AIOSMTPD_VERSION} (Sink)",
        "",
        *(f"- {h}" for h in head),
        "",
    ]
    for t in tables:
        md += [t.markdown(), ""]
    md += [f"- {x}" for x in LEGEND]
    if note_lines:
        md += ["", "### Notes", "", *(f"- {n}" for n in note_lines)]
    md += ["", "<details><summary>Every measurement</summary>", "", detail_table(res).markdown()]
    md += ["", "</details>", ""]
    return "\n".join(text), "\n".join(md)


# ---------------------------------------------------------------------------- profiling

_PROFILE_BOOT = """\
import cProfile, pstats, runpy, sys, threading
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
profiles = []
lock = threading.Lock()
thread_run = threading.Thread.run
def run(self):
    prof = cProfile.Profile()
    with lock:
        profiles.append(prof)
    prof.enable()
    try:
        thread_run(self)
    finally:
        prof.disable()
threading.Thread.run = run
main = cProfile.Profile()
profiles.append(main)
main.enable()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except (SystemExit, KeyboardInterrupt):
    pass
finally:
    main.disable()
    with lock:
        pstats.Stats(*profiles).dump_stats(out)
"""


def profile_server(spec: ServerSpec, generators: Sequence[str], seconds: float) -> int:
    """Run ``spec`` under cProfile (all threads) during ``seconds`` of 50-session load."""
    gen = generators[0]
    port = free_port(HOST)
    with tempfile.TemporaryDirectory(prefix="smtpcore-profile-") as tmp:
        out = Path(tmp) / "server.prof"
        argv = [sys.executable, "-c", _PROFILE_BOOT, str(out), *spec.module_argv(port)]
        with ServerProcess(argv, port, HOST, cwd=ROOT, startup_timeout=30) as server:
            run_python_load(HOST, port, sessions=10, messages=300, message_size=KIB, timeout=10)
            before = cpu_seconds(server.pid)
            result = GENERATORS[gen](
                HOST, port, sessions=50, messages=1_000_000, message_size=KIB, timeout=seconds
            )
            used = cpu_seconds(server.pid) - before
            # SIGINT stops aiosmtpd and ours gracefully, so the profile gets written.
            os.kill(server.pid, signal.SIGINT)
            deadline = time.monotonic() + 20
            while alive(server.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        print(
            f"{spec.name} under cProfile, {gen}, 50 sessions: {result.messages:,} msgs in"
            f" {result.seconds:.1f} s ({result.msgs_per_s:,.0f} msgs/s with profiling),"
            f" server CPU {used:.2f} s = {used / max(result.messages, 1) * 1e6:.0f} us/msg"
        )
        if not out.exists():
            print("no profile written (the server did not stop gracefully)", file=sys.stderr)
            return 1
        for order, count in (("tottime", 30), ("cumulative", 25)):
            stream = io.StringIO()
            stats = pstats.Stats(str(out), stream=stream)
            stats.strip_dirs().sort_stats(order).print_stats(count)
            print(f"\n==== by {order} " + "=" * 60)
            if order == "tottime":
                print("(threads blocked in waits, e.g. queue.get or epoll, show wall time here)")
            print(stream.getvalue())
    return 0


# ---------------------------------------------------------------------------- main


def parse_names(value: str, known: Iterable[str], what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="servers: " + ", ".join(SERVER_NAMES),
    )
    parser.add_argument("--quick", action="store_true", help="one round, fewer messages (~1 min)")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        type=lambda v: parse_names(v, SERVER_NAMES, "server"),
        help="comma-separated servers to run (aiosmtpd is always added: ratios need it)",
    )
    parser.add_argument(
        "--generators",
        metavar="NAMES",
        type=lambda v: parse_names(v, GENERATORS, "generator"),
        default=list(GENERATORS),
        help="comma-separated load generators (default: smtp-source,python)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"Markdown file (default: {RESULTS})"
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        choices=[s.name for s in SERVERS if not s.compiled],  # cProfile sees no compiled code
        help="profile one server instead",
    )
    parser.add_argument("--profile-seconds", type=float, default=5.0, metavar="S")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let servers and load generators share every CPU (default: see split_cpus)",
    )
    return parser


def split_cpus() -> tuple[set[int], set[int]] | None:
    """The servers' CPU and the load generators' (the rest); None on a single CPU.

    Apart, a server never waits for a load generator to leave its core, nor the other way
    round, and every server gets the same one core. Together, the scheduler moves the threads
    of a threaded server across both cores, and each hand-over of the GIL to a thread on the
    other core costs a cross-CPU wake-up: on a 2-core VM that cost the threads transport a third
    to two thirds of its rate, varying from run to run, while single-threaded servers
    (aiosmtpd, asyncio, trio) measured about the same either way."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    return {allowed[0]}, set(allowed[1:])


def _own_children() -> list[int]:
    """PIDs of this process's direct children (servers, smtp-source), from /proc."""
    pids: list[int] = []
    for path in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids += [int(p) for p in path.read_text(encoding="ascii").split()]
        except OSError:
            continue
    return pids


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP: stop our children (a running smtp-source too), then unwind, which
    stops and reaps every server through `ServerProcess.stop`."""
    for pid in _own_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    raise SystemExit(128 + signum)


def available_generators(wanted: Sequence[str]) -> tuple[list[str], Path | None]:
    gens = list(wanted)
    binary: Path | None = None
    if "smtp-source" in gens:
        binary = ensure_smtp_source()
        if binary is None:
            print("smtp-source unavailable: only the Python generator is used", file=sys.stderr)
            gens.remove("smtp-source")
    return gens, binary


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)

    ensure_aiosmtpd()
    gens, binary = available_generators(args.generators)
    if not gens:
        print("no load generator available", file=sys.stderr)
        return 1

    if args.profile:
        spec = next(s for s in SERVERS if s.name == args.profile)
        return profile_server(spec, gens, args.profile_seconds)

    names = [REFERENCE, *(n for n in (args.only or SERVER_NAMES) if n != REFERENCE)]
    servers: list[ServerSpec] = []
    absent: list[str] = []
    for spec in SERVERS:
        if spec.name in names:
            if missing := spec.missing():
                absent.append(f"{spec.name} (missing {', '.join(missing)})")
            else:
                servers.append(spec)
    plan = make_plan(args.quick)
    env = environment(gens, binary, args_list)
    split = split_cpus() if args.pin else None
    if split is not None:
        env.placement = (
            f"servers on CPU {','.join(map(str, sorted(split[0])))}, load generators on CPU"
            f" {','.join(map(str, sorted(split[1])))}"
        )
    for line in header_lines(env, plan):
        print(line)
    print(f"servers: {', '.join(s.name for s in servers)}", flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smtpcore-compiled-") as tmp:
        compiled_tree = None
        if any(s.compiled for s in servers):
            print("building the compiled tree (setup.py, SMTPCORE_COMPILE=1)...", flush=True)
            compiled_tree = build_compiled_tree(Path(tmp))
        server_cpus = None
        if split is not None:
            server_cpus, load_cpus = split
            os.sched_setaffinity(0, load_cpus)  # smtp-source inherits it; servers get their own
        runner = Runner(plan, servers, gens, compiled_tree, server_cpus)
        res = runner.run()
    res.skipped += [f"{a}: not installed" for a in absent]
    env.load_end = load_average()
    env.machine_idle = runner.machine_idle()

    text, md = report(res, env, plan)
    print(text)
    print(f"\ntotal {time.monotonic() - started:.0f} s; Markdown written to {args.output}")
    args.output.write_text(md, encoding="utf-8")
    bad = res.failures or any(not m.clean for m in res.runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
