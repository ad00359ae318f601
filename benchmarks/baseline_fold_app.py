"""Baseline for ``bench_pipeline.py``: a plain per-event Faust agent doing the product's fold.

Same fold (``vsync_stream.domain.fold.fold``), same record format (``decode_change``), same store
(Faust's RocksDB store driven by rocksdict), same consumer tuning as the product's worker, but one
event at a time: ``async for event in stream.events()``, ``table.get`` and ``table[key] = ...``
(one RocksDB put and one changelog record per event). No ledgers, no dead letters: strictly less
work than the product does per event.

Configured by the environment (set by the benchmark)::

    BENCH_BASELINE_APP_ID, BENCH_BASELINE_TOPIC, BENCH_BASELINE_DATA_DIR, BENCH_BASELINE_WEB_PORT,
    BENCH_BASELINE_PARTITIONS, VSYNC_KAFKA_BOOTSTRAP

    python -m faust -A benchmarks.baseline_fold_app worker -l warn

``GET /count`` answers ``{"folded": n, "handled": n}`` (events folded / handled by this process).
"""

from __future__ import annotations

import os
from typing import Any

import faust

from vsync_stream.app import CLIENT_TUNING
from vsync_stream.domain.events import decode_change
from vsync_stream.domain.fold import EntryState, FoldStatus, fold

PARTITIONS = int(os.environ.get("BENCH_BASELINE_PARTITIONS", "8"))

app = faust.App(
    os.environ.get("BENCH_BASELINE_APP_ID", "bench-baseline"),
    broker=[f"kafka://{hp}" for hp in os.environ.get("VSYNC_KAFKA_BOOTSTRAP", "127.0.0.1:19092").split(",")],
    store="rocksdb://",
    datadir=os.environ.get("BENCH_BASELINE_DATA_DIR", "/tmp/bench-baseline"),
    autodiscover=False,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    table_standby_replicas=0,
    **CLIENT_TUNING,  # the product's consumer and producer tuning, so that only the agent differs
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    web_port=int(os.environ.get("BENCH_BASELINE_WEB_PORT", "16066")),
    web_in_thread=False,
    timezone=None,
)

source = app.topic(os.environ.get("BENCH_BASELINE_TOPIC", "bench-baseline-key-events"), key_type=bytes,
                   value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS,
                   internal=True)
entries = app.Table("entries", default=None, partitions=PARTITIONS, key_type=bytes, value_type=bytes,
                    options={"driver": "rocksdict"})

COUNTS = {"folded": 0, "handled": 0}


@app.agent(source, name="baseline_fold")
async def baseline_fold(stream: Any) -> None:
    async for event in stream.events():
        change = decode_change(event.value)
        key = change.key.encode("utf-8")
        raw = entries.get(key)
        outcome = fold(EntryState.decode(raw) if raw is not None else None, change)
        if outcome.state is not None and outcome.status is not FoldStatus.STALE:
            entries[key] = outcome.state.encode()
        if outcome.status is FoldStatus.APPLIED:
            COUNTS["folded"] += 1
        COUNTS["handled"] += 1


@app.page("/count")
async def count_view(web: Any, request: Any) -> Any:
    return web.json(COUNTS)
