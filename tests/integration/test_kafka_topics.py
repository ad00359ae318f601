"""Startup validation of the Kafka topics the worker owns, on the real Kafka."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import PipelineFactory
from vsync_stream.bridges.kafka_topics import ensure_topics, product_topics
from vsync_stream.errors import ConfigurationError

pytestmark = pytest.mark.integration


def names() -> tuple[str, str, str]:
    run = uuid.uuid4().hex[:10]
    return f"t-{run}-key-events", f"t-{run}-entries-changelog", f"t-{run}-dead-letters"


async def create(bootstrap: str, topics: list[NewTopic]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(topics)
    finally:
        await admin.close()


async def test_missing_topics_are_created_with_their_shape_and_a_second_call_is_a_no_op(kafka_bootstrap: str) -> None:
    key_events, changelog, dead = names()
    specs = product_topics(key_events, changelog, dead, 6)
    await ensure_topics(kafka_bootstrap, specs)
    await ensure_topics(kafka_bootstrap, specs)  # idempotent: checks pass on what it created
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics([key_events, changelog, dead])
        described = {d["topic"]: len(d["partitions"]) for d in topics}
    finally:
        await admin.close()
    assert described == {key_events: 6, changelog: 6, dead: 1}


async def test_partition_count_mismatch_stops_with_what_to_fix(kafka_bootstrap: str) -> None:
    key_events, changelog, dead = names()
    await create(kafka_bootstrap, [NewTopic(key_events, 3, 1)])
    with pytest.raises(ConfigurationError) as info:
        await ensure_topics(kafka_bootstrap, product_topics(key_events, changelog, dead, 4))
    assert f"topic '{key_events}' has 3 partitions but VSYNC_PARTITIONS=4" in str(info.value)


async def test_changelog_that_is_not_compacted_stops_with_what_to_fix(kafka_bootstrap: str) -> None:
    key_events, changelog, dead = names()
    await create(kafka_bootstrap, [NewTopic(changelog, 4, 1, topic_configs={"cleanup.policy": "delete"})])
    with pytest.raises(ConfigurationError) as info:
        await ensure_topics(kafka_bootstrap, product_topics(key_events, changelog, dead, 4))
    assert "cleanup.policy=delete but needs cleanup.policy=compact" in str(info.value)


async def test_worker_refuses_to_start_on_a_mismatched_topic(pipeline_factory: PipelineFactory,
                                                             kafka_bootstrap: str) -> None:
    pipeline = await pipeline_factory(partitions=4, start=False)
    await create(kafka_bootstrap, [NewTopic(pipeline.env["VSYNC_KEY_EVENTS_TOPIC"], 2, 1)])
    pipeline.worker.start()
    assert pipeline.worker.proc is not None
    code = pipeline.worker.proc.wait(timeout=120)
    assert code != 0
    log = pipeline.worker.log_path.read_text()
    assert "has 2 partitions but VSYNC_PARTITIONS=4" in log
