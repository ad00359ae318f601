"""Step [6] of ``bench_pipeline.py``: the live path Pulsar → adapter → Kafka → fold → table, today's
adapter against this one, side by side in one run (issue #15).

Modes, each on fresh topics with its own worker (8 partitions, fold as in step [1]):

- ``today``: ``benchmarks/baseline_adapter.py``, the adapter before issue #15 (one process,
  ``hmac.digest``, one ``send`` per record, receive after hand-off), beside a worker with the
  adapter off;
- ``standalone``: ``vsync-stream adapter --concurrency C`` beside a worker with the adapter off;
- ``in-worker``: a worker with ``VSYNC_ADAPTER_ENABLED=true`` and ``VSYNC_ADAPTER_CONCURRENCY=C``.

In each mode: (a) catch-up: ``--backlog`` events are published to Pulsar while nothing consumes
them; then the worker (and the adapter) start; figures: time from the processes' start until the
table has handled all of them, and the drain rate from the first handled event (a 1 M backlog at
that rate, when fewer were run: EXTRAPOLATED); (b) saturation: ``--sat-events`` published as fast
as the benchmark's publisher can, throughput from the first publish to the last event handled;
(c) latency at ``--live-rate`` (5,000) ev/s for ``--duration`` s, p50/p99 as in step [2]. CPU
seconds of every process of the path (adapter(s), worker, Pulsar, Kafka, this publisher) are read
from ``/proc`` over (a) and (b): what each event costs where, i.e. what bounds the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAT_TARGET = 20_000
CATCHUP_TARGET_S = 60.0
P99_TARGET_MS = 250.0
MODES = ("today", "standalone", "in-worker")
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process and its reaped children, seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _TICK


def children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def broker_pids() -> dict[str, int]:
    run = Path(os.environ.get("VSYNC_STACK_DIR", REPO / ".local")) / "run"
    pids = {}
    for name in ("pulsar", "kafka"):
        try:
            pids[name] = int((run / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return pids


class CpuMeter:
    """CPU seconds used by named processes between start() and stop()."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_s(p) for p in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self.before.get(name, 0.0) for name in now}


def _profile_tree(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy of a process and its children (the adapter processes), raw collapsed stacks."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        print(f"  (py-spy not installed in {py_spy.parent}: no profile)")
        return None
    return subprocess.Popen([str(py_spy), "record", "-p", str(pid), "--subprocesses", "-d", str(seconds), "-r", "200",
                             "-f", "raw", "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


async def run_mode(mode: str, args: argparse.Namespace, tmp: Path, tag: str, procs: list[Any]) -> dict[str, Any]:
    import pulsar

    from benchmarks.bench_pipeline import PARTICIPANTS, _latency_run, generate, summarise_profile
    from vsync_stream.bridges.pulsar_source import ensure_subscription
    from vsync_stream.simulator.publisher import EventPublisher
    from vsync_stream.worker_process import WorkerProcess, free_port, run_env

    conc = args.concurrency
    b, s_n, live_n = args.backlog, args.sat_events, int(args.live_rate * args.duration)
    events = generate(b + s_n + live_n, args.seed + 7 + MODES.index(mode))
    in_worker = mode == "in-worker"
    env = run_env(f"benchlive-{mode}-{tag}", bridge_target="127.0.0.1:9", participants=PARTICIPANTS,
                  token=secrets.token_urlsafe(16), data_root=tmp / "product", web_port=free_port(),
                  partitions=args.partitions,
                  extra={"VSYNC_ADAPTER_ENABLED": "true" if in_worker else "false",
                         "VSYNC_ADAPTER_CONCURRENCY": str(conc)})
    ensure_subscription(os.environ["VSYNC_PULSAR_URL"], env["VSYNC_PULSAR_TOPIC"], env["VSYNC_PULSAR_SUBSCRIPTION"])
    publisher = EventPublisher(os.environ["VSYNC_PULSAR_URL"], env["VSYNC_PULSAR_TOPIC"],
                               batching_type=pulsar.BatchingType.KeyBased, batching_max_publish_delay_ms=1)
    await publisher.start()
    res: dict[str, Any] = {"mode": mode, "concurrency": 1 if mode == "today" else conc}
    mine: list[Any] = []
    try:
        t0 = time.perf_counter()
        for e in events[:b]:
            await publisher.publish(e)
        await publisher.flush()
        print(f"\n[6] live path, {mode}: {b:,} events published to Pulsar with nothing consuming "
              f"({time.perf_counter() - t0:.1f} s, not counted); {load()}", flush=True)
        worker = WorkerProcess(env, tmp / "logs" / f"live-{mode}-worker.log")
        procs.append(worker)
        mine.append(worker)
        t_start = time.monotonic()
        worker.start()
        adapter: subprocess.Popen[bytes] | None = None
        if not in_worker:
            cmd = [sys.executable, str(REPO / "benchmarks/baseline_adapter.py")] if mode == "today" else \
                [sys.executable, "-m", "vsync_stream", "adapter", "--concurrency", str(conc)]
            with (tmp / "logs" / f"live-{mode}-adapter.log").open("ab") as log_file:
                adapter = subprocess.Popen(cmd, env=dict(env, PYTHONPATH=str(REPO)), stdout=log_file,
                                           stderr=subprocess.STDOUT, cwd=REPO)
            procs.append(adapter)
            mine.append(adapter)
        assert worker.proc is not None
        wpid = worker.proc.pid
        apid = adapter.pid if adapter is not None else None

        def path_pids() -> dict[str, list[int]]:
            kids = children(wpid) if in_worker else ([apid] + children(apid) if apid else [])
            pids = {"adapter": kids, "worker (fold)": [wpid], "this publisher": [os.getpid()]}
            pids.update({name: [pid] for name, pid in broker_pids().items()})
            return pids

        def alive() -> bool:
            return worker.proc is not None and worker.proc.poll() is None and \
                (adapter is None or adapter.poll() is None)

        # (a) catch-up
        # let the adapter processes appear for the CPU meter (a supervisor starts its children once up)
        parent = wpid if in_worker else apid
        for _ in range(100):
            if mode == "today" or len(children(parent or 0)) >= conc:
                break
            await asyncio.sleep(0.1)
        meter = CpuMeter(path_pids())
        meter.start()
        from benchmarks.bench_pipeline import product_handled, time_fold
        fold = await time_fold(f"{worker.base_url}/healthz", product_handled, b, alive, args.timeout)
        total_s = time.monotonic() - t_start
        cpu = meter.stop()
        res["catchup"] = {"events": b, "total_s": total_s, "rate": fold["rate"], "cpu": cpu,
                          "per_m_s": total_s - fold["seconds"] + 1_000_000 / fold["rate"]}
        print(f"  (a) catch-up: {b:,} events handled {total_s:.1f} s after the processes started (drain "
              f"{fold['rate']:,.0f} ev/s from the first event); 1 M at that rate: "
              f"{res['catchup']['per_m_s']:.0f} s{'' if b >= 1_000_000 else ' (EXTRAPOLATED)'}")
        print("      CPU s per 10,000 events: " + ", ".join(f"{k} {10_000 * v / b:.2f}" for k, v in cpu.items()))
        # (b) saturation
        meter = CpuMeter(path_pids())
        meter.start()
        prof = tmp / f"profile-live-{mode}.txt"
        pid_to_profile = wpid if in_worker else apid
        profiler = None
        if args.profile_s and mode != "today" and pid_to_profile is not None:
            profiler = _profile_tree(pid_to_profile, args.profile_s, prof)
        sat = await _latency_run(args, worker, publisher, events[b:b + s_n], b, None, alive)
        cpu = meter.stop()
        res["saturation"] = dict(sat, cpu=cpu)
        print(f"  (b) saturation: {s_n:,} events published as fast as possible ({sat['achieved']:,.0f} ev/s "
              f"publishing): {sat['throughput']:,.0f} ev/s Pulsar → table; p50 {sat['p50']:,.0f} ms, "
              f"p99 {sat['p99']:,.0f} ms")
        print("      CPU s per 10,000 events: " + ", ".join(f"{k} {10_000 * v / s_n:.2f}" for k, v in cpu.items()))
        if profiler is not None:
            try:
                profiler.wait(timeout=args.profile_s + 30)
            except subprocess.TimeoutExpired:
                profiler.kill()
            if prof.exists():
                summarise_profile(prof, process=f"the {mode} adapter's process{'es' if conc > 1 else ''} "
                                  f"(saturation, with subprocesses)")
        # (c) latency at the target rate
        live = await _latency_run(args, worker, publisher, events[b + s_n:], b + s_n, args.live_rate, alive)
        res["live"] = live
        print(f"  (c) latency at {args.live_rate:,} ev/s for {args.duration} s (achieved {live['achieved']:,.0f} "
              f"ev/s publishing): p50 {live['p50']:,.0f} ms, p99 {live['p99']:,.0f} ms, max {live['max']:,.0f} ms "
              f"(samples every {live['sample_gap_ms']:.0f} ms)")
    finally:
        await publisher.stop()
        for p in reversed(mine):
            if isinstance(p, subprocess.Popen):
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            else:
                p.stop()
    return res


async def livepath(args: argparse.Namespace, tmp: Path, tag: str, procs: list[Any]) -> dict[str, Any]:
    """Every mode in turn; returns {mode: figures}."""
    return {mode: await run_mode(mode, args, tmp, tag, procs) for mode in args.live_modes}


def print_table(live: dict[str, dict[str, Any]]) -> None:
    """The side-by-side table of step [6]."""
    modes = [m for m in MODES if m in live]
    head = "".join(f"{m + (' x' + str(live[m]['concurrency']) if m != 'today' else ''):>18}" for m in modes)
    print(f"\n{'live path (step [6])':<38}{head}  {'target':<22} result (best new mode)")

    def row(name: str, values: list[float], fmt: str, target: str, ok: bool | None) -> None:
        cells = "".join(f"{fmt.format(v):>18}" for v in values)
        verdict = "-" if ok is None else ("met" if ok else "NOT MET")
        print(f"{name:<38}{cells}  {target:<22} {verdict}")

    new = [m for m in modes if m != "today"]
    sat = [live[m]["saturation"]["throughput"] for m in modes]
    row("saturation, Pulsar → table", sat, "{:,.0f} ev/s", f">= {SAT_TARGET:,} ev/s",
        max(live[m]["saturation"]["throughput"] for m in new) >= SAT_TARGET if new else None)
    p99 = [live[m]["live"]["p99"] for m in modes]
    rate = next(iter(live.values()))["live"]["offered"]
    row(f"p99 at {rate:,} ev/s", p99, "{:,.0f} ms", f"<= {P99_TARGET_MS:.0f} ms",
        min(live[m]["live"]["p99"] for m in new) <= P99_TARGET_MS if new else None)
    n = next(iter(live.values()))["catchup"]["events"]
    row(f"catch-up of {n:,} events", [live[m]["catchup"]["total_s"] for m in modes], "{:,.1f} s", "-", None)
    row("catch-up drain rate", [live[m]["catchup"]["rate"] for m in modes], "{:,.0f} ev/s", "-", None)
    how = "measured" if n >= 1_000_000 else "EXTRAPOLATED"
    row(f"catch-up of 1 M ({how})", [live[m]["catchup"]["per_m_s"] for m in modes], "{:,.0f} s",
        f"<= {CATCHUP_TARGET_S:.0f} s", min(live[m]["catchup"]["per_m_s"] for m in new) <= CATCHUP_TARGET_S
        if new else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of step [6]."""
    parser.add_argument("--backlog", type=int, default=100_000,
                        help="events of the catch-up backlog, per mode (1000000 for the issue's figure) [100000]")
    parser.add_argument("--live-sat-events", dest="live_sat_events", type=int, default=30_000,
                        help="events of step [6]'s saturation run, per mode [30000]")
    parser.add_argument("--live-rate", type=int, default=5000, help="offered load of step [6]'s latency run [5000]")
    parser.add_argument("--live-duration", dest="live_duration", type=int, default=10,
                        help="length of step [6]'s latency run, s [10]")
    parser.add_argument("--concurrency", type=int, default=2, help="adapter processes of the new modes [2]")
    parser.add_argument("--live-modes", type=lambda v: [m for m in v.split(",") if m], default=list(MODES),
                        help="modes of step [6], comma-separated; empty to skip [today,standalone,in-worker]")
    parser.add_argument("--only-live", action="store_true", help="run only step [6]")


def live_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace ``_latency_run`` reads, with step [6]'s sizes."""
    return argparse.Namespace(**{**vars(args), "sat_events": args.live_sat_events, "duration": args.live_duration})
