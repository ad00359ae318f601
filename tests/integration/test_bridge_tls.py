"""The real BridgeClient against the real DICT simulator over TLS and mutual TLS, configured from the
settings (VSYNC_BRIDGE_TLS_CA / _CERT / _KEY), with a throwaway CA made for the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.tls_certs import TestPki
from vsync_stream.bridges.dict_bridge import BridgeClient
from vsync_stream.bridges.tls import bridge_tls_kwargs
from vsync_stream.errors import BridgeUnavailable
from vsync_stream.settings import Settings
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries
from vsync_stream.simulator.server import DictSimulator

pytestmark = pytest.mark.usefixtures("no_vsync_env")

P1 = "12345678"
FAST_FAIL: dict[str, Any] = {"deadline_s": 2.0, "max_attempts": 2, "max_retry_s": 3.0, "backoff_initial_s": 0.01,
                             "backoff_max_s": 0.05}


@pytest.fixture
def model() -> DictModel:
    model = DictModel()
    for entry in generate_entries(50, [P1], seed=5):
        model.create(entry)
    return model


async def _serve(model: DictModel, credentials: grpc.ServerCredentials) -> DictSimulator:
    simulator = DictSimulator(model, server_credentials=credentials)
    await simulator.start("127.0.0.1", 0)
    return simulator


@pytest_asyncio.fixture
async def tls_simulator(model: DictModel, pki: TestPki) -> AsyncIterator[DictSimulator]:
    credentials = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())])
    simulator = await _serve(model, credentials)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest_asyncio.fixture
async def mtls_simulator(model: DictModel, pki: TestPki) -> AsyncIterator[DictSimulator]:
    credentials = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                                              root_certificates=pki.ca.read_bytes(), require_client_auth=True)
    simulator = await _serve(model, credentials)
    try:
        yield simulator
    finally:
        await simulator.stop()


async def _verify(target: str, model: DictModel, **kwargs: Any) -> bool:
    async with BridgeClient(target, **FAST_FAIL, **kwargs) as client:
        return (await client.verify_sync(P1, "EVP", model.vsync(P1, "EVP"))).ok


@pytest.mark.asyncio
async def test_tls_with_the_ca_from_the_settings(tls_simulator: DictSimulator, pki: TestPki) -> None:
    kwargs = bridge_tls_kwargs(Settings(bridge_tls_ca=pki.ca))
    assert await _verify(tls_simulator.target, tls_simulator.model, **kwargs)


@pytest.mark.asyncio
async def test_tls_refuses_a_server_signed_by_another_ca_and_plaintext(tls_simulator: DictSimulator,
                                                                        pki: TestPki) -> None:
    with pytest.raises(BridgeUnavailable):
        await _verify(tls_simulator.target, tls_simulator.model,
                      **bridge_tls_kwargs(Settings(bridge_tls_ca=pki.other_ca)))
    with pytest.raises(BridgeUnavailable):
        await _verify(tls_simulator.target, tls_simulator.model)  # a plaintext client


@pytest.mark.asyncio
async def test_mutual_tls_with_the_client_certificate_from_the_settings(mtls_simulator: DictSimulator,
                                                                        pki: TestPki) -> None:
    kwargs = bridge_tls_kwargs(Settings(bridge_tls_ca=pki.ca, bridge_tls_cert=pki.client_cert,
                                        bridge_tls_key=pki.client_key))
    assert await _verify(mtls_simulator.target, mtls_simulator.model, **kwargs)


@pytest.mark.asyncio
async def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_simulator: DictSimulator,
                                                                 pki: TestPki) -> None:
    with pytest.raises(BridgeUnavailable):
        await _verify(mtls_simulator.target, mtls_simulator.model,
                      **bridge_tls_kwargs(Settings(bridge_tls_ca=pki.ca)))
