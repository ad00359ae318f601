"""PostgreSQL audit store (asyncpg): the durable record of every verification and reconciliation.

The schema is created by :meth:`AuditStore.migrate` (``vsync-stream migrate``; the worker also runs
it at start). Migrations are numbered, applied once each, in a transaction, under an advisory lock
so that several workers starting together do not race.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from vsync_stream.errors import AuditStoreError

log = logging.getLogger(__name__)

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE verifications (
        id              BIGSERIAL PRIMARY KEY,
        app_id          TEXT NOT NULL,
        round_id        UUID NOT NULL,
        verification_id TEXT,
        participant     CHAR(8) NOT NULL,
        key_type        TEXT NOT NULL,
        vsync           CHAR(64) NOT NULL,
        entries         BIGINT NOT NULL,
        result          TEXT NOT NULL,
        error           TEXT,
        trigger         TEXT NOT NULL,
        offsets         JSONB NOT NULL,
        started_at      TIMESTAMPTZ NOT NULL,
        finished_at     TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX verifications_pair_time ON verifications (app_id, participant, key_type, finished_at DESC);
    """,
    """
    CREATE TABLE reconciliations (
        id           UUID PRIMARY KEY,
        app_id       TEXT NOT NULL,
        participant  CHAR(8) NOT NULL,
        key_type     TEXT NOT NULL,
        trigger      TEXT NOT NULL,
        path         TEXT NOT NULL,
        attempts     INT NOT NULL,
        added        BIGINT NOT NULL,
        removed      BIGINT NOT NULL,
        changed      BIGINT NOT NULL,
        result       TEXT NOT NULL,
        error        TEXT,
        phases       JSONB NOT NULL,
        started_at   TIMESTAMPTZ NOT NULL,
        finished_at  TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX reconciliations_pair_time ON reconciliations (app_id, participant, key_type, finished_at DESC);
    """,
    # The client's DICT token buckets, shared by the workers of an app id (bridges/pacing.py): the
    # level at updated_at (the database's clock), refilled on read.
    """
    CREATE TABLE dict_budgets (
        app_id      TEXT NOT NULL,
        operation   TEXT NOT NULL,
        tokens      DOUBLE PRECISION NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (app_id, operation)
    );
    """,
]
_LOCK_ID = 0x7653594E43  # "vSYNC": advisory lock held while migrating


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    """One (participant, key type) verification as stored.

    ``result`` is ``OK``, ``NOK`` or ``ERROR`` (the Bridge failed; ``error`` says why).
    ``offsets`` maps key-events partition → last offset the VSync reflects (invariant I4).
    """

    round_id: str
    verification_id: str | None
    participant: str
    key_type: str
    vsync: str
    entries: int
    result: str
    error: str | None
    trigger: str
    offsets: dict[int, int | None]
    started_at: datetime
    finished_at: datetime

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict in the web view's camelCase."""
        return {
            "roundId": self.round_id, "verificationId": self.verification_id, "participant": self.participant,
            "keyType": self.key_type, "vsync": self.vsync, "entries": self.entries, "result": self.result,
            "error": self.error, "trigger": self.trigger, "offsets": {str(k): v for k, v in self.offsets.items()},
            "startedAt": self.started_at.isoformat(), "finishedAt": self.finished_at.isoformat(),
        }


class AuditStore:
    """Pool-backed access to the audit tables. Use ``async with AuditStore(dsn, app_id) as store``.

    Rows are scoped by ``app_id`` (the worker group), so several deployments can share a database.
    """

    def __init__(self, dsn: str, app_id: str = "vsync-stream", *, min_size: int = 1, max_size: int = 4) -> None:
        self._dsn = dsn
        self.app_id = app_id
        self._min, self._max = min_size, max_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Open the connection pool.

        Raises:
            AuditStoreError: PostgreSQL cannot be reached (the message names the host, not the password).
        """
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=self._min, max_size=self._max,
                                                   command_timeout=30)
        except (OSError, asyncpg.PostgresError) as exc:
            raise AuditStoreError(f"cannot connect to PostgreSQL ({type(exc).__name__}: {exc}); "
                                  "check VSYNC_POSTGRES_DSN and that the server runs") from exc

    async def stop(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> AuditStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise AuditStoreError("audit store is not started")
        return self._pool

    async def migrate(self) -> int:
        """Apply pending migrations.

        Returns:
            The schema version after migrating.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                               "(version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            for version, sql in enumerate(_MIGRATIONS, start=1):
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    log.info("audit store migrated to schema version %d", version)
            return len(_MIGRATIONS)

    async def record_verifications(self, records: list[VerificationRecord]) -> None:
        """Store one verification round."""
        rows = [(self.app_id, r.round_id, r.verification_id, r.participant, r.key_type, r.vsync, r.entries, r.result,
                 r.error,
                 r.trigger, json.dumps({str(k): v for k, v in r.offsets.items()}), r.started_at, r.finished_at)
                for r in records]
        await self.pool.executemany(
            "INSERT INTO verifications (app_id, round_id, verification_id, participant, key_type, vsync, entries,"
            " result, error, trigger, offsets, started_at, finished_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13)", rows)

    async def recent_verifications(self, limit: int = 100) -> list[VerificationRecord]:
        """The newest verifications first (at most ``limit``)."""
        rows = await self.pool.fetch("SELECT * FROM verifications WHERE app_id = $1 ORDER BY id DESC LIMIT $2",
                                     self.app_id, limit)
        return [_record(row) for row in rows]

    async def last_ok(self, participant: str, key_type: str) -> datetime | None:
        """When (participant, key type) was last verified OK, or None."""
        value: datetime | None = await self.pool.fetchval(
            "SELECT max(finished_at) FROM verifications"
            " WHERE app_id = $1 AND participant = $2 AND key_type = $3 AND result = 'OK'",
            self.app_id, participant, key_type)
        return value

    async def last_ok_per_pair(self) -> dict[tuple[str, str], datetime]:
        """When every (participant, key type) verified OK at least once was last verified OK."""
        rows = await self.pool.fetch(
            "SELECT participant, key_type, max(finished_at) AS at FROM verifications"
            " WHERE app_id = $1 AND result = 'OK' GROUP BY participant, key_type", self.app_id)
        return {(row["participant"], row["key_type"]): row["at"] for row in rows}

    async def record_reconciliation(self, run: Any) -> None:
        """Store a finished reconciliation run (a ``vsync_stream.reconciliation.Reconciliation``)."""
        await self.pool.execute(
            "INSERT INTO reconciliations (id, app_id, participant, key_type, trigger, path, attempts, added, removed,"
            " changed, result, error, phases, started_at, finished_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14, $15)"
            " ON CONFLICT (id) DO NOTHING",
            uuid.UUID(run.id), self.app_id, run.participant, run.key_type, run.trigger, run.path, run.attempts,
            run.added,
            run.removed, run.changed, run.result or "ERROR", run.error, json.dumps(run.history), run.started_at,
            run.finished_at)

    async def sync_budgets(self, shapes: dict[str, tuple[float, float, float]]) -> dict[str, float]:
        """Exchange DICT budget levels with the other workers of the app id (``Pacer.share``).

        Args:
            shapes: operation -> (bucket capacity, refill per second, tokens this worker took since
                its last exchange).

        Returns:
            operation -> the shared level now: the stored level refilled for the time elapsed (on
            the database's clock, so workers' clocks do not matter), minus the tokens handed over.
            A bucket never stored starts full (the DICT's buckets start full).
        """
        levels: dict[str, float] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            for op, (capacity, refill_per_s, taken) in sorted(shapes.items()):
                levels[op] = await conn.fetchval(
                    "INSERT INTO dict_budgets AS b (app_id, operation, tokens, updated_at)"
                    " VALUES ($1, $2, $3::float8 - $5::float8, now())"
                    " ON CONFLICT (app_id, operation) DO UPDATE SET tokens = LEAST($3::float8, b.tokens"
                    " + $4::float8 * EXTRACT(EPOCH FROM (now() - b.updated_at))::float8) - $5::float8,"
                    " updated_at = now() RETURNING tokens",
                    self.app_id, op, capacity, refill_per_s, taken)
        return levels

    async def recent_reconciliations(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest reconciliation runs first, as camelCase dicts."""
        rows = await self.pool.fetch(
            "SELECT * FROM reconciliations WHERE app_id = $1 ORDER BY finished_at DESC LIMIT $2", self.app_id, limit)
        return [{"id": str(r["id"]), "participant": r["participant"], "keyType": r["key_type"],
                 "trigger": r["trigger"], "path": r["path"], "attempts": r["attempts"], "added": r["added"],
                 "removed": r["removed"], "changed": r["changed"], "result": r["result"], "error": r["error"],
                 "startedAt": r["started_at"].isoformat(), "finishedAt": r["finished_at"].isoformat()}
                for r in rows]

    async def latest_per_pair(self) -> dict[tuple[str, str], VerificationRecord]:
        """The last verification of every (participant, key type)."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (participant, key_type) * FROM verifications WHERE app_id = $1"
            " ORDER BY participant, key_type, id DESC", self.app_id)
        return {(row["participant"], row["key_type"]): _record(row) for row in rows}


def _record(row: asyncpg.Record) -> VerificationRecord:
    offsets = json.loads(row["offsets"]) if isinstance(row["offsets"], str) else row["offsets"]
    return VerificationRecord(
        round_id=str(row["round_id"]), verification_id=row["verification_id"], participant=row["participant"],
        key_type=row["key_type"], vsync=row["vsync"], entries=row["entries"], result=row["result"],
        error=row["error"], trigger=row["trigger"], offsets={int(k): v for k, v in offsets.items()},
        started_at=row["started_at"], finished_at=row["finished_at"])
