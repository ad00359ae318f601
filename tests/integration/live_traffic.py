"""Live traffic for the reconciliation tests: the DICT keeps changing while a reconciliation runs."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import aiohttp

from tests.integration.conftest import Pipeline
from vsync_stream.domain.events import KeyEvent
from vsync_stream.simulator.population import generate_entries, random_update_changes

P1, P2 = "12345678", "00000208"


@dataclass
class LiveTraffic:
    """Creates, updates and deletes the DICT confirms and the connector publishes, ``rate`` per second,
    never touching ``frozen`` keys (those diverged behind the pipeline's back)."""

    pipeline: Pipeline
    frozen: set[str]
    rate: float = 60.0
    seed: int = 7
    duplicate_rate: float = 0.0
    participants: tuple[str, ...] = (P1, P2)
    sent: int = 0
    duplicates: int = 0
    history: list[KeyEvent] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed)
        fresh = generate_entries(10**6, list(self.participants), seed=self.seed + 1000)
        model = self.pipeline.model
        batch = max(1, int(self.rate / 10))
        keys = [e.key for e in model.entries() if e.key not in self.frozen]  # live keys, pruned lazily
        while not stop.is_set():
            events = []
            for _ in range(batch):
                entry = None
                if keys and rng.random() < 0.5:
                    i = rng.randrange(len(keys))
                    entry = model.entry(keys[i])
                    if entry is None:  # deleted earlier: forget it, create instead
                        keys[i] = keys[-1]
                        keys.pop()
                if entry is None:
                    fresh_entry = next(fresh)
                    if model.entry(fresh_entry.key) is None:
                        events.append(model.create(fresh_entry))
                        keys.append(fresh_entry.key)
                elif rng.random() < 0.7:
                    events.append(model.update(entry.key, **random_update_changes(entry, rng)))
                else:
                    events.append(model.delete(entry.key))
            self.history += events
            repeats = [rng.choice(self.history) for _ in events if rng.random() < self.duplicate_rate]
            await self.pipeline.publish(events + repeats)  # the connector publishes some events twice
            self.sent += len(events)
            self.duplicates += len(repeats)
            await asyncio.sleep(0.1)


async def wait_phase(pipeline: Pipeline, runs: int, phase: str, timeout_s: float = 240) -> None:
    """Wait until ``runs`` running reconciliations have all been through ``phase``."""
    async with aiohttp.ClientSession() as session:
        for _ in range(int(timeout_s * 5)):
            async with session.get(f"{pipeline.worker.base_url}/reconciliations") as resp:
                doc = await resp.json()
            done = [r for r in doc["running"] if phase in r["history"]]
            finished = [r for r in doc["recent"]]
            if len(done) + len(finished) >= runs:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"the reconciliations did not reach {phase!r}; see {pipeline.worker.log_path}")


def frozen_keys(pipeline: Pipeline) -> set[str]:
    """The keys ``diverge`` tampers with (the last entry of each pair it picks) and its new key."""
    by_pair = {(e.participant, e.key_type): e for e in pipeline.model.entries()}
    return {e.key for e in by_pair.values()} | {"52998224725"}


