"""The whole REST chain in one process: DICT REST simulator ← DictApiClient ← gRPC Bridge server.

What ``vsync-stream simulator --rest-port`` plus ``vsync-stream bridge`` run as two processes, for the
demo (``vsync-stream demo``, the default path) and the tests: the product's workers talk gRPC to
:attr:`RestBridgeChain.target`, the Bridge calls the simulated DICT API over real mutual TLS with
signed XML, and the simulator answers from the given :class:`DictModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vsync_stream.bridges.bridge_server import BridgeServer
from vsync_stream.bridges.dict_api import DictApiClient
from vsync_stream.bridges.pacing import RateLimit
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.rest import RestDictSimulator
from vsync_stream.simulator.rest_pki import DictPki, make_dict_pki
from vsync_stream.simulator.server import TokenBucket

__all__ = ["RestBridgeChain", "client_for"]


def client_for(simulator: RestDictSimulator, participant: str, pki: DictPki | None = None,
               **options: object) -> DictApiClient:
    """A :class:`DictApiClient` holding the participant's certificates of ``pki`` (the simulator's when
    None), pointed at a started simulator; ``options`` go to the client (``timeout_s``…)."""
    pki = pki or simulator.pki
    return DictApiClient(simulator.url, participant, tls_ca=pki.dict_ca.pem_path, tls_cert=pki.client_cert,
                         tls_key=pki.client_key, signing_cert=pki.participant_signing_cert,
                         signing_key=pki.participant_signing_key, verify_ca=pki.dict_ca.pem_path,
                         **options)  # type: ignore[arg-type]


class RestBridgeChain:
    """REST simulator + DICT API client + gRPC Bridge; ``await start()`` then give :attr:`target`.

    Args:
        model: the DICT's state.
        participant: the ISPB of the Bridge's certificates (``PI-RequestingParticipant`` default).
        pki_dir: where the throwaway certificates go.
        rate_limits: the simulator's buckets per operation (the DICT's when None).
        client_rate_limits: overrides of the Bridge's own pacing.
        cid_file_delay_s: seconds from a CID file request to AVAILABLE.
    """

    def __init__(self, model: DictModel, participant: str, pki_dir: str | Path, *,
                 rate_limits: Mapping[str, TokenBucket] | None = None,
                 client_rate_limits: Mapping[str, RateLimit | None] | None = None,
                 cid_file_delay_s: float = 0.5) -> None:
        self.pki = make_dict_pki(pki_dir)
        self.simulator = RestDictSimulator(model, self.pki, rate_limits=rate_limits, cid_file_delay_s=cid_file_delay_s)
        self._participant = participant
        self._client_rate_limits = client_rate_limits
        self.client: DictApiClient | None = None
        self.bridge: BridgeServer | None = None

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC Bridge."""
        assert self.bridge is not None, "RestBridgeChain is not started"
        return self.bridge.target

    async def start(self) -> str:
        """Start the three; returns :attr:`target`."""
        await self.simulator.start()
        self.client = client_for(self.simulator, self._participant, rate_limits=self._client_rate_limits)
        await self.client.start()
        self.bridge = BridgeServer(self.client)
        await self.bridge.start()
        return self.target

    async def stop(self) -> None:
        """Stop the three (the Bridge first)."""
        if self.bridge is not None:
            await self.bridge.stop()
        if self.client is not None:
            await self.client.stop()
        await self.simulator.stop()

    async def __aenter__(self) -> RestBridgeChain:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
