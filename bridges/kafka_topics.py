"""Kafka topics the product owns: created before the worker subscribes, and checked when they exist.

Faust silently accepts an existing topic with the wrong shape, and a consumer that subscribes before
a new topic is in the cluster metadata ignores it until the next metadata refresh (minutes). So the
worker creates and checks its topics here, with the admin client, before Faust starts consuming:

* the key-events topic and the entries changelog must have the same partition count (the table is
  co-partitioned with its source: Faust writes partition *p* of the changelog from partition *p*);
* the changelog must be compacted (``cleanup.policy=compact``), or restore replays deleted history
  forever and eventually loses rows to retention.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from vsync_stream.errors import ConfigurationError

log = logging.getLogger(__name__)

METADATA_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the product owns: name, partitions, and the configs it must have."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()  # config keys whose value an existing topic must match


def product_topics(key_events: str, changelog: str, dead_letters: str, partitions: int,
                   core_notices: str | None = None) -> list[TopicSpec]:
    """The topics a worker needs, with their required shape."""
    specs = [
        TopicSpec(key_events, partitions),
        TopicSpec(changelog, partitions, {"cleanup.policy": "compact"}, required=("cleanup.policy",)),
        TopicSpec(dead_letters, 1, {"retention.ms": "-1"}),
    ]
    if core_notices is not None:
        specs.append(TopicSpec(core_notices, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}))
    return specs


async def ensure_topics(bootstrap: str, specs: list[TopicSpec], replication_factor: int = 1,
                        client_kwargs: Mapping[str, Any] | None = None) -> None:
    """Create missing topics, check existing ones, and wait until all are in the cluster metadata.

    Args:
        bootstrap: Kafka bootstrap servers, ``host:port[,host:port]``.
        specs: the topics and their required shape.
        replication_factor: replication factor of the topics created.
        client_kwargs: extra arguments of the admin client, e.g. the security ones
            (:meth:`~vsync_stream.bridges.kafka_security.KafkaSecurity.client_kwargs`).

    Raises:
        ConfigurationError: an existing topic has the wrong partition count or configuration; the
            message says what to fix.
        ConfigurationError: Kafka cannot be reached (also).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="vsync-stream-admin", **(client_kwargs or {}))
    try:
        await admin.start()
    except KafkaError as exc:
        raise ConfigurationError(f"cannot reach Kafka at {bootstrap} ({exc}); check VSYNC_KAFKA_BOOTSTRAP and that "
                                 "the brokers run") from None
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                await admin.create_topics([NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.configs)
                                           for s in missing])
            except KafkaError as exc:  # a worker starting at the same time may have created it
                log.info("creating topics: %s (checking what exists)", exc)
            log.info("created topics %s", [s.name for s in missing])
        await _check_shape(admin, specs)
    finally:
        await admin.close()


async def _check_shape(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    deadline = asyncio.get_running_loop().time() + METADATA_WAIT_S
    while True:
        described = {d["topic"]: d for d in await admin.describe_topics([s.name for s in specs])}
        pending = [s.name for s in specs if described.get(s.name, {}).get("error_code", 3) != 0
                   or not described[s.name]["partitions"]]
        if not pending:
            break
        if asyncio.get_running_loop().time() > deadline:
            raise ConfigurationError(f"topics {pending} did not appear in the Kafka metadata within "
                                     f"{METADATA_WAIT_S:.0f} s; check the broker log")
        await asyncio.sleep(0.2)
    problems = []
    for spec in specs:
        have = len(described[spec.name]["partitions"])
        if have != spec.partitions:
            problems.append(f"topic {spec.name!r} has {have} partitions but VSYNC_PARTITIONS={spec.partitions}: "
                            "set VSYNC_PARTITIONS to match, or recreate the topic (see README, scaling out)")
    if any(s.required for s in specs):
        resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs if s.required]
        responses = await admin.describe_configs(resources)
        actual: dict[str, dict[str, str]] = {}
        for response in responses:
            for _err, _msg, _type, name, entries in response.resources:
                actual[name] = {entry[0]: entry[1] for entry in entries}
        for spec in specs:
            for key in spec.required:
                value = actual.get(spec.name, {}).get(key)
                if value != spec.configs[key]:
                    problems.append(f"topic {spec.name!r} has {key}={value} but needs {key}={spec.configs[key]}: "
                                    f"kafka-configs --alter --entity-type topics --entity-name {spec.name} "
                                    f"--add-config {key}={spec.configs[key]}")
    if problems:
        raise ConfigurationError("Kafka topics do not match this worker:\n  " + "\n  ".join(problems))
