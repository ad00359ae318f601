"""Several adapter processes on one Pulsar subscription, supervised by a worker or ``vsync-stream adapter``.

Python runs one adapter on one core at a time (the GIL), and inside a worker it would share that
core with the fold. :class:`AdapterProcesses` starts N child processes
(``python -m vsync_stream adapter --concurrency 1``), each one consumer of the ``KeyShared``
subscription: Pulsar gives every key to one consumer at a time, so per-key order holds, and a
child that dies leaves its unacknowledged messages to be redelivered (to the others or to its
replacement), which the fold absorbs as duplicates (I2). A child that exits is started again after
``RESTART_DELAY_S``.

Each child writes its counter deltas (events received, forwarded, dead letters by reason) as JSON
lines to a pipe, once per batch Kafka acknowledged; the supervisor adds them to its own Prometheus
counters, so a worker's ``/healthz`` and ``/metrics`` count its adapter children. A child stops
(SIGTERM, so what Kafka holds is still acknowledged) when its supervisor is gone, even after a
SIGKILL of the supervisor (``PR_SET_PDEATHSIG``, and a check of the parent pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

import orjson

from vsync_stream.bridges.pulsar_source import Tally
from vsync_stream.metrics import DEAD_LETTERS, EVENTS_FORWARDED, EVENTS_RECEIVED

log = logging.getLogger(__name__)

RESTART_DELAY_S = 2.0
STOP_TIMEOUT_S = 30.0
PARENT_CHECK_S = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.restart_at = 0.0


class AdapterProcesses:
    """N adapter child processes on the subscription, restarted when they exit.

    Args:
        n: number of processes (at least 1).
        env: their environment (default: this process's; the settings are read from it).
    """

    def __init__(self, n: int, env: dict[str, str] | None = None) -> None:
        if n < 1:
            raise ValueError("at least one adapter process")
        self.n = n
        self.env = dict(os.environ if env is None else env)
        self.children = [_Child(i) for i in range(n)]

    def pids(self) -> list[int]:
        """Process ids of the running children."""
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    def _spawn(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-m", "vsync_stream", "adapter", "--concurrency", "1",
               "--report-fd", str(write_fd), "--parent-pid", str(os.getpid())]
        try:
            child.proc = subprocess.Popen(cmd, env=self.env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        reader = os.fdopen(read_fd, "rb")
        child.reader = threading.Thread(target=_read_reports, args=(reader,), daemon=True,
                                        name=f"adapter-{child.index}-reports")
        child.reader.start()
        log.info("adapter process %d started (pid %d)", child.index, child.proc.pid)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep N children running until ``stop`` is set (or this task is cancelled), then stop them."""
        try:
            for child in self.children:
                self._spawn(child)
            while not stop.is_set():
                now = time.monotonic()
                for child in self.children:
                    proc = child.proc
                    if proc is not None and proc.poll() is not None:
                        log.error("adapter process %d (pid %d) exited with code %s; starting another in %.0f s",
                                  child.index, proc.pid, proc.returncode, RESTART_DELAY_S)
                        child.proc, child.restart_at = None, now + RESTART_DELAY_S
                    if child.proc is None and now >= child.restart_at:
                        self._spawn(child)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
        finally:
            procs = [c.proc for c in self.children if c.proc is not None]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            await asyncio.shield(asyncio.to_thread(_wait_all, procs, STOP_TIMEOUT_S))


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_reports(reader: IO[bytes]) -> None:
    """Add a child's counter deltas to this process's counters until its pipe closes."""
    with reader:
        for line in reader:
            try:
                doc = orjson.loads(line)
                EVENTS_RECEIVED.inc(int(doc.get("r", 0)))
                EVENTS_FORWARDED.inc(int(doc.get("f", 0)))
                for stage, reason, count in doc.get("d", ()):
                    DEAD_LETTERS.labels(stage=str(stage), reason=str(reason)).inc(int(count))
            except (ValueError, TypeError):
                log.warning("an adapter process sent an unreadable counter report; ignored")


def _dead_letter_counts() -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for metric in DEAD_LETTERS.collect():
        for sample in metric.samples:
            if sample.name == "vsync_dead_letters_total":
                counts[(sample.labels["stage"], sample.labels["reason"])] = sample.value
    return counts


class _Reporter:
    """A child's side of the pipe: writes what changed since the last report."""

    def __init__(self, fd: int | None, tally: Tally) -> None:
        self.fd, self.tally = fd, tally
        self.sent: dict[str, Any] = {"r": 0, "f": 0, "d": {}}

    def report(self) -> None:
        if self.fd is None:
            return
        dead = _dead_letter_counts()
        sent_dead: dict[tuple[str, str], float] = self.sent["d"]
        doc = {"r": self.tally.received - self.sent["r"], "f": self.tally.forwarded - self.sent["f"],
               "d": [[s, r, int(v - sent_dead.get((s, r), 0))] for (s, r), v in dead.items()
                     if v != sent_dead.get((s, r), 0)]}
        if not (doc["r"] or doc["f"] or doc["d"]):
            return
        try:
            os.write(self.fd, orjson.dumps(doc) + b"\n")
        except OSError:  # the supervisor is gone; the parent check stops this process
            self.fd = None
            return
        self.sent = {"r": self.tally.received, "f": self.tally.forwarded, "d": dead}


async def report_counts(fd: int | None, tally: Tally, stop: asyncio.Event, parent_pid: int | None) -> None:
    """A child's loop: report after every batch Kafka acknowledged; set ``stop`` if the parent is gone.

    Runs until ``stop`` is set, then sends a last report.
    """
    reporter = _Reporter(fd, tally)
    tally.on_forwarded = reporter.report
    try:
        while not stop.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("adapter: the supervising process %d is gone; stopping", parent_pid)
                stop.set()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=PARENT_CHECK_S)
    finally:
        reporter.report()
        tally.on_forwarded = None


def stop_with_parent(parent_pid: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(f"adapter: the supervising process {parent_pid} is already gone")
