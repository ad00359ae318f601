"""Benchmark: the streaming pipeline on the local stack — fold throughput against a per-event Faust
baseline, Pulsar→table latency, changelog restore rate and worker memory, in one run.

Needs the local stack (``deploy/local/stack up``) and its settings in the environment::

    set -a; . "${VSYNC_STACK_DIR:-.local}/stack.env"; set +a
    .venv/bin/python benchmarks/bench_pipeline.py            # 200,000 events; 1,000 and 5,000 ev/s x 20 s
    .venv/bin/python benchmarks/bench_pipeline.py --events 1000000 --profile-s 10

1. Fold: N compact key-events records (``encode_change(change_of(event))``, one create per Pix key)
   are produced to two fresh 8-partition topics; the product worker (adapter off) folds one, the
   baseline (``benchmarks/baseline_fold_app.py``: ``async for event in stream.events()``, one
   ``table.get`` / ``table[key] = ...`` per event, same fold, same rocksdict store) the other, one
   after the other. Rate = events folded between the first counter sample that moved and the one
   that reached N, divided by the time between them (polled every 100 ms; start-up not counted).
2. Latency: a second product worker (adapter off) and ``vsync-stream adapter`` in its own process;
   events published to Pulsar at each fixed rate of ``--rates`` (1,000 and 5,000 ev/s), then as
   fast as the publisher can (saturation), in order, one Pix key each; ``/healthz`` polled every
   50 ms. Latency of event i = receipt time of the first sample whose handled counter is >= i+1,
   minus the time event i was handed to the Pulsar producer. An upper bound with about 50 ms
   resolution; partitions fold in parallel, so counter order is only approximately publish order.
3. Restore: the fold worker is stopped, its data dir deleted, and started again: time from start to
   ``/healthz`` ready, records = the entries changelog's end offsets.
4. Memory: VmRSS of the fold worker when ready with an empty table (10 s after ready) and after
   folding N; with ``--events 1000000`` the figure per million is measured, otherwise extrapolated
   linearly from that difference.
5. Verification: a worker with ``--verify-partitions`` (64) partitions, fresh topics and app id,
   adapter off, folds the same N records; then ``POST /verify`` (combine every partition's ledger,
   one VerifySync per (participant, key type), audit rows) is timed over ``--verify-rounds`` rounds
   after one warm-up. The DICT simulator runs in this process over the same model, with its
   VerifySync rate limit relaxed and the worker's pacing relaxed to match: our side only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # step [6] lives in benchmarks/bench_livepath.py
    sys.path.insert(0, str(REPO))
PARTICIPANTS = ["11111111", "22222222"]
POLL_S = 0.05  # latency run
FOLD_POLL_S = 0.1  # fold runs: polling costs the worker CPU too
# The targets.
RSS_SETTLE_S = 10.0
FOLD_TARGET = 50_000
RATIO_TARGET = 3.0
P99_TARGET_MS = 250.0
P99_TARGET_RATE = 5000
RESTORE_TARGET = 200_000
MEM_TARGET_MB = 300.0


class BenchFailed(Exception):
    """A step did not complete within its deadline."""


# -------------------------------------------------------------------------------------------- helpers

def rss_mb(pid: int) -> float:
    """VmRSS of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def versions() -> str:
    from importlib.metadata import version

    stack = (REPO / "deploy/local/stack").read_text()

    def default(name: str) -> str:
        m = re.search(rf'{name}="\$\{{VSYNC_STACK_{name}:-([^}}]+)\}}"', stack)
        return os.environ.get(f"VSYNC_STACK_{name}", m.group(1) if m else "?")

    pulsar_impl = os.environ.get("VSYNC_STACK_PULSAR", "apache")
    pulsar = f"Apache Pulsar {default('PULSAR_VERSION')}" if pulsar_impl == "apache" else \
        f"pulsar-lite {version('pulsar-lite')}"
    return (f"python {platform.python_version()}, faust-streaming {version('faust-streaming')}, "
            f"aiokafka {version('aiokafka')}, rocksdict {version('rocksdict')}, pulsar-client "
            f"{version('pulsar-client')}; Kafka {default('KAFKA_VERSION')} (KRaft, 1 node), {pulsar} standalone "
            f"(from deploy/local/stack); {platform.platform()}; cpus {os.cpu_count()} "
            f"(usable {len(os.sched_getaffinity(0))})")


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            doc: dict[str, Any] = await resp.json()
            return doc
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


def product_handled(doc: dict[str, Any]) -> int:
    c = doc["events"]
    return int(c["folded"] + c["duplicate"] + c["stale"] + c["deadLettered"])


async def time_fold(url: str, count: Callable[[dict[str, Any]], int], n: int, alive: Callable[[], bool],
                    timeout_s: float, on_start: Callable[[], None] | None = None) -> dict[str, float]:
    """Poll ``url`` every 100 ms until its counter reaches n; rate from the first move to n."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, int] | None = None
    last = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if not alive():
                raise BenchFailed(f"the process serving {url} exited")
            doc = await get_json(session, url)
            now = time.monotonic()
            if doc is not None:
                last = count(doc)
                if first is None and last > 0:
                    first = (now, last)
                    if on_start is not None:
                        on_start()
                if last >= n and first is not None:
                    elapsed = now - first[0]
                    return {"events": last - first[1], "seconds": elapsed,
                            "rate": (last - first[1]) / elapsed if elapsed > 0 else float("nan")}
            if now > deadline:
                raise BenchFailed(f"only {last:,}/{n:,} folded at {url} within {timeout_s:.0f} s")
            await asyncio.sleep(FOLD_POLL_S)


def generate(n: int, seed: int, model: Any = None) -> list[Any]:
    """n create events (one per Pix key) from the DICT simulator's model (``model``, or a new one)."""
    from vsync_stream.simulator.model import DictModel
    from vsync_stream.simulator.population import generate_entries

    model = DictModel() if model is None else model
    return [model.create(entry) for entry in generate_entries(n, PARTICIPANTS, seed=seed)]


async def produce(bootstrap: str, topics: list[str], records: list[tuple[bytes, bytes]]) -> None:
    """Produce every (key, value) record to each topic (aiokafka, acks=all)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for topic in topics:
            for i in range(0, len(records), 10_000):
                futures = [await producer.send(topic, value=v, key=k) for k, v in records[i:i + 10_000]]
                await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> int:
    """Sum of a topic's end offsets (records written, compaction aside)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = [p["partition"] for d in described if d["topic"] == topic for p in d["partitions"]]
    if not parts:
        raise BenchFailed(f"topic {topic} not found")
    tps = [TopicPartition(topic, p) for p in parts]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        offsets = await consumer.end_offsets(tps)
        return int(sum(offsets.values()))
    finally:
        await consumer.stop()


def start_profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        print(f"  (py-spy not installed in {py_spy.parent}: no profile)")
        return None
    return subprocess.Popen([str(py_spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw",
                             "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(path: Path, top: int = 12, process: str = "the fold worker") -> None:
    """Top frames of a py-spy raw (collapsed) profile: by own samples and by inclusive samples."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count
    if not total:
        print("  (empty profile)")
        return

    def short(frame: str) -> str:
        return re.sub(r"/[^ ]*/(site-packages|main)/", "", frame)

    print(f"  py-spy: {total:,} samples of {process}'s active threads (200 Hz)")
    print("  top own time:")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * count / total:5.1f}%  {short(frame)}")
    print("  top inclusive time (excluding the event loop's own frames):")
    skip = ("Command.", "_run_code", "Worker.execute", "run_forever", "run_until_complete", "_run_once",
            "_run (asyncio", "<module>", "run (", "_run_module",
            "main (", "__call__ (", "execute (", "start_worker", "_execute_", "invoke (", "new_func")
    shown = 0
    for frame, count in sorted(incl.items(), key=lambda kv: -kv[1]):
        if any(s in frame for s in skip):
            continue
        print(f"    {100 * count / total:5.1f}%  {short(frame)}")
        shown += 1
        if shown >= top:
            break


# ----------------------------------------------------------------------------------------- the bench

async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from vsync_stream.bridges.kafka_topics import TopicSpec, ensure_topics
    from vsync_stream.domain.events import change_of, encode_change
    from vsync_stream.worker_process import WorkerProcess, free_port, run_env

    bootstrap = os.environ.get("VSYNC_KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise SystemExit("VSYNC_KAFKA_BOOTSTRAP is not set: source the stack's stack.env first")
    n, parts = args.events, args.partitions
    tag = f"{time.strftime('%Y%m%d%H%M%S')}{secrets.token_hex(2)}"
    results: dict[str, Any] = {}
    procs: list[Any] = []

    try:
        if args.only_live:  # step [6] alone
            from benchmarks.bench_livepath import live_args, livepath

            results["live"] = await livepath(live_args(args), tmp, tag, procs)
            return results
        # ---------------------------------------------------------------- 1. fold throughput
        t0 = time.perf_counter()
        from vsync_stream.simulator.model import DictModel

        model = DictModel()  # kept: the DICT simulator of the verification step holds the same entries
        events = generate(n, args.seed, model)
        records = [(e.key.encode("utf-8"), encode_change(change_of(e))) for e in events]
        del events
        run_id = f"benchfold-{tag}"
        product_topic = f"vsync-{run_id}-key-events"
        base_id = f"bench-baseline-{tag}"
        base_topic = f"{base_id}-key-events"
        await ensure_topics(bootstrap, [TopicSpec(product_topic, parts), TopicSpec(base_topic, parts),
                                        TopicSpec(f"{base_id}-entries-changelog", parts,
                                                  {"cleanup.policy": "compact"})])
        env = run_env(run_id, bridge_target="127.0.0.1:9", participants=PARTICIPANTS,
                      token=secrets.token_urlsafe(16), data_root=tmp / "product", web_port=free_port(),
                      partitions=parts, extra={"VSYNC_ADAPTER_ENABLED": "false"})
        worker = WorkerProcess(env, tmp / "logs" / "product-fold.log")
        procs.append(worker)
        worker.start()
        assert worker.proc is not None
        pid = worker.proc.pid
        t_start = time.monotonic()
        await worker.wait_ready(args.timeout)
        results["product_start_s"] = time.monotonic() - t_start
        await asyncio.sleep(RSS_SETTLE_S)  # the start-up peak is released after a few seconds
        results["rss_empty_mb"] = rss_mb(pid)  # the topic is still empty: a worker holding no entry
        worker.stop()
        # The topics are filled while no worker runs, then the worker starts again and the counter
        # is polled from its start: a batch fold can fold all of them within a settle delay.
        t0 = time.perf_counter()
        await produce(bootstrap, [product_topic, base_topic], records)
        size = sum(len(k) + len(v) for k, v in records) / len(records)
        print(f"\n[1] fold: produced {n:,} compact records (mean {size:.0f} B value+key) to two fresh "
              f"{parts}-partition topics in {time.perf_counter() - t0:.1f} s (not counted)")
        if not args.verify_rounds:
            del records
        worker.start()
        assert worker.proc is not None
        pid = worker.proc.pid
        profiler: list[subprocess.Popen[bytes] | None] = [None]
        prof_path = tmp / "profile.txt"

        def on_start() -> None:
            if args.profile_s:
                profiler[0] = start_profile(pid, args.profile_s, prof_path)

        fold_p = await time_fold(f"{worker.base_url}/healthz", product_handled, n,
                                 lambda: worker.proc is not None and worker.proc.poll() is None, args.timeout,
                                 on_start)
        results["fold_product"] = fold_p
        await asyncio.sleep(1.0)  # let the changelog producer flush its last batches
        results["rss_full_mb"] = rss_mb(pid)
        print(f"  product : {fold_p['events']:,} events in {fold_p['seconds']:.2f} s = {fold_p['rate']:,.0f} ev/s "
              f"(worker ready {results['product_start_s']:.1f} s after start; RSS {results['rss_empty_mb']:.0f} MB "
              f"empty, {results['rss_full_mb']:.0f} MB with {n:,} entries)")
        if profiler[0] is not None:
            try:
                profiler[0].wait(timeout=args.profile_s + 30)
            except subprocess.TimeoutExpired:
                profiler[0].kill()
        worker.stop()

        base_port = free_port()
        base_env = dict(os.environ, BENCH_BASELINE_APP_ID=base_id, BENCH_BASELINE_TOPIC=base_topic,
                        BENCH_BASELINE_DATA_DIR=str(tmp / "baseline"), BENCH_BASELINE_WEB_PORT=str(base_port),
                        BENCH_BASELINE_PARTITIONS=str(parts),
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        with (tmp / "logs" / "baseline.log").open("ab") as log_file:
            base = subprocess.Popen([sys.executable, "-m", "faust", "-A", "benchmarks.baseline_fold_app", "worker",
                                     "-l", "warn"], cwd=REPO, env=base_env, stdout=log_file,
                                    stderr=subprocess.STDOUT)
        procs.append(base)
        fold_b = await time_fold(f"http://127.0.0.1:{base_port}/count", lambda d: int(d["handled"]), n,
                                 lambda: base.poll() is None, args.timeout)
        results["fold_baseline"] = fold_b
        results["rss_baseline_mb"] = rss_mb(base.pid)
        print(f"  baseline: {fold_b['events']:,} events in {fold_b['seconds']:.2f} s = {fold_b['rate']:,.0f} ev/s "
              f"(RSS {results['rss_baseline_mb']:.0f} MB with {n:,} entries)")
        base.terminate()
        try:
            base.wait(timeout=30)
        except subprocess.TimeoutExpired:
            base.kill()
        results["ratio"] = fold_p["rate"] / fold_b["rate"]
        print(f"  product / baseline: {results['ratio']:.2f}x")
        if args.profile_s and prof_path.exists():
            summarise_profile(prof_path)

        # ---------------------------------------------------------------- 3. restore
        changelog = f"{env['VSYNC_APP_ID']}-entries-changelog"
        restored = await end_offsets(bootstrap, changelog)
        shutil.rmtree(env["VSYNC_DATA_DIR"], ignore_errors=True)
        worker2 = WorkerProcess(env, tmp / "logs" / "product-restore.log")
        procs.append(worker2)
        t_start = time.monotonic()
        worker2.start()
        await worker2.wait_ready(args.timeout)
        restore_s = time.monotonic() - t_start
        assert worker2.proc is not None
        # The restore phase itself, as the worker logs it (tables/restore.py).
        bulk = re.findall(r"bulk restore: (\d+) records in ([\d.]+) s", worker2.log_path.read_text(errors="replace"))
        phase_n, phase_s = (sum(int(b[0]) for b in bulk), sum(float(b[1]) for b in bulk)) if bulk else (0, 0.0)
        results["restore"] = {"records": restored, "seconds": restore_s, "ready_rate": restored / restore_s,
                              "rate": phase_n / phase_s if phase_s else float("nan"), "phase_records": phase_n,
                              "phase_s": phase_s, "rss_mb": rss_mb(worker2.proc.pid)}
        print(f"\n[3] restore: {restored:,} changelog records ({changelog}), data dir deleted\n"
              f"  restore phase (worker log): {phase_n:,} records in {phase_s:.2f} s = "
              f"{results['restore']['rate']:,.0f} records/s\n"
              f"  start → ready: {restore_s:.2f} s = {restored / restore_s:,.0f} records/s (includes process start, "
              f"group join and the ledger rebuild; RSS after restore {results['restore']['rss_mb']:.0f} MB)")
        worker2.stop()

        # ---------------------------------------------------------------- 2. latency
        results["latency"] = await latency(args, tmp, tag, procs)

        # ---------------------------------------------------------------- 5. verification, 64 partitions
        if args.verify_rounds:
            results["verify"] = await verification(args, tmp, tag, procs, records, model)

        # ---------------------------------------------------------------- 6. live path, today vs now
        if args.live_modes:
            from benchmarks.bench_livepath import live_args, livepath

            results["live"] = await livepath(live_args(args), tmp, tag, procs)
    finally:
        for p in procs:
            if isinstance(p, subprocess.Popen):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            else:
                p.stop()
    return results


async def verification(args: argparse.Namespace, tmp: Path, tag: str, procs: list[Any],
                       records: list[tuple[bytes, bytes]], model: Any) -> dict[str, Any]:
    """``POST /verify`` on a worker with ``--verify-partitions`` partitions holding the fold's entries.

    The DICT simulator runs in this process over the same model as the entries, with its VerifySync
    bucket relaxed (as tests/integration/conftest.py does) and the worker's pacing relaxed to match,
    so the figure is our side: combining every partition's ledger (``Cluster.snapshot``), one
    VerifySync per (participant, key type) over gRPC, the audit rows in PostgreSQL."""
    from vsync_stream.bridges.kafka_topics import TopicSpec, ensure_topics
    from vsync_stream.bridges.pacing import DICT_RATE_LIMITS
    from vsync_stream.simulator.server import DictSimulator, TokenBucket
    from vsync_stream.worker_process import WorkerProcess, free_port, run_env

    bootstrap = os.environ["VSYNC_KAFKA_BOOTSTRAP"]
    parts, n = args.verify_partitions, len(records)
    # Arrival time of every VerifySync at the simulator: splits a round into before / during the calls.
    arrivals: list[float] = []
    check_sync = model.check_sync

    def timed_check_sync(*a: Any) -> Any:
        arrivals.append(time.monotonic())
        return check_sync(*a)

    model.check_sync = timed_check_sync
    simulator = DictSimulator(model, rate_limits={"VerifySync": TokenBucket.per_minute(60_000, 10_000)})
    port = await simulator.start("127.0.0.1", 0)
    run_id = f"benchverify-{tag}"
    token = secrets.token_urlsafe(24)
    env = run_env(run_id, bridge_target=f"127.0.0.1:{port}", participants=PARTICIPANTS, token=token,
                  data_root=tmp / "product", web_port=free_port(), partitions=parts,
                  extra={"VSYNC_ADAPTER_ENABLED": "false", "VSYNC_BRIDGE_RATE_LIMITS": "VerifySync=60000/min:10000"})
    worker = WorkerProcess(env, tmp / "logs" / "product-verify.log")
    procs.append(worker)
    try:
        t0 = time.perf_counter()
        await ensure_topics(bootstrap, [TopicSpec(env["VSYNC_KEY_EVENTS_TOPIC"], parts)])
        await produce(bootstrap, [env["VSYNC_KEY_EVENTS_TOPIC"]], records)
        print(f"\n[5] verification with {parts} partitions: produced the same {n:,} records to a fresh "
              f"{parts}-partition topic in {time.perf_counter() - t0:.1f} s (not counted)")
        t_start = time.monotonic()
        worker.start()
        await worker.wait_ready(args.timeout)
        ready_s = time.monotonic() - t_start
        fold = await time_fold(f"{worker.base_url}/healthz", product_handled, n,
                               lambda: worker.proc is not None and worker.proc.poll() is None, args.timeout)
        print(f"  worker ready {ready_s:.1f} s after start; folded {n:,} entries over {parts} partitions "
              f"({fold['rate']:,.0f} ev/s, not a target figure)")
        rounds: list[dict[str, float]] = []
        docs: list[dict[str, Any]] = []
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as session:
            for _ in range(args.verify_rounds + 1):  # round 0 warms up (gRPC channel, PostgreSQL pool)
                arrivals.clear()
                t = time.monotonic()
                async with session.post(f"{worker.base_url}/verify", headers=headers) as resp:
                    body = await resp.text()
                    if resp.status != 200:
                        raise BenchFailed(f"POST /verify answered {resp.status}: {body[:300]}")
                done = time.monotonic()
                doc = json.loads(body)
                if not arrivals:
                    raise BenchFailed("POST /verify answered without calling VerifySync")
                rounds.append({"total": done - t, "before": arrivals[0] - t, "calls": arrivals[-1] - arrivals[0],
                               "after": done - arrivals[-1], "pairs": len(doc["verifications"])})
                docs.append(doc)
                await asyncio.sleep(0.5)
    finally:
        worker.stop()
        await simulator.stop()
        model.check_sync = check_sync
    warm, measured = rounds[0], rounds[1:]
    last = docs[-1]["verifications"]
    results = Counter(v["result"] for d in docs for v in d["verifications"])
    entries = sum(int(v["entries"]) for v in last)

    def pct(key: str, q: float) -> float:
        vals = sorted(r[key] for r in measured)
        return 1000 * vals[min(len(vals) - 1, int(len(vals) * q))]

    res = {"partitions": parts, "pairs": int(measured[-1]["pairs"]), "entries": entries, "rounds": len(measured),
           "p50": pct("total", 0.5), "max": pct("total", 1.0), "warm_ms": 1000 * warm["total"],
           "before_p50": pct("before", 0.5), "calls_p50": pct("calls", 0.5), "after_p50": pct("after", 0.5),
           "results": dict(results)}
    print(f"  POST /verify, {res['rounds']} rounds after 1 warm-up round ({res['warm_ms']:,.0f} ms): "
          f"p50 {res['p50']:,.0f} ms, max {res['max']:,.0f} ms for {res['pairs']} pairs (participant, key type), "
          f"{entries:,} entries; results {dict(sorted(results.items()))}\n"
          f"  p50 split (VerifySync arrival times at the simulator): request → first VerifySync "
          f"{res['before_p50']:,.0f} ms (combining {parts} partitions' ledgers, Cluster.snapshot), first → last "
          f"VerifySync {res['calls_p50']:,.0f} ms ({res['pairs'] - 1} sequential gRPC round trips), last "
          f"VerifySync → response {res['after_p50']:,.0f} ms (last answer, audit rows in PostgreSQL)\n"
          f"  the simulator's VerifySync rate limit is relaxed (VSYNC_BRIDGE_RATE_LIMITS=VerifySync=60000/min:10000"
          f"), so this is our side only: in production the DICT's real VerifySync rate limit, not this figure, "
          f"dominates a round")
    limit = DICT_RATE_LIMITS["VerifySync"]
    res["dict_limit"] = (limit.refill_per_s * 60, limit.capacity)
    print(f"  the DICT's published VerifySync limit ({limit.refill_per_s * 60:.0f}/min, bucket {limit.capacity:.0f}; "
          f"bridges/pacing.py): a round of {res['pairs']} pairs takes {res['pairs']} tokens, so at most "
          f"{int(limit.capacity // res['pairs'])} rounds back to back, then one per "
          f"{res['pairs'] / limit.refill_per_s:.0f} s; and each VerifySync is a network round trip to the DICT, "
          f"not {res['calls_p50'] / max(res['pairs'] - 1, 1):.1f} ms on localhost")
    return res


async def latency(args: argparse.Namespace, tmp: Path, tag: str, procs: list[Any]) -> dict[str, Any]:
    """Pulsar publish → table update, with the adapter in its own process (``vsync-stream adapter``)
    beside a worker run with ``VSYNC_ADAPTER_ENABLED=false``: at the fixed offered load, then at
    saturation (published as fast as the publisher can)."""
    import pulsar

    from vsync_stream.bridges.pulsar_source import ensure_subscription
    from vsync_stream.simulator.publisher import EventPublisher
    from vsync_stream.worker_process import WorkerProcess, free_port, run_env

    m_fixed = [int(rate * args.duration) for rate in args.rates]
    events = generate(sum(m_fixed) + args.sat_events + 1, args.seed + 1)
    run_id = f"benchlat-{tag}"
    env = run_env(run_id, bridge_target="127.0.0.1:9", participants=PARTICIPANTS, token=secrets.token_urlsafe(16),
                  data_root=tmp / "product", web_port=free_port(), partitions=args.partitions,
                  extra={"VSYNC_ADAPTER_ENABLED": "false"})
    ensure_subscription(os.environ["VSYNC_PULSAR_URL"], env["VSYNC_PULSAR_TOPIC"], env["VSYNC_PULSAR_SUBSCRIPTION"])
    worker = WorkerProcess(env, tmp / "logs" / "product-latency.log")
    procs.append(worker)
    worker.start()
    with (tmp / "logs" / "adapter.log").open("ab") as log_file:
        adapter = subprocess.Popen([sys.executable, "-m", "vsync_stream", "adapter"], env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    procs.append(adapter)
    await worker.wait_ready(args.timeout)
    publisher = EventPublisher(os.environ["VSYNC_PULSAR_URL"], env["VSYNC_PULSAR_TOPIC"],
                               batching_type=pulsar.BatchingType.KeyBased, batching_max_publish_delay_ms=1)
    await publisher.start()
    # Warm up the path (topic lookup, producer, adapter consumer) with 1 event, not measured.
    await publisher.send(events[0])
    await worker.wait_handled(1, args.timeout)
    res: dict[str, Any] = {"fixed": {}}
    try:
        base = 1
        for rate, m in zip(args.rates, m_fixed, strict=True):
            res["fixed"][rate] = await _latency_run(args, worker, publisher, events[base:base + m], base, rate,
                                                    lambda: adapter.poll() is None)
            _print_latency(f"{m:,} events offered at {rate:,} ev/s for {args.duration} s", res["fixed"][rate])
            base += m
        if args.sat_events:
            prof_path = tmp / "profile-adapter.txt"
            profiler = start_profile(adapter.pid, args.profile_s, prof_path) if args.profile_s else None
            res["saturation"] = await _latency_run(args, worker, publisher, events[base:], base, None,
                                                   lambda: adapter.poll() is None)
            sat = res["saturation"]
            _print_latency(f"saturation: {args.sat_events:,} events published as fast as possible", sat)
            print(f"  throughput at saturation: {sat['throughput']:,.0f} ev/s Pulsar publish → table (first publish to "
                  f"last event folded)")
            if profiler is not None:
                try:
                    profiler.wait(timeout=args.profile_s + 30)
                except subprocess.TimeoutExpired:
                    profiler.kill()
                summarise_profile(prof_path, process="the adapter process (saturation run)")
    finally:
        await publisher.stop()
        adapter.terminate()
        try:
            adapter.wait(timeout=30)
        except subprocess.TimeoutExpired:
            adapter.kill()
        worker.stop()
    return res


async def _latency_run(args: argparse.Namespace, worker: Any, publisher: Any, events: list[Any], base: int,
                       rate: int | None, adapter_alive: Callable[[], bool]) -> dict[str, Any]:
    m = len(events)
    sent = [0.0] * m
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not stop.is_set():
                doc = await get_json(session, f"{worker.base_url}/healthz")
                if doc is not None:
                    samples.append((time.monotonic(), product_handled(doc) - base))
                    if samples[-1][1] >= m:
                        return
                if not adapter_alive():
                    raise BenchFailed("the adapter process exited")
                await asyncio.sleep(POLL_S)

    task = asyncio.create_task(sampler())
    t0 = time.monotonic()
    i = 0
    while i < m:
        due = m if rate is None else min(m, int((time.monotonic() - t0) * rate) + 1)
        while i < due:
            sent[i] = time.monotonic()
            await publisher.publish(events[i])
            i += 1
            if rate is None and i % 1000 == 0:
                await asyncio.sleep(0)  # let the sampler run
        await asyncio.sleep(0.001)
    publish_s = time.monotonic() - t0
    await publisher.flush()
    try:
        await asyncio.wait_for(task, timeout=args.timeout)
    except TimeoutError:
        stop.set()
        raise BenchFailed(f"latency run: only {samples[-1][1] if samples else 0:,}/{m:,} events handled in time; "
                          f"see {worker.log_path}") from None
    lat: list[float] = []
    j = 0
    for k in range(m):
        while samples[j][1] < k + 1:
            j += 1
        lat.append((samples[j][0] - sent[k]) * 1000)
    lat.sort()
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False)]
    return {"events": m, "offered": rate, "achieved": m / publish_s, "p50": lat[len(lat) // 2],
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1],
            "throughput": m / (samples[-1][0] - t0),
            "sample_gap_ms": 1000 * sorted(gaps)[len(gaps) // 2] if gaps else float("nan"),
            "sample_gap_max_ms": 1000 * max(gaps) if gaps else float("nan")}


def _print_latency(title: str, res: dict[str, Any]) -> None:
    print(f"\n[2] latency Pulsar publish → table update (adapter in its own process): {title} (achieved "
          f"{res['achieved']:,.0f} ev/s publishing)\n"
          f"  p50 {res['p50']:.0f} ms, p99 {res['p99']:.0f} ms, max {res['max']:.0f} ms\n"
          f"  method: latency(i) = receipt of the first /healthz sample with handled >= i+1 minus the time event i was"
          f" handed to the Pulsar producer; samples every {res['sample_gap_ms']:.0f} ms (median gap, max gap "
          f"{res['sample_gap_max_ms']:.0f} ms): an upper bound, resolution ~{res['sample_gap_ms']:.0f} ms; partitions"
          f" fold in parallel, so counter order approximates publish order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="records folded and restored [200000]")
    parser.add_argument("--rates", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 5000],
                        help="offered loads of the latency runs, events/s, comma-separated [1000,5000]")
    parser.add_argument("--duration", type=int, default=20, help="length of the latency run, s [20]")
    parser.add_argument("--sat-events", type=int, default=30_000,
                        help="events of the saturation latency run (0: skip) [30000]")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--verify-partitions", type=int, default=64,
                        help="partitions of the verification step's worker [64]")
    parser.add_argument("--verify-rounds", type=int, default=5,
                        help="timed POST /verify rounds after 1 warm-up (0: skip the step) [5]")
    parser.add_argument("--profile-s", type=int, default=0, help="py-spy the product fold for this many s [off]")
    parser.add_argument("--timeout", type=float, default=900, help="deadline of each step, s [900]")
    parser.add_argument("--tmp-dir", default=None, help="where data dirs and logs go [system temp dir]")
    parser.add_argument("--keep-tmp", action="store_true", help="keep data dirs and logs")
    parser.add_argument("--seed", type=int, default=20261129)
    from benchmarks.bench_livepath import add_arguments, print_table

    add_arguments(parser)  # step [6], the live path (benchmarks/bench_livepath.py)
    args = parser.parse_args()

    print(versions())
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=args.tmp_dir))
    ok = False
    try:
        r = asyncio.run(bench(args, tmp))
        ok = True
    except BenchFailed as exc:
        raise SystemExit(f"benchmark failed: {exc} (logs kept in {tmp / 'logs'})") from None
    finally:
        if ok and not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"data dirs and logs kept in {tmp}")

    if r.get("live"):
        print_table(r["live"])
    if args.only_live:
        return
    n = args.events
    fold_p, fold_b, rest = r["fold_product"], r["fold_baseline"], r["restore"]
    per_m = r["rss_empty_mb"] + (r["rss_full_mb"] - r["rss_empty_mb"]) * 1_000_000 / n
    mem_how = "measured" if n == 1_000_000 else "extrapolated"

    def mark(ok_: bool) -> str:
        return "met" if ok_ else "NOT MET"

    rows = [
        ("fold, product", f"{fold_p['rate']:,.0f} ev/s", f">= {FOLD_TARGET:,} ev/s per worker",
         mark(fold_p["rate"] >= FOLD_TARGET)),
        ("fold, baseline (per-event agent)", f"{fold_b['rate']:,.0f} ev/s", "-", "-"),
        ("fold, product / baseline", f"{r['ratio']:.2f}x", f">= {RATIO_TARGET:.0f}x", mark(r["ratio"] >= RATIO_TARGET)),
    ]
    for rate, lat in r["latency"]["fixed"].items():
        at_target_rate = rate >= P99_TARGET_RATE
        rows.append((f"latency p99 at {rate:,} ev/s", f"{lat['p99']:,.0f} ms",
                     f"<= {P99_TARGET_MS:.0f} ms at {P99_TARGET_RATE:,} ev/s",
                     mark(lat["p99"] <= P99_TARGET_MS) if at_target_rate else
                     f"below the target load ({'within' if lat['p99'] <= P99_TARGET_MS else 'over'} the bound)"))
    rows += [
        (f"restore ({rest['records']:,} records)", f"{rest['rate']:,.0f} rec/s", f">= {RESTORE_TARGET:,} rec/s",
         mark(rest["rate"] >= RESTORE_TARGET)),
        ("restore, start → ready", f"{rest['seconds']:,.1f} s", "-", f"{rest['ready_rate']:,.0f} rec/s overall"),
        (f"memory per 1 M entries ({mem_how})", f"{per_m:,.0f} MB", f"<= {MEM_TARGET_MB:.0f} MB",
         "invalid: RSS fell while folding" if r["rss_full_mb"] <= r["rss_empty_mb"] else
         mark(per_m <= MEM_TARGET_MB) if n == 1_000_000 else
         "not judged: the RocksDB buffers fill early, so a linear extrapolation overstates it (--events 1000000)"),
    ]
    sat = r["latency"].get("saturation")
    if sat:
        rows.insert(3 + len(r["latency"]["fixed"]), ("latency p99 at saturation", f"{sat['p99']:,.0f} ms", "-",
                        f"{sat['throughput']:,.0f} ev/s end to end"))
    ver = r.get("verify")
    if ver:
        rows.append((f"verify, {ver['partitions']} partitions, p50 / max", f"{ver['p50']:,.0f} / {ver['max']:,.0f} ms",
                     "- (measured, no target)", f"{ver['pairs']} pairs, {ver['entries']:,} entries, our side only"))
    print(f"\n{'figure':<40} {'measured':>14}  {'target':<30} result")
    for name, val, target, res in rows:
        print(f"{name:<40} {val:>14}  {target:<30} {res}")
    if n == 1_000_000:
        print(f"\nmemory: worker RSS {r['rss_empty_mb']:.0f} MB ready and empty ({RSS_SETTLE_S:.0f} s after ready), "
              f"{r['rss_full_mb']:.0f} MB holding 1,000,000 entries: MEASURED "
              f"({r['rss_full_mb'] - r['rss_empty_mb']:+.0f} MB for the entries).")
    else:
        print(f"\nmemory: worker RSS {r['rss_empty_mb']:.0f} MB ready and empty, {r['rss_full_mb']:.0f} MB after "
              f"folding {n:,} entries; per million = empty + (full - empty) x 1e6 / {n:,}, EXTRAPOLATED linearly, "
              f"not measured (use --events 1000000).")
    # 10 M: the restore phase and the rebuild scale with records, process start and group join do not.
    fixed_s = r["product_start_s"]
    per_rec_s = max(rest["seconds"] - fixed_s, 0.0) / rest["records"]
    if rest["records"] < 500_000:
        print(f"restore measured at {rest['records']:,} records only; too few to extrapolate to 10 M "
              f"(use --events 1000000).")
    else:
        print(f"restore measured at {rest['records']:,} records. 10 M EXTRAPOLATED, not run: start → ready ≈ "
              f"{fixed_s:.1f} s (start and group join of an empty worker) + 10,000,000 x {1e6 * per_rec_s:.1f} "
              f"µs/record (this run's remainder: restore phase and ledger rebuild) ≈ "
              f"{fixed_s + 1e7 * per_rec_s:,.0f} s; "
              f"restore phase ≈ {1e7 / rest['rate'] if rest['rate'] == rest['rate'] else float('nan'):,.0f} s at this "
              f"run's rate.")
    if ver:
        print(f"verification: {ver['pairs']} pairs over {ver['partitions']} partitions in {ver['rounds']} rounds, "
              f"results {ver['results']}; the DICT's real VerifySync rate limit, not this figure, bounds a round in "
              f"production (relaxed here).")


if __name__ == "__main__":
    main()
