"""A whole pipeline on the local stack, driven like a participant would: used by demo and drill.

The DICT simulator runs in this process (a real gRPC server holding the truth), the worker runs as
a child process (``vsync-stream worker``) with topic, subscription and group names unique to the
run, and events are published to Pulsar as the participant's connector would.

Going live is done as at a participant (README, "Going live"): the Pulsar subscription exists first,
the DICT's population is exported from the participant's base and loaded with ``vsync-stream
bootstrap``, then the worker starts and the events exercise only the changes.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pulsar
from tqdm import tqdm

from vsync_stream.bridges.audit_store import AuditStore
from vsync_stream.bridges.pulsar_security import pulsar_client_options
from vsync_stream.bridges.pulsar_source import ensure_subscription
from vsync_stream.cli_support import request_verification
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import KeyEvent
from vsync_stream.domain.export import export_record, write_jsonl
from vsync_stream.settings import Settings
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries, random_update_changes
from vsync_stream.simulator.publisher import EventPublisher
from vsync_stream.simulator.rest_chain import RestBridgeChain
from vsync_stream.simulator.server import DictSimulator, TokenBucket
from vsync_stream.worker_process import WorkerFailed, WorkerProcess, free_port, run_env

PUBLISH_STEP = 5000


class LocalScenario:
    """Simulator + worker + publisher for one run; ``async with`` starts and stops them.

    Args:
        name: prefix of the run id (``demo``, ``drill``…).
        participants: ISPBs of the population and of the worker's verification.
        rate_limits: the simulator's buckets per RPC (the DICT's own when None).
        env_extra: extra environment for the worker.
        via_rest: the worker's Bridge is a real `vsync-stream bridge` in front of the simulator's DICT
            REST API (mutual TLS, signed XML) instead of the simulator's own gRPC face.
    """

    def __init__(self, name: str, participants: Sequence[str], rate_limits: Mapping[str, TokenBucket] | None = None,
                 env_extra: dict[str, str] | None = None, via_rest: bool = False) -> None:
        self.settings = Settings(participants=list(participants))
        self.run_id = f"{name}-{time.strftime('%Y%m%d%H%M%S')}{secrets.token_hex(2)}"
        self.token = secrets.token_urlsafe(24)
        self.model = DictModel()
        self.simulator = DictSimulator(self.model, rate_limits=rate_limits)
        pki_dir = Path(f".local/dict-pki/{self.run_id}")
        self.rest_chain = (RestBridgeChain(self.model, self.settings.participants[0], pki_dir, rate_limits=rate_limits)
                           if via_rest else None)
        self._env_extra = env_extra or {}
        self.worker: WorkerProcess | None = None
        self.published = 0
        self.bootstrap_s = 0.0

    @property
    def base_url(self) -> str:
        """The worker's web view."""
        assert self.worker is not None
        return self.worker.base_url

    async def __aenter__(self) -> LocalScenario:
        async with AuditStore(self.settings.postgres_dsn.get_secret_value(), max_size=1) as audit:
            await audit.migrate()
        port = await self.simulator.start("127.0.0.1", 0)
        target = await self.rest_chain.start() if self.rest_chain is not None else f"127.0.0.1:{port}"
        env = run_env(self.run_id, bridge_target=target, participants=self.settings.participants,
                      token=self.token, data_root=Path(".local/runs").resolve(), web_port=free_port(),
                      extra=self._env_extra)
        ensure_subscription(self.settings.pulsar_url, env["VSYNC_PULSAR_TOPIC"], env["VSYNC_PULSAR_SUBSCRIPTION"],
                            client_options=pulsar_client_options(self.settings))
        self.worker = WorkerProcess(env, Path(f".local/logs/{self.run_id}-worker.log").resolve())
        self.bootstrap_dir = Path(f".local/runs/{self.run_id}-bootstrap").resolve()
        if self.rest_chain is not None:
            print(f"run {self.run_id}: the worker's Bridge {target} calls the DICT REST API "
                  f"{self.rest_chain.simulator.url} (mutual TLS, signed XML)")
        print(f"run {self.run_id}: DICT simulator on 127.0.0.1:{port}; worker web view {self.worker.base_url}, "
              f"log {self.worker.log_path}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.rest_chain is not None:
            await self.rest_chain.stop()
        await self.simulator.stop()
        (self.bootstrap_dir / "export.jsonl").unlink(missing_ok=True)

    async def go_live(self, entries: int, updates: int, deletes: int, seed: int, ready_timeout_s: float = 900.0
                      ) -> tuple[list[Entry], list[KeyEvent]]:
        """Create a population in the DICT, bootstrap the pipeline from its export, start the worker.

        Returns:
            The population, and the update and delete events made afterwards (not yet published).

        Raises:
            click.ClickException: the bootstrap failed or rejected rows, or the worker did not get ready.
        """
        assert self.worker is not None
        rng = random.Random(seed)
        population = list(tqdm(generate_entries(entries, self.settings.participants, seed=seed), total=entries,
                               desc="population", unit="entry", file=sys.stdout, mininterval=1.0))
        for entry in population:  # the history before going live: in the DICT and in the participant's base
            self.model.create(entry)
        started = time.monotonic()
        self.bootstrap_dir.mkdir(parents=True, exist_ok=True)
        export = self.bootstrap_dir / "export.jsonl"
        with export.open("wb") as out:
            write_jsonl((export_record(e, version=self.model.version(e.key)) for e in self.model.entries()), out)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vsync_stream", "bootstrap", "--rejects", str(self.bootstrap_dir / "rejects.jsonl"),
            "--summary", str(self.bootstrap_dir / "summary.json"), str(export), env=self.worker.env)
        if await proc.wait() != 0:
            raise click.ClickException(f"vsync-stream bootstrap exited with {proc.returncode}; see "
                                       f"{self.bootstrap_dir}")
        shutil.rmtree(self.bootstrap_dir / "rejects.jsonl.spool", ignore_errors=True)
        self.worker.start()
        try:
            await self.worker.wait_ready(timeout_s=ready_timeout_s)
        except WorkerFailed as exc:
            raise click.ClickException(str(exc)) from None
        self.bootstrap_s = time.monotonic() - started
        print(f"went live with {entries} entries in {self.bootstrap_s:.1f} s (export, bootstrap, worker restore)")
        events = [self.model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(population, updates)]
        events += [self.model.delete(e.key) for e in rng.sample(population, deletes)]
        return population, events

    async def publish(self, events: list[KeyEvent]) -> None:
        """Publish events to Pulsar (keyed by Pix key, Key_Shared-safe batching), with progress."""
        assert self.worker is not None
        publisher = EventPublisher(self.settings.pulsar_url, self.worker.env["VSYNC_PULSAR_TOPIC"],
                                   batching_type=pulsar.BatchingType.KeyBased,
                                   client_options=pulsar_client_options(self.settings))
        with tqdm(total=len(events), desc="publishing", unit="ev", file=sys.stdout, mininterval=1.0) as bar:
            await publisher.start()
            try:
                for i in range(0, len(events), PUBLISH_STEP):
                    chunk = events[i:i + PUBLISH_STEP]
                    await publisher.publish_many(chunk)
                    bar.update(len(chunk))
                await publisher.flush()
            finally:
                await publisher.stop()
        self.published += len(events)

    async def wait_folded(self, timeout_s: float) -> dict[str, int]:
        """Wait until the worker handled everything published, with a progress bar."""
        assert self.worker is not None
        try:
            return await self.worker.wait_handled(self.published, timeout_s, progress=True)
        except WorkerFailed as exc:
            raise click.ClickException(str(exc)) from None

    async def verify(self) -> list[dict[str, Any]]:
        """Verify every pair now through the worker."""
        return await request_verification(self.base_url, self.token)
