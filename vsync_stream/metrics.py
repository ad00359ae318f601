"""Prometheus metrics of vsync-stream (conventional names; units in the name where there is one).

Counters and histograms are updated where things happen (adapter, fold, verifier, reconciler,
Bridge client). Gauges that describe state (entries per pair, consumer lag, recovery, last results)
are refreshed when ``GET /metrics`` is scraped, by :class:`MetricsRefresher`, so they are never
staler than the scrape and cost nothing when nobody scrapes.

Labels are bounded: participants (configured ISPBs), key types (5), partitions (``VSYNC_PARTITIONS``),
Bridge methods (6), gRPC codes (17), dead-letter stages and reason codes (a fixed catalogue). No
label ever carries a Pix key, a CID, a tax id or a name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from vsync_stream.domain.vsync import VSyncLedger

log = logging.getLogger(__name__)

# -- the pipeline ------------------------------------------------------------------------------
EVENTS_RECEIVED = Counter("vsync_events_received_total", "Key events taken from Pulsar by the adapter")
EVENTS_FORWARDED = Counter("vsync_events_forwarded_total", "Key events accepted by Kafka from the adapter")
EVENTS_FOLDED = Counter("vsync_events_folded_total", "Key events applied to the entries table")
EVENTS_DUPLICATE = Counter("vsync_events_duplicate_total", "Key events already applied (same event id)")
EVENTS_STALE = Counter("vsync_events_stale_total", "Key events older than the table's state for the key")
DEAD_LETTERS = Counter("vsync_dead_letters_total", "Events stored in the dead-letter topic", ["stage", "reason"])
CONSUMER_LAG = Gauge("vsync_consumer_lag_messages",
                     "Records of the key-events topic not yet folded, per partition active on this worker",
                     ["partition"])

# -- the table ---------------------------------------------------------------------------------
ENTRIES = Gauge("vsync_entries", "Active entries held by this worker", ["participant", "key_type"])
VSYNC_KNOWN = Gauge("vsync_vsync_known",
                    "1 when every table partition has a recovered owner, so the complete VSync a verification "
                    "sends can be combined now (from this worker alone or from every worker of the app id); "
                    "0 otherwise", ["participant", "key_type"])
TABLE_RECOVERING = Gauge("vsync_table_recovering",
                         "1 while the entries table is recovering or rebalancing (not ready), else 0")
TABLE_PARTITIONS = Gauge("vsync_table_active_partitions", "Partitions of the entries table active on this worker")
LEDGER_DRIFT = Counter("vsync_ledger_drift_total", "Partitions whose VSync ledger differed from the table")

# -- verification ------------------------------------------------------------------------------
VERIFICATIONS = Counter("vsync_verifications_total", "Sync verifications by result",
                        ["participant", "key_type", "result"])
VERIFICATION_SECONDS = Histogram("vsync_verification_duration_seconds", "Duration of one verification round",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
LAST_OK = Gauge("vsync_last_ok_timestamp_seconds", "Unix time of the last OK", ["participant", "key_type"])
LAST_RESULT = Gauge("vsync_last_verification_result",
                    "1 for the result (OK, NOK or ERROR) of the pair's last verification, 0 for the others",
                    ["participant", "key_type", "result"])
LAST_VERIFICATION = Gauge("vsync_last_verification_timestamp_seconds",
                          "Unix time of the pair's last verification, whatever its result", ["participant", "key_type"])
RESULTS = ("OK", "NOK", "ERROR")

# -- reconciliation ----------------------------------------------------------------------------
RECONCILIATIONS = Counter("vsync_reconciliations_total", "Reconciliation runs by path and result", ["path", "result"])
RECONCILIATION_SECONDS = Histogram("vsync_reconciliation_duration_seconds", "Duration of one reconciliation run",
                                   buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600))
RECONCILIATIONS_RUNNING = Gauge("vsync_reconciliations_running", "Reconciliation runs in progress on this worker")
RECONCILIATION_PROGRESS = Gauge("vsync_reconciliation_progress_ratio",
                                "Progress of the current phase of a running reconciliation (0 to 1)",
                                ["participant", "key_type"])
CORRECTIONS = Counter("vsync_corrections_total", "Corrections made by reconciliation", ["kind"])
CORRECTIONS_SUPERSEDED = Counter(
    "vsync_corrections_superseded_total",
    "Corrections the fold did not apply because the key's row changed after the correction was judged "
    "(also counted in vsync_events_stale_total)")
CORRECTIONS_DEFERRED = Counter(
    "vsync_corrections_deferred_total",
    "Differences a reconciliation left to the next verification because the DICT's CID event log or the "
    "key's row shows a change after the cut", ["side"])

# -- the Bridge (gRPC gateway to the DICT) -----------------------------------------------------
BRIDGE_SECONDS = Histogram("vsync_bridge_request_duration_seconds",
                           "Duration of one Bridge call attempt (pacing wait excluded)", ["method"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BRIDGE_ERRORS = Counter("vsync_bridge_errors_total", "Bridge call attempts that failed, by gRPC status code",
                        ["method", "code"])
BRIDGE_TOKENS = Gauge("vsync_bridge_rate_limit_tokens",
                      "Tokens left in the client-side bucket paced like the DICT's for the method", ["method"])
BRIDGE_PACING_WAIT = Counter("vsync_bridge_pacing_wait_seconds_total",
                             "Time Bridge calls waited for a token of the client-side bucket", ["method"])

AUDIT_REFRESH_S = 15.0  # at most one audit-store read per this many seconds, however often scraped
AUDIT_TIMEOUT_S = 2.0


class _Table(Protocol):
    """What the refresher reads from the entries table (``EntriesTable`` has it)."""

    recovering: bool
    @property
    def partition_states(self) -> Mapping[int, Any]: ...  # partition -> PartitionState (``ledger``, ``offset``)


class _Consumer(Protocol):
    """What the refresher reads from Faust's consumer."""

    def highwater(self, tp: Any) -> int: ...


class _Run(Protocol):
    participant: str
    key_type: str
    done: int
    total: int


class _LastVerification(Protocol):
    @property
    def result(self) -> str: ...
    @property
    def finished_at(self) -> datetime: ...


class MetricsRefresher:
    """Sets the state gauges from the worker's state when ``/metrics`` is scraped.

    Args:
        participants: the configured ISPBs (only they get label values: bounded cardinality).
        key_types: the key types verified.
        partitions: partitions of the key-events topic (``VSYNC_PARTITIONS``).
    """

    def __init__(self, participants: Sequence[str], key_types: Sequence[str], partitions: int) -> None:
        self.participants = list(participants)
        self.key_types = list(key_types)
        self.partitions = partitions
        self._audit_read_at = float("-inf")

    def refresh_table(self, table: _Table, complete: bool | None = None) -> None:
        """Entries per pair held here, whether the complete VSync is available, recovery, active partitions.

        Args:
            table: this worker's entries table.
            complete: whether a cluster-wide cut could be combined just now (``Cluster.snapshot``);
                None: judge from this worker alone (every partition local and recovered).
        """
        recovering = bool(table.recovering)
        TABLE_RECOVERING.set(1 if recovering else 0)
        states = dict(table.partition_states)
        TABLE_PARTITIONS.set(len(states))
        if complete is None:
            complete = not recovering and set(range(self.partitions)) <= set(states)
        combined = VSyncLedger()
        for state in states.values():
            combined.merge(state.ledger)
        for participant in self.participants:
            for key_type in self.key_types:
                VSYNC_KNOWN.labels(participant=participant, key_type=key_type).set(1 if complete else 0)
                if not recovering:  # ledgers being rebuilt: keep the last counts rather than partial ones
                    ENTRIES.labels(participant=participant, key_type=key_type).set(
                        combined.count(participant, key_type))

    def refresh_lag(self, consumer: _Consumer | None, table: _Table, topic: str,
                    committed: Mapping[Any, int | None] | None = None) -> None:
        """Per-partition lag of the key-events topic: end offset − next offset to fold.

        The end offset is the consumer's highwater (learnt from fetch responses, no extra request);
        the position is the table's last folded offset + 1, or the group's committed offset when this
        worker has folded nothing in the partition yet.
        """
        CONSUMER_LAG.clear()  # partitions move between workers: report only the ones held now
        if consumer is None or table.recovering:
            return
        from faust.types import TP

        for partition, state in sorted(table.partition_states.items()):
            tp = TP(topic, partition)
            try:
                end = consumer.highwater(tp)
            except Exception:  # not assigned (any more) or not fetched yet: nothing to say
                continue
            if end is None:
                continue
            position = (state.offset + 1) if state.offset is not None else ((committed or {}).get(tp) or 0)
            CONSUMER_LAG.labels(partition=str(partition)).set(max(0, end - position))

    @staticmethod
    def refresh_reconciliations(running: Sequence[_Run]) -> None:
        """Reconciliation runs in progress, and how far the current phase of each has got."""
        RECONCILIATIONS_RUNNING.set(len(running))
        RECONCILIATION_PROGRESS.clear()
        for run in running:
            ratio = min(1.0, run.done / run.total) if run.total else 0.0
            RECONCILIATION_PROGRESS.labels(participant=run.participant, key_type=run.key_type).set(ratio)

    async def refresh_audit(self, latest_per_pair: Callable[[], Awaitable[Mapping[tuple[str, str],
                                                                                   _LastVerification]]],
                            last_ok_per_pair: Callable[[], Awaitable[Mapping[tuple[str, str], datetime]]]) -> None:
        """Last result, last verification time and last OK per pair, from the audit store.

        Every worker reports the same values (the audit store is shared), so they survive restarts
        and leader changes. Read at most every ``AUDIT_REFRESH_S``; a slow or failing store leaves
        the previous values (logged at debug: the scrape must not fail for it).
        """
        now = time.monotonic()
        if now - self._audit_read_at < AUDIT_REFRESH_S:
            return
        self._audit_read_at = now
        try:
            latest = await asyncio.wait_for(latest_per_pair(), AUDIT_TIMEOUT_S)
            last_ok = await asyncio.wait_for(last_ok_per_pair(), AUDIT_TIMEOUT_S)
        except Exception as exc:  # the store is starting, down or slow: keep the last values
            log.debug("metrics: audit store not read (%s)", type(exc).__name__)
            return
        for participant in self.participants:
            for key_type in self.key_types:
                record = latest.get((participant, key_type))
                if record is not None:
                    record_last_result(participant, key_type, record.result, record.finished_at.timestamp())
                ok_at = last_ok.get((participant, key_type))
                if ok_at is not None:
                    LAST_OK.labels(participant=participant, key_type=key_type).set(ok_at.timestamp())


def record_last_result(participant: str, key_type: str, result: str, at_s: float) -> None:
    """Set the last-result gauges of a pair (one-hot over OK/NOK/ERROR) and its last verification time.

    Args:
        participant: ISPB.
        key_type: key type.
        result: ``OK``, ``NOK`` or ``ERROR``.
        at_s: Unix time of the verification, seconds.
    """
    for candidate in RESULTS:
        LAST_RESULT.labels(participant=participant, key_type=key_type, result=candidate).set(
            1 if candidate == result else 0)
    LAST_VERIFICATION.labels(participant=participant, key_type=key_type).set(at_s)
