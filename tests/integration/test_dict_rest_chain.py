"""The whole REST chain through real components: the product's BridgeClient → the gRPC Bridge
(``vsync-stream bridge``'s server; once as a real child process) → the DICT simulator's REST face,
over real mutual TLS with signed XML. No broker is needed; everything binds 127.0.0.1, port 0.

Bad input from issue #16: unsigned / wrongly signed responses, expired or foreign certificates,
schema-violating bodies, a 5xx in the middle of a CID file download. Each must be a clear error,
retried only where the DICT allows it, and never a wrong VSync answer.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.tls_certs import TestPki
from vsync_stream.bridges import dict_xml as dx
from vsync_stream.bridges.bridge_server import POLICY_TRAILER, BridgeServer, server_credentials_from_settings
from vsync_stream.bridges.dict_bridge import BridgeClient
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.bridges.generated import vsync_bridge_pb2_grpc as pb_grpc
from vsync_stream.errors import (
    BridgeError,
    BridgeNotFound,
    BridgeUnavailable,
    CidFileCorrupt,
    CidFileFailed,
    ConfigurationError,
    DictTlsError,
    RateLimited,
)
from vsync_stream.settings import Settings
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import PopulationGenerator
from vsync_stream.simulator.rest import RestDictSimulator
from vsync_stream.simulator.rest_chain import RestBridgeChain, client_for
from vsync_stream.simulator.rest_pki import Authority, make_dict_pki
from vsync_stream.simulator.server import TokenBucket
from vsync_stream.worker_process import free_port

P1, P2 = "12345678", "00000208"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH_MS = int(EPOCH.timestamp()) * 1000
REPO = Path(__file__).resolve().parents[2]
Factory = Callable[..., Any]


class TickClock:
    """A model clock in epoch ms advancing 1 ms every ``every`` readings (ties when > 1)."""

    def __init__(self, every: int = 1) -> None:
        self.every, self.readings = every, 0

    def __call__(self) -> int:
        self.readings += 1
        return EPOCH_MS + self.readings // self.every


def populated(n: int = 300, clock: TickClock | None = None) -> DictModel:
    model = DictModel(clock_ms=clock) if clock else DictModel()
    population = PopulationGenerator([P1, P2], seed=5)
    rng = random.Random(3)
    keys = []
    for _ in range(n):
        entry = population.entry(key_type=rng.choice(["EVP", "CPF"]), participant=rng.choice([P1, P2]))
        model.create(entry)
        keys.append(entry.key)
    for key in rng.sample(keys, n // 10):
        model.delete(key)
    return model


@pytest_asyncio.fixture
async def chain_factory(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[tuple[RestBridgeChain, BridgeClient]] = []

    async def make(model: DictModel, **options: Any) -> tuple[RestBridgeChain, BridgeClient]:
        options.setdefault("cid_file_delay_s", 0.2)
        chain = RestBridgeChain(model, P1, tmp_path / f"pki{len(made)}", **options)
        await chain.start()
        product = BridgeClient(chain.target, deadline_s=10.0, max_attempts=4, max_retry_s=10.0,
                               backoff_initial_s=0.01, backoff_max_s=0.05)
        await product.start()
        made.append((chain, product))
        return chain, product

    yield make
    for chain, product in made:
        await product.stop()
        await chain.stop()


# ------------------------------------------------------------------ the operations


async def test_verify_sync_answers_ok_and_nok_from_the_dicts_own_vsync(chain_factory: Factory) -> None:
    model = populated()
    chain, product = await chain_factory(model)
    for participant, key_type in model.pairs():
        assert (await product.verify_sync(participant, key_type, model.vsync(participant, key_type))).ok
        wrong = format(int(model.vsync(participant, key_type), 16) ^ 1, "064x")
        assert (await product.verify_sync(participant, key_type, wrong)).result == "NOK"
    assert [v.result for v in model.verifications()] == ["OK", "NOK"] * len(model.pairs())
    assert chain.simulator.calls["VerifySync"] == 2 * len(model.pairs())
    assert chain.simulator.gzipped == 2 * len(model.pairs()) + 1  # every answer gzipped, policies included
    # The Bridge shaped its buckets from the DICT's policies endpoint.
    names = {p.name for p in chain.client.policies}  # type: ignore[union-attr]
    assert names == {"SYNC_VERIFICATIONS_WRITE", "CIDS_FILES_WRITE", "CIDS_FILES_READ", "CIDS_EVENTS_LIST",
                     "CIDS_ENTRIES_READ"}


async def test_cid_file_is_created_polled_and_downloaded_whole(chain_factory: Factory) -> None:
    model = populated(600)
    chain, product = await chain_factory(model)
    job = await product.create_cid_file(P1, "EVP")
    status = await product.wait_for_cid_file(job, poll_interval_s=0.1, timeout_s=30)
    assert status.status == "AVAILABLE" and status.byte_size == 65 * model.count(P1, "EVP")
    content = b"".join([chunk async for chunk in product.download_cid_file(job)])
    assert {line.lower() for line in content.decode().split()} == model.cids(P1, "EVP")
    assert chain.simulator.downloads["full"] == 1


async def test_a_5xx_or_a_dropped_connection_mid_download_is_resumed(chain_factory: Factory) -> None:
    model = populated(800)
    chain, product = await chain_factory(model)
    job = await product.create_cid_file(P2, "CPF")
    await product.wait_for_cid_file(job, poll_interval_s=0.1, timeout_s=30)
    chain.simulator.download_faults = ["DROP", "503", "DROP"]
    content = b"".join([chunk async for chunk in product.download_cid_file(job)])
    assert {line.lower() for line in content.decode().split()} == model.cids(P2, "CPF")
    assert chain.simulator.downloads["dropped"] == 2 and chain.simulator.downloads["503"] == 1
    assert chain.simulator.downloads["ranged"] == 2  # resumed twice from the byte reached, never restarted


async def test_a_download_that_keeps_failing_is_a_clear_error_not_a_short_file(chain_factory: Factory) -> None:
    model = populated(400)
    chain, product = await chain_factory(model)
    job = await product.create_cid_file(P1, "CPF")
    await product.wait_for_cid_file(job, poll_interval_s=0.1, timeout_s=30)
    chain.simulator.download_faults = ["DROP"] + ["503"] * 40
    with pytest.raises(BridgeError, match="download failed after 4 attempts"):
        async for _ in product.download_cid_file(job):
            pass


async def test_a_truncated_file_is_caught_by_size_and_sha256(chain_factory: Factory) -> None:
    model = populated(200)
    chain, product = await chain_factory(model)
    chain.simulator.cid_files.corruption = "TRUNCATE"
    job = await product.create_cid_file(P1, "EVP")
    await product.wait_for_cid_file(job, poll_interval_s=0.1, timeout_s=30)
    with pytest.raises((CidFileCorrupt, BridgeError)):
        async for _ in product.download_cid_file(job):
            pass


async def test_cid_events_page_with_boundary_duplicates_and_walk_once(chain_factory: Factory) -> None:
    model = populated(400, clock=TickClock(every=3))  # three log events per millisecond: ties at page edges
    chain, product = await chain_factory(model)
    log = model.cid_log(P1, "EVP")
    assert len(log) > 60
    walk = product.iter_cid_events(P1, "EVP", EPOCH, None, page_size=17)
    events = [(e.cid, e.type, e.timestamp) async for e in walk]
    assert events == [(e.cid, e.type, EPOCH + timedelta(milliseconds=e.timestamp_ms - EPOCH_MS)) for e in log]
    assert walk.duplicates > 0 and walk.pages > 3
    assert walk.vsync_after_last == model.vsync(P1, "EVP")
    # An end bound is exclusive at the Bridge (the DICT's EndTime is inclusive: the Bridge asks for end - 1 ms).
    middle = EPOCH + timedelta(milliseconds=log[len(log) // 2].timestamp_ms - EPOCH_MS)
    page = await product.list_cid_events(P1, "EVP", EPOCH, middle, limit=200)
    assert all(e.timestamp < middle for e in page.events)
    assert len(page.events) == sum(1 for e in log if e.timestamp_ms < log[len(log) // 2].timestamp_ms)


async def test_entry_by_cid_returns_the_entry_that_hashes_to_it(chain_factory: Factory) -> None:
    model = populated()
    _, product = await chain_factory(model)
    for participant, key_type in model.pairs():
        cid = sorted(model.cids(participant, key_type))[0]
        entry = await product.get_entry_by_cid(participant, key_type, cid.upper())
        assert entry == model.entry_by_cid(participant, key_type, cid) and entry.cid == cid
    with pytest.raises(BridgeNotFound):
        await product.get_entry_by_cid(P1, "EVP", "ab" * 32)


# ------------------------------------------------------------------ limits and outages


async def test_a_rate_limited_dict_is_resource_exhausted_with_the_policy(chain_factory: Factory) -> None:
    model = populated(50)
    chain, _ = await chain_factory(model, rate_limits={"VerifySync": TokenBucket(1, 1e-6)},
                                   client_rate_limits={"VerifySync": None})
    async with grpc.aio.insecure_channel(chain.target) as channel:
        stub = pb_grpc.DictBridgeStub(channel)
        request = pb.VerifySyncRequest(participant=P1, key_type=pb.KEY_TYPE_EVP, vsync=model.vsync(P1, "EVP"))
        assert (await stub.VerifySync(request)).result == pb.VerifySyncResponse.OK
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.VerifySync(request)
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "SYNC_VERIFICATIONS_WRITE" in (error.details() or "")
    trailers = dict(error.trailing_metadata() or ())
    assert trailers[POLICY_TRAILER] == "SYNC_VERIFICATIONS_WRITE" and int(trailers["retry-after-ms"]) > 0
    product = BridgeClient(chain.target, max_attempts=2, max_retry_s=0.5, rate_limits={"VerifySync": None})
    async with product:
        with pytest.raises(RateLimited):
            await product.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))
    assert len(model.verifications()) == 1


async def test_a_503_burst_is_retried_by_the_product_and_then_answers(chain_factory: Factory) -> None:
    model = populated(50)
    chain, product = await chain_factory(model)
    chain.simulator.inject_unavailable(2, "VerifySync")
    assert (await product.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))).ok
    assert chain.simulator.calls["VerifySync"] == 3


# ------------------------------------------------------------------ untrusted answers


@pytest.mark.parametrize("fault", ["UNSIGNED", "TAMPERED", "SCHEMA"])
async def test_an_untrusted_response_is_a_non_retried_error_never_an_answer(chain_factory: Factory,
                                                                             fault: str) -> None:
    model = populated(50)
    chain, product = await chain_factory(model)
    chain.simulator.response_fault = fault  # type: ignore[assignment]
    wrong = format(int(model.vsync(P1, "EVP"), 16) ^ 1, "064x")  # the DICT would say NOK; TAMPERED flips it to OK
    with pytest.raises(BridgeError) as caught:
        await product.verify_sync(P1, "EVP", wrong)
    assert caught.value.status_code is grpc.StatusCode.DATA_LOSS and not caught.value.retriable
    assert ("sign" in str(caught.value)) if fault != "SCHEMA" else ("schema" in str(caught.value))
    assert chain.simulator.calls["VerifySync"] == 1  # not retried
    for operation in (product.list_cid_events(P1, "EVP", EPOCH), product.create_cid_file(P1, "EVP")):
        with pytest.raises(BridgeError, match="DATA_LOSS"):
            await operation


async def test_a_signed_ok_about_another_vsync_is_not_taken_as_ok(chain_factory: Factory) -> None:
    model = populated(50)
    chain, product = await chain_factory(model)
    chain.simulator.response_fault = "MISMATCH"
    wrong = format(int(model.vsync(P1, "EVP"), 16) ^ 1, "064x")
    with pytest.raises(BridgeError, match="another participant, key type or VSync") as caught:
        await product.verify_sync(P1, "EVP", wrong)
    assert caught.value.status_code is grpc.StatusCode.DATA_LOSS
    assert [v.result for v in model.verifications()] == ["OK"]  # the DICT said OK, but not about our VSync


async def test_the_bridge_paces_with_the_policies_the_dict_publishes(chain_factory: Factory) -> None:
    model = populated(50)
    chain, product = await chain_factory(model, rate_limits={"VerifySync": TokenBucket(6, 1e-4)})
    for _ in range(3):
        assert (await product.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))).ok
    late = client_for(chain.simulator, P1)  # a Bridge started now sees 3 of 6 tokens left
    async with late:
        (policy,) = [p for p in late.policies if p.name == "SYNC_VERIFICATIONS_WRITE"]
        assert (policy.capacity, policy.available_tokens) == (6, 3)
        assert late.pacer.tokens_left("VerifySync") <= 3
        assert late.pacer.tokens_left("GetEntryByCid") > 1000  # the DICT's default bucket, not ours


async def test_a_cid_file_job_that_ends_in_error_is_reported_as_failed(chain_factory: Factory) -> None:
    model = populated(50)
    chain, product = await chain_factory(model)
    chain.simulator.cid_files.outcome = "ERROR"
    job = await product.create_cid_file(P1, "EVP")
    with pytest.raises(CidFileFailed):
        await product.wait_for_cid_file(job, poll_interval_s=0.1, timeout_s=30)


@pytest.mark.parametrize("case", ["expired", "foreign"])
async def test_a_response_signed_with_an_expired_or_foreign_certificate_is_rejected(
        chain_factory: Factory, tmp_path: Path, case: str) -> None:
    model = populated(50)
    chain, product = await chain_factory(model)
    past = datetime.now(UTC) - timedelta(days=10)
    authority = chain.pki.dict_ca if case == "expired" else Authority.create(tmp_path, "rogue-ca")
    cert, key = authority.issue(tmp_path, f"{case}-signing", usage="signing", rsa_key=True,
                                **({"not_before": past, "not_after": past + timedelta(days=1)}
                                   if case == "expired" else {}))
    chain.simulator.signer = dx.XmlSigner.from_files(key, cert)
    with pytest.raises(BridgeError, match="signing certificate is not trusted") as caught:
        await product.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))
    assert caught.value.status_code is grpc.StatusCode.DATA_LOSS


async def test_a_request_signed_by_an_untrusted_key_is_refused_by_the_dict(chain_factory: Factory,
                                                                           tmp_path: Path) -> None:
    model = populated(50)
    chain, product = await chain_factory(model)
    rogue = Authority.create(tmp_path, "rogue-participant-ca")
    cert, key = rogue.issue(tmp_path, "rogue-participant-signing", usage="signing", rsa_key=True)
    chain.client._signer = dx.XmlSigner.from_files(key, cert)  # type: ignore[union-attr]
    with pytest.raises(BridgeError, match="RequestSignatureInvalid") as caught:
        await product.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))
    assert caught.value.status_code is grpc.StatusCode.INVALID_ARGUMENT
    assert model.verifications() == []


# ------------------------------------------------------------------ mutual TLS


async def test_an_expired_server_certificate_or_a_wrong_ca_fails_tls_clearly(tmp_path: Path) -> None:
    model = populated(20)
    pki = make_dict_pki(tmp_path / "pki")
    simulator = RestDictSimulator(model, pki)
    past = datetime.now(UTC) - timedelta(days=10)
    expired_cert, expired_key = pki.dict_ca.issue(tmp_path, "expired-server", usage="server",
                                                  hosts=("localhost", "127.0.0.1"), not_before=past,
                                                  not_after=past + timedelta(days=1))
    context = simulator.ssl_context()
    context.load_cert_chain(str(expired_cert), str(expired_key))
    await simulator.start(ssl_context=context)
    try:
        with pytest.raises(DictTlsError, match="certificate has expired"):
            async with client_for(simulator, P1):
                pass
    finally:
        await simulator.stop()

    simulator = RestDictSimulator(model, pki)
    await simulator.start()
    try:
        # The DICT's server certificate is checked against a CA that did not sign it.
        other = Authority.create(tmp_path, "other-ca")
        other_pki = dataclasses.replace(pki, dict_ca=other)
        with pytest.raises(DictTlsError, match="certificate verify failed"):
            async with client_for(simulator, P1, other_pki):
                pass
        # Our client certificate from a CA the DICT does not trust: refused, a clear error, not a hang.
        rogue = Authority.create(tmp_path, "rogue-client-ca")
        cert, key = rogue.issue(tmp_path, "rogue-client", usage="client")
        refused = client_for(simulator, P1)
        refused._ssl.load_cert_chain(str(cert), str(key))
        with pytest.raises(BridgeUnavailable, match="refusing the client certificate"):
            async with refused:
                pass
        assert simulator.calls == {}
    finally:
        await simulator.stop()


# ------------------------------------------------------------------ the real `vsync-stream bridge` process


async def test_the_vsync_stream_bridge_process_serves_the_chain(tmp_path: Path) -> None:
    model = populated(100)
    pki = make_dict_pki(tmp_path / "pki")
    simulator = RestDictSimulator(model, pki, cid_file_delay_s=0.2)
    await simulator.start()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VSYNC_")}, **pki.bridge_env(),
           "VSYNC_DICT_API_URL": simulator.url, "VSYNC_PARTICIPANTS": f"{P1},{P2}",
           "VSYNC_BRIDGE_LISTEN": f"127.0.0.1:{port}"}
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).with_name("vsync-stream")), "bridge"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        product = BridgeClient(f"127.0.0.1:{port}", deadline_s=10.0, max_attempts=30, max_retry_s=60.0,
                               backoff_initial_s=0.2, backoff_max_s=1.0)
        async with product:
            for participant, key_type in model.pairs():
                assert (await product.verify_sync(participant, key_type, model.vsync(participant, key_type))).ok
            job = await product.create_cid_file(P2, "EVP")
            await product.wait_for_cid_file(job, poll_interval_s=0.1, timeout_s=30)
            content = b"".join([chunk async for chunk in product.download_cid_file(job)])
            assert {line.lower() for line in content.decode().split()} == model.cids(P2, "EVP")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        await simulator.stop()
    assert process.returncode == 0, log_path.read_text()
    assert "Bridge serving the gRPC Bridge API" in log_path.read_text()


# ------------------------------------------------------------------ the Bridge's own gRPC side


def test_the_bridge_refuses_to_serve_entries_off_loopback_without_mutual_tls(pki: TestPki,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("VSYNC_")]:
        monkeypatch.delenv(name)
    assert server_credentials_from_settings(Settings(), "127.0.0.1") is None
    assert server_credentials_from_settings(Settings(), "localhost") is None
    with pytest.raises(ConfigurationError, match="without mutual TLS"):
        server_credentials_from_settings(Settings(), "0.0.0.0")
    tls_only = Settings(bridge_server_tls_cert=pki.server_cert, bridge_server_tls_key=pki.server_key)
    with pytest.raises(ConfigurationError, match="without mutual TLS"):
        server_credentials_from_settings(tls_only, "10.1.2.3")
    with pytest.raises(ConfigurationError, match="both"):
        server_credentials_from_settings(Settings(bridge_server_tls_cert=pki.server_cert), "127.0.0.1")
    mutual = Settings(bridge_server_tls_cert=pki.server_cert, bridge_server_tls_key=pki.server_key,
                      bridge_server_client_ca=pki.ca)
    assert server_credentials_from_settings(mutual, "0.0.0.0") is not None


async def test_the_bridge_serves_the_workers_over_mutual_tls(pki: TestPki, tmp_path: Path) -> None:
    model = populated(50)
    chain = RestBridgeChain(model, P1, tmp_path / "dict-pki")
    await chain.simulator.start()
    chain.client = client_for(chain.simulator, P1)
    await chain.client.start()
    mutual = Settings(bridge_server_tls_cert=pki.server_cert, bridge_server_tls_key=pki.server_key,
                      bridge_server_client_ca=pki.ca)
    chain.bridge = BridgeServer(chain.client, server_credentials=server_credentials_from_settings(mutual, "127.0.0.1"))
    await chain.bridge.start()
    try:
        async with BridgeClient(chain.target, root_cert_path=pki.ca, cert_chain_path=pki.client_cert,
                                private_key_path=pki.client_key) as worker:
            assert (await worker.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))).ok
        async with BridgeClient(chain.target, root_cert_path=pki.ca, deadline_s=2.0, max_attempts=2,
                                max_retry_s=2.0, backoff_initial_s=0.01) as stranger:
            with pytest.raises(BridgeUnavailable):
                await stranger.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))
    finally:
        await chain.stop()
    assert chain.simulator.calls["VerifySync"] == 1
