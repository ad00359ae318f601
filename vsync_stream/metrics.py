"""Prometheus metrics of vsync-stream (conventional names; units in the name where there is one)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_RECEIVED = Counter("vsync_events_received_total", "Key events taken from Pulsar by the adapter")
EVENTS_FORWARDED = Counter("vsync_events_forwarded_total", "Key events accepted by Kafka from the adapter")
EVENTS_FOLDED = Counter("vsync_events_folded_total", "Key events applied to the entries table")
EVENTS_DUPLICATE = Counter("vsync_events_duplicate_total", "Key events already applied (same event id)")
EVENTS_STALE = Counter("vsync_events_stale_total", "Key events older than the table's state for the key")
DEAD_LETTERS = Counter("vsync_dead_letters_total", "Events stored in the dead-letter topic", ["stage", "reason"])
VERIFICATIONS = Counter("vsync_verifications_total", "Sync verifications by result",
                        ["participant", "key_type", "result"])
VERIFICATION_SECONDS = Histogram("vsync_verification_duration_seconds", "Duration of one verification round")
LAST_OK = Gauge("vsync_last_ok_timestamp_seconds", "Unix time of the last OK", ["participant", "key_type"])
ENTRIES = Gauge("vsync_entries", "Active entries held by this worker", ["participant", "key_type"])
LEDGER_DRIFT = Counter("vsync_ledger_drift_total", "Partitions whose VSync ledger differed from the table")
RECONCILIATIONS = Counter("vsync_reconciliations_total", "Reconciliation runs by path and result", ["path", "result"])
RECONCILIATION_SECONDS = Histogram("vsync_reconciliation_duration_seconds", "Duration of one reconciliation run",
                                   buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600))
CORRECTIONS = Counter("vsync_corrections_total", "Corrections made by reconciliation", ["kind"])
