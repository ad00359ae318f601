"""The reconciler: on NOK, find the exact divergence of one (participant, key type) and correct it.

BACEN's procedure (BCB DICT API, "Sincronismo"; DESIGN 2.7):

1. cheap path — the DICT's CID event log since the last OK: CIDs it added that the local base
   lacks, CIDs it removed that the local base still has; correct, verify again;
2. full path — the DICT's CID file: an exact, streaming diff against the local CIDs; correct,
   verify again;
3. still NOK → repeat (bounded), and report.

Corrections are key events sent through the key-events topic (the fold stays the single writer),
each with a notice to the participant's core system. One run per pair at a time; each run is
audited in PostgreSQL and its progress is visible while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from vsync_stream.domain.cidset import CidDiffSummary, CidSetDiff
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import KeyChange, change_of
from vsync_stream.domain.fold import EntryState, expectation_holds, is_older
from vsync_stream.domain.reconcile import (
    Correction,
    CorrectionKind,
    changed_after,
    corrective_event,
    net_cid_changes,
    plan_corrections,
)
from vsync_stream.errors import BridgeError, VsyncError
from vsync_stream.logging_setup import log_context
from vsync_stream.metrics import CORRECTIONS, CORRECTIONS_DEFERRED, RECONCILIATION_SECONDS, RECONCILIATIONS

log = logging.getLogger(__name__)

CID_FILE_POLL_S = 60.0  # BCB: poll a requested CID file about once per minute
CID_FILE_WAIT_S = 1800.0
APPLY_WAIT_S = 120.0
SCAN_GATHER_S = 0.2


class ReconciliationFailed(VsyncError):
    """A reconciliation could not finish (the DICT's file failed, corrections were not applied…)."""


@dataclass
class Reconciliation:
    """One run for one (participant, key type); the web view and the audit store show it."""

    id: str
    participant: str
    key_type: str
    trigger: str
    started_at: datetime
    path: str = "cheap"
    phase: str = "starting"
    state: str = "running"  # running | waiting (``waiting_for`` says on what) | finished | cancelled
    waiting_for: str | None = None
    done: int = 0
    total: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    deferred: int = 0
    superseded: int = 0
    attempts: int = 0
    result: str | None = None
    error: str | None = None
    finished_at: datetime | None = None
    history: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready camelCase view (no personal data: counts, CID-free phases)."""
        return {"id": self.id, "participant": self.participant, "keyType": self.key_type, "trigger": self.trigger,
                "path": self.path, "phase": self.phase, "state": self.state, "waitingFor": self.waiting_for,
                "progress": {"done": self.done, "total": self.total},
                "added": self.added, "removed": self.removed, "changed": self.changed, "deferred": self.deferred,
                "superseded": self.superseded, "attempts": self.attempts,
                "result": self.result, "error": self.error, "startedAt": self.started_at.isoformat(),
                "finishedAt": self.finished_at.isoformat() if self.finished_at else None, "history": self.history}


class Table(Protocol):
    """What the reconciler reads from the entries table, over every partition whatever worker owns
    it (``vsync_stream.cluster.Cluster`` implements it)."""

    async def check_ready(self) -> None: ...
    async def get_raw(self, key: bytes) -> bytes | None: ...
    def pair_cids(self, participant: str, key_type: str) -> Iterator[str]: ...
    def find_cids(self, wanted: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], dict[str, str]]: ...


class Reconciler:
    """Runs reconciliations, at most one per (participant, key type) at a time.

    Args:
        table: the entries table over every partition (``Cluster``).
        bridge: the Bridge client.
        verify_pair: verifies one pair now and returns ``"OK"``/``"NOK"``/``"ERROR"``.
        last_ok: returns when the pair was last verified OK (None if never).
        send_event: sends a corrective event to the key-events topic; resolves once Kafka has it.
        send_notice: sends a notice to the core system's topic; resolves once Kafka has it.
        record: stores a finished run in the audit store.
        workdir: where CID files and diff buckets go (temporary).
        max_attempts: full-path attempts before giving up with NOK.
        cid_file_poll_s: pause between polls of a requested CID file, seconds (BCB: about a minute).
    """

    def __init__(self, table: Table, bridge: Any, verify_pair: Callable[[str, str], Awaitable[str]],
                 last_ok: Callable[[str, str], Awaitable[datetime | None]],
                 send_event: Callable[[KeyChange], Awaitable[None]],
                 send_notice: Callable[[dict[str, Any]], Awaitable[None]],
                 record: Callable[[Reconciliation], Awaitable[None]], workdir: Path | None = None,
                 max_attempts: int = 3, cid_file_poll_s: float = CID_FILE_POLL_S) -> None:
        self.table, self.bridge = table, bridge
        self.cid_file_poll_s = cid_file_poll_s
        self._verify_pair, self._last_ok = verify_pair, last_ok
        self._send_event, self._send_notice, self._record = send_event, send_notice, record
        self.workdir = workdir
        self.max_attempts = max_attempts
        self.runs: dict[str, Reconciliation] = {}
        self._lookups: list[tuple[tuple[str, str], set[str], asyncio.Future[dict[str, str]]]] = []
        self._scanner: asyncio.Future[None] | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Future[Reconciliation]] = {}

    def running(self) -> list[Reconciliation]:
        """Runs not finished yet."""
        return [r for r in self.runs.values() if r.finished_at is None]

    def start(self, participant: str, key_type: str, trigger: str) -> Reconciliation:
        """Start a run in the background and return it at once (its ``id`` can be polled).

        A run already going for the pair is returned instead of starting a second one.
        """
        for run in self.running():
            if (run.participant, run.key_type) == (participant, key_type):
                return run
        run = Reconciliation(str(uuid.uuid4()), participant, key_type, trigger, datetime.now(UTC))
        self.runs[run.id] = run
        task = asyncio.ensure_future(self.run(run))
        self._tasks[run.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run.id, None))
        return run

    def cancel(self, run_id: str) -> Reconciliation | None:
        """Cancel a running reconciliation (e.g. one waiting hours for the DICT's CID file budget).

        The run ends as ``CANCELLED`` (audited like any other) and releases its pair at once;
        corrective events already sent stay (each is conditional, so none undoes a newer change).

        Returns:
            The run (already finished runs are returned unchanged), or None when there is no such run.
        """
        run = self.runs.get(run_id)
        task = self._tasks.get(run_id)
        if run is not None and task is not None and not task.done():
            run.error = "cancelled by an operator"
            task.cancel()
        return run

    async def run(self, run: Reconciliation) -> Reconciliation:
        """Reconcile one pair until the DICT answers OK or the attempts run out."""
        with log_context(reconciliation_id=run.id, participant=run.participant, key_type=run.key_type,
                         trigger=run.trigger):
            return await self._run(run)

    async def _run(self, run: Reconciliation) -> Reconciliation:
        lock = self._locks.setdefault((run.participant, run.key_type), asyncio.Lock())
        started = time.perf_counter()
        async with lock:
            try:
                await self._reconcile(run)
            except (VsyncError, OSError) as exc:
                run.result, run.error = "ERROR", f"{type(exc).__name__}: {exc}"
                log.error("reconciliation %s of %s/%s failed: %s", run.id, run.participant, run.key_type, run.error)
            except asyncio.CancelledError:
                run.result, run.error = "CANCELLED", run.error or "cancelled (the worker is stopping)"
                log.warning("reconciliation %s of %s/%s cancelled in phase %r", run.id, run.participant,
                            run.key_type, run.phase)
            finally:
                run.finished_at = datetime.now(UTC)
                run.state = "cancelled" if run.result == "CANCELLED" else "finished"
                run.waiting_for = None
                run.phase = "finished"
                RECONCILIATIONS.labels(path=run.path, result=run.result or "ERROR").inc()
                RECONCILIATION_SECONDS.observe(time.perf_counter() - started)
                try:
                    await self._record(run)
                except VsyncError as exc:
                    log.error("could not audit reconciliation %s: %s", run.id, exc)
                log.info("reconciliation %s of %s/%s finished: %s, path %s, added %d, removed %d, changed %d",
                         run.id, run.participant, run.key_type, run.result, run.path, run.added, run.removed,
                         run.changed)
        return run

    def _phase(self, run: Reconciliation, phase: str, total: int = 0, waiting_for: str | None = None) -> None:
        run.phase, run.done, run.total = phase, 0, total
        run.state, run.waiting_for = ("waiting", waiting_for) if waiting_for else ("running", None)
        run.history.append(phase)
        log.info("reconciliation %s %s/%s: %s", run.id, run.participant, run.key_type, phase)

    async def _reconcile(self, run: Reconciliation) -> None:
        await self.table.check_ready()
        since = await self._last_ok(run.participant, run.key_type)
        if since is not None:
            run.path, run.attempts = "cheap", 1
            await self._cheap_path(run, since)
            run.result = await self._verify(run)
            if run.result == "OK":
                return
        run.path = "full"
        for attempt in range(1, self.max_attempts + 1):
            run.attempts += 1
            await self._full_path(run)
            run.result = await self._verify(run)
            if run.result == "OK":
                return
            log.warning("reconciliation %s: still %s after full path attempt %d", run.id, run.result, attempt)

    async def _verify(self, run: Reconciliation) -> str:
        self._phase(run, "verifying")
        return await self._verify_pair(run.participant, run.key_type)

    # -- the two paths ------------------------------------------------------------------------
    async def _cheap_path(self, run: Reconciliation, since: datetime) -> None:
        self._phase(run, "reading the DICT's CID event log")
        events: list[tuple[str, str]] = []
        cut_ms = int(time.time() * 1000)  # the log is read up to now: the local rows are judged as of then
        until = datetime.now(UTC) + timedelta(seconds=1)
        # Start a little before the last OK: the log is inclusive and clocks differ.
        async for event in self.bridge.iter_cid_events(run.participant, run.key_type, since - timedelta(seconds=5),
                                                       until):
            events.append((event.cid, event.type))
            run.done += 1
        added, removed = net_cid_changes(events)
        local = await self._local_cids(run, added | removed)
        only_dict = {cid for cid in added if cid not in local}
        only_local = {cid: local[cid] for cid in removed if cid in local}
        await self._correct(run, only_dict, only_local, cut_ms)

    async def _full_path(self, run: Reconciliation) -> None:
        budget_wait = self._budget_wait("CreateCidFile")
        if budget_wait > 0:  # 40 files a day: the run may wait hours; it says so and can be cancelled
            self._phase(run, "waiting for the DICT's CID file budget", waiting_for=(
                f"the DICT's CID file budget (CreateCidFile, 40 a day) is spent; the next file can be requested "
                f"in about {budget_wait / 60:.0f} min (cancel with POST /reconciliations/{run.id}/cancel)"))
        else:
            self._phase(run, "requesting the DICT's CID file")
        job = await self.bridge.create_cid_file(run.participant, run.key_type)
        requested = datetime.now(UTC)
        deadline = time.monotonic() + CID_FILE_WAIT_S
        self._phase(run, "waiting for the DICT's CID file", waiting_for=f"the DICT prepares CID file {job}; "
                                                                       f"polled every {self.cid_file_poll_s:g} s")
        while True:
            status = await self.bridge.get_cid_file(job)
            if status.status == "AVAILABLE":
                break
            if status.status in ("ERROR", "UNAVAILABLE"):
                raise ReconciliationFailed(f"the DICT's CID file {job} ended as {status.status}")
            if time.monotonic() > deadline:
                raise ReconciliationFailed(f"the DICT's CID file {job} was not ready within {CID_FILE_WAIT_S:.0f} s")
            await asyncio.sleep(self.cid_file_poll_s)
        # The file is the DICT's set at its request time: the cut every correction is judged against.
        cut = status.requested_at or requested
        cut_ms = int(cut.timestamp() * 1000)
        with tempfile.TemporaryDirectory(prefix="vsync-reconcile-", dir=self.workdir) as tmp:
            path = Path(tmp) / "dict.cids"
            self._phase(run, "downloading the CID file", total=status.byte_size or 0)
            download = self.bridge.download_cid_file(job)
            with path.open("wb") as out:
                async for chunk in download:
                    out.write(chunk)
                    run.done += len(chunk)
            self._phase(run, "diffing local CIDs against the CID file")
            only_dict, only_local_cids, summary = await asyncio.to_thread(
                diff_file_with_local, path, self._pair_cids(run), Path(tmp), self._progress(run))
        log.info("reconciliation %s: CID file of %d CIDs vs %d local: %d only at the DICT, %d only local",
                 run.id, summary.remote_count, summary.local_count, summary.only_remote, summary.only_local)
        if summary.remote_duplicates:
            log.warning("reconciliation %s: the DICT's CID file repeats %d CIDs", run.id, summary.remote_duplicates)
        if only_dict or only_local_cids:
            await self._explain_window(run, cut, only_dict, only_local_cids)
        only_local = await self._local_cids(run, only_local_cids)
        await self._correct(run, only_dict, only_local, cut_ms)

    async def _explain_window(self, run: Reconciliation, cut: datetime, only_dict: set[str],
                              only_local: set[str]) -> None:
        """Drop the differences the DICT's CID event log explains (issue #14, item 1).

        The local CIDs were read after the file's time, while the fold kept running: a CID the DICT
        added since is not "only local", one it removed since is not "only at the DICT" — the
        pipeline carries those changes itself. Any CID with an event from the cut to now is left
        alone; the next verification decides about it.
        """
        self._phase(run, "reading the DICT's CID event log since the file's time")
        touched: set[str] = set()
        until = datetime.now(UTC) + timedelta(seconds=1)
        # The file's time and the log's timestamps are both the DICT's clock; the start is inclusive.
        async for event in self.bridge.iter_cid_events(run.participant, run.key_type, cut, until):
            touched.add(event.cid.lower())
            run.done += 1
        explained_dict, explained_local = only_dict & touched, only_local & touched
        only_dict -= explained_dict
        only_local -= explained_local
        if explained_dict or explained_local:
            CORRECTIONS_DEFERRED.labels(side="dict").inc(len(explained_dict))
            CORRECTIONS_DEFERRED.labels(side="local").inc(len(explained_local))
            run.deferred += len(explained_dict) + len(explained_local)
            log.info("reconciliation %s: %d differences changed at the DICT after the file's time; left to the "
                     "pipeline", run.id, len(explained_dict) + len(explained_local))

    def _budget_wait(self, operation: str) -> float:
        """Seconds until the client's bucket for ``operation`` holds a token (0.0 if unpaced)."""
        pacer = getattr(self.bridge, "pacer", None)
        return float(pacer.seconds_until_token(operation)) if pacer is not None else 0.0

    def _progress(self, run: Reconciliation) -> Callable[[int], None]:
        def advance(n: int) -> None:
            run.done += n
        return advance

    # -- local side ---------------------------------------------------------------------------
    def _pair_cids(self, run: Reconciliation) -> Iterator[str]:
        return self.table.pair_cids(run.participant, run.key_type)

    async def _local_cids(self, run: Reconciliation, wanted: set[str]) -> dict[str, str]:
        """CID → Pix key for the local CIDs of the pair that are in ``wanted``.

        Requests of concurrent runs are served by one shared table scan, in a worker thread, so
        ten NOK pairs cost one pass over the table and the event loop keeps folding.
        """
        if not wanted:
            return {}
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._lookups.append(((run.participant, run.key_type), wanted, future))
        if self._scanner is None or self._scanner.done():
            self._scanner = asyncio.ensure_future(self._scan_lookups())
        return await future

    async def _scan_lookups(self) -> None:
        await asyncio.sleep(SCAN_GATHER_S)  # let the other runs of this round ask too
        while self._lookups:
            batch, self._lookups = self._lookups, []
            merged: dict[tuple[str, str], set[str]] = {}
            for pair, wanted, _future in batch:
                merged.setdefault(pair, set()).update(wanted)
            try:
                found = await asyncio.to_thread(self.table.find_cids, merged)
            except Exception as exc:  # hand the failure to every waiting run
                for _pair, _wanted, future in batch:
                    future.set_exception(exc)
                continue
            for pair, wanted, future in batch:
                future.set_result({cid: key for cid, key in found[pair].items() if cid in wanted})

    # -- corrections --------------------------------------------------------------------------
    async def _correct(self, run: Reconciliation, only_dict: set[str], only_local: dict[str, str],
                       cut_ms: int) -> None:
        self._phase(run, "fetching the DICT's entries by CID", total=len(only_dict))
        entries: dict[str, Entry] = {}
        fetched_at: dict[str, int] = {}  # CID -> epoch ms when its fetch started: the entry's moment
        for cid in sorted(only_dict):
            try:
                fetched_at[cid] = int(time.time() * 1000)
                entries[cid] = await self.bridge.get_entry_by_cid(run.participant, run.key_type, cid)
            except BridgeError as exc:
                if type(exc).__name__ != "BridgeNotFound":
                    raise
                log.info("reconciliation %s: a CID left the DICT meanwhile; the next verification decides", run.id)
            run.done += 1
        corrections = plan_corrections(run.participant, run.key_type, entries, only_local)
        self._phase(run, "sending corrective events", total=len(corrections))
        sent: list[tuple[bytes, KeyChange]] = []
        for correction in corrections:
            key = correction.key.encode("utf-8")
            raw = await self.table.get_raw(key)
            stored = EntryState.decode(raw) if raw is not None else None
            run.done += 1
            if not _still_judged(correction, stored, cut_ms):
                # The row changed after the cut (or since the diff): a newer change wins (issue #14).
                run.deferred += 1
                CORRECTIONS_DEFERRED.labels(side="row").inc()
                continue
            # An add or replace orders when its entry was fetched: a DICT event after that beats it.
            moment = fetched_at.get(correction.dict_cid or "", int(time.time() * 1000))
            event = change_of(corrective_event(correction, stored, moment, cut_ms))
            await self._send_event(event)
            await self._send_notice(_notice(run, correction))
            # CIDs and the event id only: the Pix key and the entry are personal data.
            log.info("reconciliation %s: %s correction sent as event %s (local CID %s, DICT CID %s)", run.id,
                     correction.kind.value, event.event_id, correction.local_cid, correction.dict_cid,
                     extra={"event_id": event.event_id})
            sent.append((key, event))
            self._count(run, correction)
        await self._wait_applied(run, sent)

    def _count(self, run: Reconciliation, correction: Correction) -> None:
        CORRECTIONS.labels(kind=correction.kind.value).inc()
        if correction.kind is CorrectionKind.ADD:
            run.added += 1
        elif correction.kind is CorrectionKind.REMOVE:
            run.removed += 1
        else:
            run.changed += 1

    async def _wait_applied(self, run: Reconciliation, sent: list[tuple[bytes, KeyChange]]) -> None:
        """Wait until the fold has applied (or superseded) every corrective event."""
        self._phase(run, "waiting for the fold to apply the corrections", total=len(sent))
        deadline = time.monotonic() + APPLY_WAIT_S
        pending = sent
        while pending:
            still = []
            for key, event in pending:
                raw = await self.table.get_raw(key)
                state = EntryState.decode(raw) if raw is not None else None
                if event.expected is not None and not expectation_holds(state, event, event.expected):
                    if state is None or state.event_id != event.event_id:
                        run.superseded += 1  # a newer change reached the row first: the fold left it
                    continue
                applied = state is not None and (state.event_id == event.event_id or is_older(event, state))
                if not applied:
                    still.append((key, event))
            run.done = len(sent) - len(still)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise ReconciliationFailed(f"{len(pending)} corrective events were not folded within "
                                               f"{APPLY_WAIT_S:.0f} s; is the fold agent running?")
                await asyncio.sleep(0.2)


def diff_file_with_local(cid_file: Path, local_cids: Iterator[str], workdir: Path,
                         progress: Callable[[int], None]) -> tuple[set[str], set[str], CidDiffSummary]:
    """Exact, streaming difference between the DICT's CID file and the local CIDs (64 hex each).

    Both sides go through ``CidSetDiff`` (radix buckets on disk), so memory stays bounded whatever
    the number of CIDs; only the differences are returned as sets.

    Raises:
        InvalidEntry: a line of the CID file is malformed (its number is in the message).
    """
    with CidSetDiff(workdir, progress=lambda _phase, n: progress(n)) as diff:
        diff.remote.add_cid_file(cid_file)
        diff.local.extend_hex(local_cids)
        summary = diff.finish()
        return set(diff.only_remote()), set(diff.only_local()), summary


def _still_judged(correction: Correction, stored: EntryState | None, cut_ms: int) -> bool:
    """True when the key's row is still the one the diff judged: it holds the local CID the diff saw
    (None for an add: no CID of the pair) and its last event does not lie after the cut."""
    if changed_after(stored, cut_ms):
        return False
    if correction.local_cid is not None:
        return stored is not None and stored.cid == correction.local_cid
    return True


def _notice(run: Reconciliation, correction: Correction) -> dict[str, Any]:
    """The notice for the participant's core system: what changed in the local base and why."""
    notice: dict[str, Any] = {
        "reconciliationId": run.id, "participant": correction.participant, "keyType": correction.key_type,
        "action": correction.kind.value, "key": correction.key, "localCid": correction.local_cid,
        "dictCid": correction.dict_cid, "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    if correction.entry is not None:
        notice["entry"] = correction.entry.to_json()
    if correction.kind is CorrectionKind.REMOVE and correction.key_type == "EVP":
        notice["note"] = "local-only EVP removed; EVP keys are issued by the DICT and cannot be recreated"
    return notice

