"""The chaos suite's event stream: a realistic history of DICT changes and its publication order.

The simulator's :class:`~vsync_stream.simulator.model.DictModel` produces the events (and keeps the
true state); this module lays them out for publication with duplicates, reordering and malformed
messages. Everything is a function of the seed: event ids, RequestIds, times and versions are all
drawn from seeded generators. ``chaos_driver`` publishes the stream and injects the faults.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import orjson

from tests.factories import event_doc
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import KeyChange, KeyEvent, encode_change, encode_event
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import (
    PopulationGenerator,
    make_account_number,
    make_branch,
    make_uuid4,
    random_update_changes,
)

START_MS = 1_795_000_000_000  # 2026-11-18T09:46:40Z: a fixed epoch for the simulated DICT clock

MessageKind = Literal["event", "duplicate", "malformed"]


@dataclass(frozen=True, slots=True)
class ChaosProfile:
    """Size of a chaos run and the faults it injects.

    Attributes:
        events: distinct valid events the DICT produces (before duplicates).
        kills: SIGKILLs of the worker (each followed by a restart on the same data dir).
        kills_during_restart: double kills: the restarted worker is killed again as soon as its
            web view answers (opening RocksDB, restoring, rejoining the group), then restarted.
        kafka_restarts / pulsar_restarts: ``deploy/local/stack restart kafka|pulsar`` during the run.
        malformed: bad messages mixed into the Pulsar stream (each one distinct; the adapter rejects them).
        kafka_garbage: bad records written straight to the Kafka key-events topic, as a foreign or
            broken producer would (the fold rejects them).
        publish_rate: base rate of the connector, messages per second (bursts go from 0.3x to 4x).
        duplicate_rate: share of events published a second time.
        reorder_rate: share of events swapped with the next event of the same key.
    """

    name: str
    events: int
    kills: int
    kafka_restarts: int
    pulsar_restarts: int
    malformed: int
    publish_rate: float
    kafka_garbage: int = 6
    kills_during_restart: int = 1
    duplicate_rate: float = 0.05
    reorder_rate: float = 0.02
    seed: int = 20261129
    partitions: int = 8  # the product default (VSYNC_PARTITIONS)
    participants: tuple[str, ...] = ("12345678", "00000208", "60701190")


REDUCED = ChaosProfile("reduced", events=20_000, kills=2, kafka_restarts=1, pulsar_restarts=0, malformed=12,
                       publish_rate=500.0)
FULL = ChaosProfile("full", events=200_000, kills=6, kafka_restarts=1, pulsar_restarts=1, malformed=40,
                    publish_rate=1000.0, kafka_garbage=30, kills_during_restart=2)


# --------------------------------------------------------------------------------------------
# the event stream
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Message:
    """One Pulsar publication: message key, payload, and the event id (None when malformed)."""

    key: str
    payload: bytes
    event_id: str | None
    kind: MessageKind


@dataclass
class ChaosStream:
    """The publication order and what went into it."""

    messages: list[Message]
    events: list[KeyEvent]  # distinct valid events, in the DICT's order
    operations: Counter[str]  # creates, updates, deletes, claims, re-creates
    duplicates: int
    reordered: int
    malformed: list[bytes]

    @property
    def distinct_ids(self) -> set[str]:
        return {e.event_id for e in self.events}

    def last_event_per_key(self) -> dict[str, KeyEvent]:
        """The newest event of every key (the one the table must end up holding)."""
        last: dict[str, KeyEvent] = {}
        for event in self.events:
            last[event.key] = event
        return last


class _Clock:
    """The simulated DICT's clock: epoch ms, advanced by the generator (deterministic)."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now


class _KeyPool:
    """A set of keys with O(1) add, remove and seeded random choice."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        self._index[key] = len(self._keys)
        self._keys.append(key)

    def remove(self, key: str) -> None:
        i = self._index.pop(key)
        last = self._keys.pop()
        if i < len(self._keys):
            self._keys[i] = last
            self._index[last] = i

    def choice(self, rng: random.Random) -> str:
        return self._keys[rng.randrange(len(self._keys))]


def make_model() -> tuple[DictModel, _Clock]:
    """A DICT model on a deterministic clock (the driver advances it)."""
    clock = _Clock(START_MS)
    return DictModel(clock_ms=clock), clock


def generate_events(model: DictModel, clock: _Clock, profile: ChaosProfile) -> tuple[list[KeyEvent], Counter[str]]:
    """Drive the DICT model through ``profile.events`` realistic changes, in the DICT's order.

    The mix: creates, updates (account moves, name changes, CID-neutral changes), deletes, claims
    between participants (donor delete + claimer create, portability or ownership), and
    re-creation of deleted keys (the same CID set may gain a key again).
    """
    rng = random.Random(profile.seed)
    ids = random.Random(profile.seed + 1)
    population = PopulationGenerator(list(profile.participants), seed=profile.seed + 2)
    active, deleted = _KeyPool(), _KeyPool()
    last_entry: dict[str, Entry] = {}
    events: list[KeyEvent] = []
    ops: Counter[str] = Counter()
    warm_up = min(2000, profile.events // 5)

    def emit(*new: KeyEvent) -> None:
        for event in new:
            events.append(dataclasses.replace(event, event_id=make_uuid4(ids)))
            clock.now += rng.randint(0, 3)

    while len(events) < profile.events:
        draw = rng.random()
        if len(active) < warm_up or draw < 0.38:
            entry = population.entry()
            emit(model.create(entry))
            active.add(entry.key)
            ops["create"] += 1
        elif draw < 0.70:
            key = active.choice(rng)
            entry = model.entry(key)
            assert entry is not None
            emit(model.update(key, **random_update_changes(entry, rng)))
            ops["update"] += 1
        elif draw < 0.80:
            key = active.choice(rng)
            entry = model.entry(key)
            assert entry is not None
            emit(model.delete(key, reason=rng.choice(("USER_REQUESTED", "ACCOUNT_CLOSURE", "FRAUD"))))
            active.remove(key)
            deleted.add(key)
            last_entry[key] = entry
            ops["delete"] += 1
        elif draw < 0.93:
            key = active.choice(rng)
            donor = model.entry(key)
            assert donor is not None
            if donor.key_type == "EVP":  # EVP keys cannot be claimed (BCB DICT API)
                continue
            claimer = rng.choice([p for p in profile.participants if p != donor.participant])
            new = dataclasses.replace(donor, participant=claimer, request_id=make_uuid4(rng),
                                      branch=make_branch(rng), account_number=make_account_number(rng))
            if donor.key_type in ("PHONE", "EMAIL") and rng.random() < 0.3:  # ownership: another owner
                other = population.entry(key_type=donor.key_type, participant=claimer)
                new = dataclasses.replace(new, owner_type=other.owner_type, owner_tax_id=other.owner_tax_id,
                                          owner_name=other.owner_name, owner_trade_name=other.owner_trade_name)
            emit(*model.claim(key, new))
            ops["claim"] += 1
        else:
            if not len(deleted):
                continue
            key = deleted.choice(rng)
            old = last_entry.pop(key)
            again = dataclasses.replace(old, request_id=make_uuid4(rng), participant=rng.choice(profile.participants),
                                        account_number=make_account_number(rng))
            emit(model.create(again))
            deleted.remove(key)
            active.add(key)
            ops["re-create"] += 1
    return events, ops


def malformed_payloads(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` distinct bad messages of several kinds, as ``(message key, payload)``."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        kind = i % 6
        if kind == 0:
            payload = b"{not json #%d" % i
        elif kind == 1:
            payload = b'{"eventId": "\xff\xfe-%d"}' % i
        elif kind == 2:
            payload = orjson.dumps(event_doc(eventId=make_uuid4(rng), entry__keyType="IBAN"))
        elif kind == 3:
            payload = orjson.dumps(event_doc(eventId=make_uuid4(rng), entry__requestId=...))
        elif kind == 4:
            payload = orjson.dumps(event_doc(eventId=make_uuid4(rng), entry__keyType="CPF", entry__key="52998224724"))
        else:
            payload = orjson.dumps(event_doc(eventId=make_uuid4(rng), reason="x" * 17_000))  # oversize
        out.append((f"malformed-{i}", payload))
    return out


def kafka_garbage(count: int, seed: int) -> list[tuple[bytes | None, bytes | None]]:
    """``count`` distinct bad key-events records as ``(Kafka key, value)``: a compact record whose
    Kafka key is not its Pix key, a compact record of the wrong shape, a payload that is not JSON,
    a valid compact record without a Kafka key, a tombstone (null value), and a compact record whose
    key type is a JSON array (not hashable: it once crashed the fold instead of being dead-lettered)."""
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes | None]] = []
    for i in range(count):
        kind = i % 6
        if kind in (0, 3):
            change = KeyChange(make_uuid4(rng), "key.created", START_MS, 1, f"garbage{i}@example.com", "EMAIL",
                               "12345678", f"{rng.getrandbits(256):064x}", make_uuid4(rng), "USER_REQUESTED")
            out.append((f"not-the-key-{i}".encode() if kind == 0 else None, encode_change(change)))
        elif kind == 1:
            out.append((f"garbage-{i}".encode(), b'[1,"short-record-%d"]' % i))
        elif kind == 2:
            out.append((f"garbage-{i}".encode(), b'{"eventId": %d' % i))
        elif kind == 4:
            out.append((f"garbage-{i}".encode(), None))
        else:
            out.append((f"garbage-{i}".encode(), b'[1,"%s","key.created",1795000000000,1,"g%d@b.c",["EMAIL"],'
                        b'"12345678","%s","%s",null]' % (make_uuid4(rng).encode(), i, b"ab" * 32,
                                                          make_uuid4(rng).encode())))
    return out


def build_stream(model: DictModel, clock: _Clock, profile: ChaosProfile) -> ChaosStream:
    """Generate the events and lay out the publication order with the injected faults of content.

    * reordering: ``reorder_rate`` of the events are swapped with the next event of the same key
      (so the newer one is published first: the fold must sort it out by version);
    * duplicates: ``duplicate_rate`` of the events are published again, half right after the
      original (a connector retry), half up to a few thousand messages later (a replayed window);
    * malformed messages at random places.
    """
    events, ops = generate_events(model, clock, profile)
    rng = random.Random(profile.seed + 3)
    payloads = [encode_event(e) for e in events]

    order = list(range(len(events)))
    successor: dict[int, int] = {}
    last_index: dict[str, int] = {}
    for i, event in enumerate(events):
        if event.key in last_index:
            successor[last_index[event.key]] = i
        last_index[event.key] = i
    candidates = sorted(successor)
    rng.shuffle(candidates)
    wanted = round(profile.reorder_rate * len(events))
    touched: set[int] = set()
    reordered = 0
    for i in candidates:
        if reordered >= wanted:
            break
        j = successor[i]
        if i in touched or j in touched:
            continue
        order[i], order[j] = order[j], order[i]
        touched |= {i, j}
        reordered += 1

    # (sort position, tie-break, message): originals at their slot, duplicates and bad input between.
    placed: list[tuple[float, int, Message]] = []
    for slot, i in enumerate(order):
        placed.append((slot, 0, Message(events[i].key, payloads[i], events[i].event_id, "event")))
    dup_slots = rng.sample(range(len(order)), round(profile.duplicate_rate * len(events)))
    for seq, slot in enumerate(dup_slots, start=1):
        i = order[slot]
        later = 0.5 if rng.random() < 0.5 else rng.randint(1, 3000) + 0.5
        placed.append((slot + later, seq, Message(events[i].key, payloads[i], events[i].event_id, "duplicate")))
    bad = malformed_payloads(profile.malformed, profile.seed + 4)
    for seq, (key, payload) in enumerate(bad, start=len(dup_slots) + 1):
        placed.append((rng.uniform(0, len(order)), seq, Message(key, payload, None, "malformed")))
    placed.sort(key=lambda item: (item[0], item[1]))
    return ChaosStream([m for _, _, m in placed], events, ops, len(dup_slots), reordered, [p for _, p in bad])
