"""Integration fixtures: the real local stack (Kafka, Pulsar, PostgreSQL) and a pipeline factory.

A missing broker fails the test with what to do; nothing is skipped. ``make test`` starts the stack
and exports its addresses (``.local/stack.env``).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pulsar
import pytest
import pytest_asyncio

from vsync_stream.bridges.pulsar_source import ensure_subscription
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.publisher import EventPublisher
from vsync_stream.simulator.server import DictSimulator, TokenBucket
from vsync_stream.worker_process import WorkerProcess, free_port, run_env

REPO = Path(__file__).resolve().parents[2]


def _need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests with `make test` (it starts the local stack), or "
                    f"`deploy/local/stack up && set -a && . .local/stack.env && set +a` first")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _need("VSYNC_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def pulsar_url() -> str:
    return _need("VSYNC_PULSAR_URL")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    return _need("VSYNC_POSTGRES_DSN")


@dataclass
class Pipeline:
    """A running pipeline: simulator (in this process), a worker (child process), a publisher."""

    run_id: str
    model: DictModel
    simulator: DictSimulator
    worker: WorkerProcess
    publisher: EventPublisher
    token: str
    env: dict[str, str]
    published: int = 0
    extra_workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def pulsar_topic(self) -> str:
        return self.env["VSYNC_PULSAR_TOPIC"]

    @property
    def dead_letter_topic(self) -> str:
        return self.env["VSYNC_DEAD_LETTER_TOPIC"]

    async def publish(self, events: list) -> None:  # type: ignore[type-arg]
        await self.publisher.publish_many(events)
        await self.publisher.flush()
        self.published += len(events)

    def publish_raw(self, payloads: list[tuple[str, bytes]]) -> None:
        """Publish arbitrary bytes (bad input) with the given message keys."""
        client = pulsar.Client(self.env["VSYNC_PULSAR_URL"], logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        try:
            producer = client.create_producer(self.pulsar_topic, batching_enabled=False)
            for key, payload in payloads:
                producer.send(payload, partition_key=key)
            producer.close()
        finally:
            client.close()
        self.published += len(payloads)


PipelineFactory = Callable[..., Awaitable[Pipeline]]


@pytest_asyncio.fixture
async def pipeline_factory(kafka_bootstrap: str, pulsar_url: str, postgres_dsn: str,
                           tmp_path: Path) -> AsyncIterator[PipelineFactory]:
    """Build pipelines with unique topic, subscription and group names; all are torn down."""
    made: list[Pipeline] = []

    async def make(participants: list[str] | None = None, partitions: int = 4, start: bool = True,
                   env_extra: dict[str, str] | None = None, dict_limits: bool = False,
                   model: DictModel | None = None) -> Pipeline:
        participants = participants or ["12345678", "00000208"]
        run_id = f"test-{uuid.uuid4().hex[:10]}"
        model = model if model is not None else DictModel()  # a test may bring its own (e.g. its clock)
        # The DICT's own limits would make a test wait minutes; relax them (their enforcement is
        # tested in test_bridge_grpc.py) unless the test is about them (``dict_limits``).
        limits = None if dict_limits else {"VerifySync": TokenBucket.per_minute(6000, 1000)}
        simulator = DictSimulator(model, rate_limits=limits)
        if not dict_limits:
            env_extra = {"VSYNC_BRIDGE_RATE_LIMITS": "VerifySync=6000/min:1000", **(env_extra or {})}
        port = await simulator.start("127.0.0.1", 0)
        token = secrets.token_urlsafe(16)
        env = run_env(run_id, bridge_target=f"127.0.0.1:{port}", participants=participants, token=token,
                      data_root=tmp_path / "data", web_port=free_port(), partitions=partitions, extra=env_extra)
        ensure_subscription(pulsar_url, env["VSYNC_PULSAR_TOPIC"], env["VSYNC_PULSAR_SUBSCRIPTION"])
        worker = WorkerProcess(env, tmp_path / f"{run_id}-worker.log")
        publisher = EventPublisher(pulsar_url, env["VSYNC_PULSAR_TOPIC"], batching_type=pulsar.BatchingType.KeyBased)
        await publisher.start()
        pipeline = Pipeline(run_id, model, simulator, worker, publisher, token, env)
        made.append(pipeline)
        if start:
            worker.start()
        return pipeline

    yield make
    for pipeline in made:
        for worker in [pipeline.worker, *pipeline.extra_workers]:
            worker.stop()
        await pipeline.publisher.stop()
        await pipeline.simulator.stop()
