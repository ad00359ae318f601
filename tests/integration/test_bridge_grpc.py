"""The real BridgeClient against the real DICT simulator gRPC server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import pytest_asyncio

from vsync_stream.bridges.dict_bridge import BridgeClient, entry_from_proto, entry_to_proto
from vsync_stream.domain.vsync import EMPTY_VSYNC
from vsync_stream.errors import BridgeError, BridgeNotFound, BridgeUnavailable, ConfigurationError, RateLimited
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries
from vsync_stream.simulator.server import DictSimulator, TokenBucket

P1, P2 = "12345678", "00000208"
ClientFactory = Callable[..., BridgeClient]


@pytest.fixture
def model() -> DictModel:
    model = DictModel()
    for entry in generate_entries(300, [P1, P2], seed=3):
        model.create(entry)
    return model


@pytest_asyncio.fixture
async def simulator(model: DictModel) -> AsyncIterator[DictSimulator]:
    sim = DictSimulator(model, rate_limits={"VerifySync": TokenBucket(1000, 1000.0)})
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest_asyncio.fixture
async def client_factory(simulator: DictSimulator) -> AsyncIterator[ClientFactory]:
    clients: list[BridgeClient] = []

    def make(**overrides: Any) -> BridgeClient:
        settings: dict[str, Any] = {"deadline_s": 2.0, "max_attempts": 3, "max_retry_s": 5.0,
                                    "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
        settings.update(overrides)
        client = BridgeClient(simulator.target, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop()


@pytest_asyncio.fixture
async def client(client_factory: ClientFactory) -> BridgeClient:
    bridge = client_factory()
    await bridge.start()
    return bridge


@pytest.mark.asyncio
async def test_correct_vsync_is_ok_for_every_pair(simulator: DictSimulator, client: BridgeClient) -> None:
    model = simulator.model
    assert len(model.pairs()) == 10
    for participant, key_type in model.pairs():
        result = await client.verify_sync(participant, key_type, model.vsync(participant, key_type))
        assert result.result == "OK" and result.ok and result.verification_id
        assert result.verified_at is not None and result.verified_at.tzinfo is not None
    assert [v.result for v in model.verifications()] == ["OK"] * 10


@pytest.mark.asyncio
async def test_wrong_vsync_is_nok_and_recorded(simulator: DictSimulator, client: BridgeClient) -> None:
    model = simulator.model
    result = await client.verify_sync(P1, "EVP", EMPTY_VSYNC)
    assert result.result == "NOK" and not result.ok
    recorded = model.verifications()[-1]
    assert (recorded.verification_id, recorded.participant, recorded.key_type, recorded.result) == (
        result.verification_id, P1, "EVP", "NOK")


@pytest.mark.asyncio
async def test_tampering_turns_ok_into_nok(simulator: DictSimulator, client: BridgeClient) -> None:
    model = simulator.model
    participant, key_type = model.pairs()[0]
    synced = model.vsync(participant, key_type)
    victim = next(e for e in model.entries() if (e.participant, e.key_type) == (participant, key_type))
    model.tamper_update(victim.key, account_number="1")
    assert (await client.verify_sync(participant, key_type, synced)).result == "NOK"


@pytest.mark.asyncio
async def test_empty_bucket_answers_resource_exhausted(simulator: DictSimulator, client: BridgeClient) -> None:
    simulator.rate_limits["VerifySync"] = TokenBucket(capacity=3, refill_per_s=0.0)
    vsync = simulator.model.vsync(P1, "EVP")
    for _ in range(3):
        assert (await client.verify_sync(P1, "EVP", vsync)).ok
    with pytest.raises(RateLimited) as caught:
        await client.verify_sync(P1, "EVP", vsync)
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)
    assert caught.value.retriable
    # The bucket never refills: the retry-after hint exceeds the retry budget, so no retry is made.
    assert simulator.rejections["VerifySync"] == 1


@pytest.mark.asyncio
async def test_rate_limited_call_waits_for_the_refill_and_succeeds(
        simulator: DictSimulator, client: BridgeClient) -> None:
    simulator.rate_limits["VerifySync"] = TokenBucket(capacity=1, refill_per_s=20.0)
    vsync = simulator.model.vsync(P2, "CPF")
    assert (await client.verify_sync(P2, "CPF", vsync)).ok
    assert (await client.verify_sync(P2, "CPF", vsync)).ok
    assert simulator.rejections["VerifySync"] == 1


@pytest.mark.asyncio
async def test_unavailable_switch_gives_bridge_unavailable_after_retries(
        simulator: DictSimulator, client: BridgeClient) -> None:
    simulator.unavailable = True
    with pytest.raises(BridgeUnavailable) as caught:
        await client.verify_sync(P1, "EVP", EMPTY_VSYNC)
    assert caught.value.__cause__.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]
    assert simulator.calls["VerifySync"] == client.max_attempts == 3
    simulator.unavailable = False
    assert (await client.verify_sync(P1, "EVP", simulator.model.vsync(P1, "EVP"))).ok


@pytest.mark.asyncio
async def test_a_transient_outage_is_retried_through(simulator: DictSimulator, client_factory: ClientFactory) -> None:
    client = client_factory(max_attempts=20, backoff_initial_s=0.02, backoff_max_s=0.05)
    await client.start()
    simulator.unavailable = True
    asyncio.get_running_loop().call_later(0.15, setattr, simulator, "unavailable", False)
    assert (await client.verify_sync(P1, "EVP", simulator.model.vsync(P1, "EVP"))).ok
    assert simulator.calls["VerifySync"] > 1


@pytest.mark.asyncio
async def test_latency_beyond_the_deadline_gives_bridge_unavailable(
        simulator: DictSimulator, client_factory: ClientFactory) -> None:
    client = client_factory(deadline_s=0.1, max_attempts=2)
    await client.start()
    simulator.latency_s = 0.5
    with pytest.raises(BridgeUnavailable) as caught:
        await client.verify_sync(P1, "EVP", EMPTY_VSYNC)
    assert caught.value.__cause__.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]
    assert simulator.calls["VerifySync"] == 2
    simulator.latency_s = 0.02
    assert (await client.verify_sync(P1, "EVP", simulator.model.vsync(P1, "EVP"))).ok


@pytest.mark.asyncio
async def test_unknown_objects_raise_bridge_not_found_without_retry(
        simulator: DictSimulator, client: BridgeClient) -> None:
    calls = {
        "GetCidFile": client.get_cid_file("job-1"),
        "GetEntryByCid": client.get_entry_by_cid(P1, "EVP", "0" * 64),
    }
    for operation, call in calls.items():
        with pytest.raises(BridgeNotFound) as caught:
            await call
        assert not caught.value.retriable and caught.value.status_code is grpc.StatusCode.NOT_FOUND
        assert simulator.calls[operation] == 1
    with pytest.raises(BridgeNotFound):
        async for _chunk in client.download_cid_file("job-1"):
            pass
    assert simulator.calls["DownloadCidFile"] == 1


@pytest.mark.asyncio
async def test_bad_arguments_are_refused(simulator: DictSimulator, client: BridgeClient) -> None:
    with pytest.raises(ValueError):
        await client.verify_sync(P1, "IBAN", EMPTY_VSYNC)
    with pytest.raises(BridgeError):  # INVALID_ARGUMENT from the server, not retried
        await client.verify_sync(P1, "EVP", "not hex")
    with pytest.raises(ValueError):
        await client.list_cid_events(P1, "EVP", datetime.now(UTC), datetime.now(UTC), limit=201)


@pytest.mark.asyncio
async def test_client_lifecycle_and_configuration(simulator: DictSimulator) -> None:
    client = BridgeClient(simulator.target)
    with pytest.raises(RuntimeError):
        await client.verify_sync(P1, "EVP", EMPTY_VSYNC)
    async with client:
        assert (await client.verify_sync(P1, "EVP", simulator.model.vsync(P1, "EVP"))).ok
    with pytest.raises(ConfigurationError):
        BridgeClient(simulator.target, private_key_path="/nonexistent/key.pem")
    with pytest.raises(ConfigurationError):
        await BridgeClient(simulator.target, root_cert_path="/nonexistent/ca.pem").start()


def test_entries_round_trip_through_the_proto_with_the_same_cid(model: DictModel) -> None:
    for entry in model.entries():
        back = entry_from_proto(entry_to_proto(entry))
        assert back == entry and back.cid == entry.cid
