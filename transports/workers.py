"""Several processes serving the same listeners: `run_workers` supervises N forked workers.

    def serve_one(listeners: tuple[Listener, ...]) -> int:
        options = ServerOptions(listeners=listeners, ...)
        return serve_until_signal("asyncio", MyHandler(), options, grace=30)

    sys.exit(run_workers(4, serve_one, [Listener("0.0.0.0", 25)]))

The parent binds every listener once and forks the workers, which inherit the listening
sockets and accept on them (each `Listener` they get has ``fd`` set: the transports serve on
a pre-bound socket then). The kernel hands each new connection to one of the workers waiting
in ``accept``. With ``reuse_port=True`` each worker binds its own socket instead, with
``SO_REUSEPORT``, and the kernel spreads connections evenly over them; but connections still
queued on a worker that dies are then reset, while with shared sockets they wait for another
worker.

The parent supervises: a worker that dies (crash, ``kill -9``, out of memory) is logged and
started again (with a growing pause if it keeps dying at once; the parent gives up, stopping
everything with status 1, after 5 such deaths in a row). SIGTERM or SIGINT to the parent is a
graceful stop: it closes its own copies of the listening sockets, forwards SIGTERM to every
worker (each drains its transactions, see the transports' ``stop(grace)``), waits for them
(SIGKILL after ``stop_timeout``) and returns 0.

Workers are forked, so the parent runs no thread: its optional ops endpoint (``/livez``,
``/readyz``, ``/metrics``, see `transports.ops`) is served from the supervising loop itself.
With ``prometheus-client`` installed, metrics use its multiprocess mode: the parent sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory before forking, each worker's
`transports.ops.Metrics` writes there, and ``/metrics`` serves the sum. Create the observer in
``serve_one`` (that is, in the worker), e.g. with `worker_observer`.

A message a worker acknowledged (250) is the handler's: use one that stores durably before
answering and can be shared by processes (``maildir:DIR``, a broker), not ``memory``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import FrameType

from .handler import Handler
from .ops import Health, Metrics, OpsServer, multiprocess_exposition
from .options import Listener, ServerOptions

__all__ = ["ServeOne", "run_workers", "serve_until_signal", "worker_observer"]

_LOG = logging.getLogger("smtpcore.workers")

ServeOne = Callable[[tuple[Listener, ...]], int | None]
"""Runs one worker's server on the listeners given until SIGTERM; returns the exit status."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_TICK = 0.1
"""Seconds between two looks at the workers (and the ops endpoint's request wait)."""
_FAST_DEATH = 1.0
"""A worker dead within this many seconds of its start died "at once"."""
_MAX_FAST_DEATHS = 5
_PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class _Slot:
    """One of the N workers: its process, and how its recent lives went."""

    index: int
    pid: int = 0
    started: float = 0.0
    fast_deaths: int = 0
    restart_at: float | None = 0.0
    """When to (re)start it; None while it runs."""


def run_workers(
    n: int,
    serve_one: ServeOne,
    listeners: Sequence[Listener],
    *,
    reuse_port: bool = False,
    stop_timeout: float = 60.0,
    ops_address: tuple[str, int] | None = None,
    ready: Callable[[list[tuple[str, int]], tuple[str, int] | None], None] | None = None,
    logger: logging.Logger = _LOG,
) -> int:
    """Serve ``listeners`` with ``n`` forked processes, each running ``serve_one``; return the
    exit status (0 after a graceful stop) once they are all gone.

    Args:
        n: how many worker processes (at least 1).
        serve_one: called in each worker with its listeners (``fd`` set); it serves until
            SIGTERM (a graceful stop) and returns the worker's exit status (None is 0).
        listeners: where to listen; port 0 is resolved once, so every worker shares the port.
        reuse_port: each worker binds its own ``SO_REUSEPORT`` socket (Linux, BSD).
        stop_timeout: seconds the workers get to finish after SIGTERM before SIGKILL; make it
            longer than their grace.
        ops_address: ``(host, port)`` for ``/livez``, ``/readyz`` and ``/metrics``.
        ready: called once the listeners are bound, with their ``(host, port)`` and the ops
            endpoint's (None without one), ports resolved.

    Must run in the main thread (it handles SIGTERM and SIGINT), in a process with no other
    thread running (it forks).
    """
    if n < 1:
        raise ValueError("at least one worker is needed")
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not available on this system")
    metrics_dir = _metrics_dir() if ops_address is not None else None
    slots = [_Slot(index) for index in range(n)]
    health = Health()
    sockets: list[socket.socket] = []
    ops: OpsServer | None = None
    stop: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    def exposition() -> bytes | None:
        return None if metrics_dir is None else multiprocess_exposition(metrics_dir)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        sockets, bound = _bind(listeners, reuse_port=reuse_port)
        addresses = [(listener.host, listener.port) for listener in bound]
        if ops_address is not None:
            ops = OpsServer(
                ops_address,
                ready=lambda: health.ready and any(slot.pid for slot in slots),
                metrics=exposition,
                threaded=False,
            )
        logger.info("%d workers on %s", n, addresses)
        if ready is not None:
            ready(addresses, None if ops is None else ops.address)
        supervisor = _Supervisor(serve_one, bound, reuse_port, sockets, ops, metrics_dir, logger)
        return supervisor.supervise(slots, stop, stop_timeout, health)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in sockets:
            sock.close()
        if ops is not None:
            ops.close()
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    """The parent's loop: start, reap, restart and stop the workers."""

    def __init__(
        self,
        serve_one: ServeOne,
        listeners: tuple[Listener, ...],
        reuse_port: bool,
        sockets: list[socket.socket],
        ops: OpsServer | None,
        metrics_dir: str | None,
        logger: logging.Logger,
    ) -> None:
        self.serve_one = serve_one
        self.listeners = listeners
        self.reuse_port = reuse_port
        self.sockets = sockets
        self.ops = ops
        self.metrics_dir = metrics_dir
        self.logger = logger

    def supervise(
        self, slots: list[_Slot], stop: list[int], stop_timeout: float, health: Health
    ) -> int:
        stopping_since: float | None = None
        status = 0
        while True:
            now = time.monotonic()
            if stop and stopping_since is None:
                stopping_since = now
                self.logger.info("signal %d, stopping the workers", stop[0])
                health.stopping()
                for sock in self.sockets:  # no new connection may queue where none will accept
                    sock.close()
                for slot in slots:
                    if slot.pid:
                        _kill(slot.pid, signal.SIGTERM)
                    slot.restart_at = None
            if stopping_since is None:
                for slot in slots:
                    if slot.restart_at is not None and now >= slot.restart_at:
                        self._start(slot)
            elif not any(slot.pid for slot in slots):
                return status
            elif now - stopping_since > stop_timeout:
                self.logger.error("workers still running after %.0f s: killing them",
                                  stop_timeout)  # fmt: skip
                for slot in slots:
                    if slot.pid:
                        _kill(slot.pid, signal.SIGKILL)
                status, stop_timeout = 1, float("inf")
            if self._reap(slots, stopping=stopping_since is not None):
                stop.append(0)  # a worker keeps dying at once: give up
                status = 1
            if self.ops is not None:
                self.ops.serve_once(_TICK)
            else:
                time.sleep(_TICK)

    def _start(self, slot: _Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            os._exit(self._worker(slot.index))
        slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None
        self.logger.info("worker %d started (pid %d)", slot.index, pid)

    def _worker(self, index: int) -> int:
        """In the child: serve, and return the exit status (nothing may escape: os._exit)."""
        try:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            _die_with_parent()
            if self.ops is not None:
                self.ops.forget()
            # The listening descriptors now belong to the server serve_one makes (it adopts
            # Listener.fd): the parent's socket objects must not close them under it.
            for sock in self.sockets:
                descriptor = sock.detach()
                if self.reuse_port:  # the parent's placeholder; we bind our own
                    os.close(descriptor)
            listeners = self.listeners
            if self.reuse_port:
                own, listeners = _bind(listeners, reuse_port=True, listen=True)
                for sock in own:
                    sock.detach()
            status = self.serve_one(listeners)
            return 0 if status is None else int(status)
        except BaseException:
            with contextlib.suppress(BaseException):
                sys.stderr.write(f"smtpcore: worker {index} failed:\n{traceback.format_exc()}")
            return 1
        finally:
            with contextlib.suppress(BaseException):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()

    def _reap(self, slots: list[_Slot], *, stopping: bool) -> bool:
        """Collect dead workers and plan their restart; True to give up."""
        give_up = False
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return give_up
            if pid == 0:
                return give_up
            slot = next((s for s in slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            if self.metrics_dir is not None:
                _mark_dead(pid, self.metrics_dir)
            how = _describe(wait_status)
            if stopping:
                self.logger.info("worker %d (pid %d) %s", slot.index, pid, how)
                continue
            now = time.monotonic()
            lived = now - slot.started
            slot.fast_deaths = slot.fast_deaths + 1 if lived < _FAST_DEATH else 0
            delay = 0.0 if not slot.fast_deaths else min(5.0, 0.1 * 2**slot.fast_deaths)
            self.logger.error("worker %d (pid %d) %s after %.1f s; restarting in "
                              "%.1f s", slot.index, pid, how, lived, delay)  # fmt: skip
            slot.restart_at = now + delay
            if slot.fast_deaths >= _MAX_FAST_DEATHS:
                self.logger.error("worker %d keeps dying at start; giving up",
                                  slot.index)  # fmt: skip
                slot.restart_at = None
                give_up = True


def _bind(
    listeners: Sequence[Listener], *, reuse_port: bool, listen: bool | None = None
) -> tuple[list[socket.socket], tuple[Listener, ...]]:
    """Bind every listener (each address its host resolves to) and return the sockets and a
    `Listener` per socket with ``fd`` (and the real port) set. With ``reuse_port`` the
    sockets get ``SO_REUSEPORT`` and listen only if ``listen`` (the parent just reserves the
    port; the workers listen)."""
    listen = not reuse_port if listen is None else listen
    sockets: list[socket.socket] = []
    bound: list[Listener] = []
    try:
        for listener in listeners:
            if listener.fd is not None and not reuse_port:
                bound.append(listener)
                continue
            infos = socket.getaddrinfo(
                listener.host or None, listener.port, type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )  # fmt: skip
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                if listen:
                    sock.listen(1024)
                host, port = sock.getsockname()[:2]
                bound.append(replace(listener, host=host, port=port, fd=sock.fileno()))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, tuple(bound)


def _metrics_dir() -> str | None:
    """Prepare prometheus-client's multiprocess mode for the workers to come (if installed)."""
    if importlib.util.find_spec("prometheus_client") is None:
        return None
    path = tempfile.mkdtemp(prefix="smtpcore-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before the variable was set: choose its values again
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def _mark_dead(pid: int, path: str) -> None:
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    except Exception as exc:
        _LOG.warning("cannot clear the metrics of worker pid %d: %r", pid, exc)


def _die_with_parent() -> None:
    """Linux: the kernel sends us SIGTERM if the supervisor dies (even by SIGKILL), so no
    worker is left serving unsupervised."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _describe(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(wait_status)}"


# ---------------------------------------------------------------- for serve_one


def worker_observer() -> Metrics | None:
    """In a worker of `run_workers` with an ops address: a `Metrics` observer whose values the
    supervisor serves; None otherwise (nothing would read it)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    return Metrics()


def serve_until_signal(
    transport: str,
    handler: Handler,
    options: ServerOptions,
    *,
    grace: float = 5.0,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> int:
    """Run a server of ``transport`` (a name `transports.ServerThread` takes) until SIGTERM or
    SIGINT, then stop it gracefully within ``grace`` seconds; return 0 (1 if it failed).

    The server runs in a thread (its own event loop for the async transports) while the main
    thread waits for the signal; a ``serve_one`` for `run_workers` can be just this call."""
    from .controller import ServerThread

    wanted = set(STOP_SIGNALS)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)  # the server's threads inherit it
    try:
        server = ServerThread(transport, handler, options).start()
        if ready is not None:
            ready(server.addresses)
        thread = server._thread
        while thread.is_alive():
            if signal.sigtimedwait(wanted, 0.5) is not None:
                server.stop(grace, timeout=grace + 30.0)
                return 0
        return 1  # the server ended by itself: it failed
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
