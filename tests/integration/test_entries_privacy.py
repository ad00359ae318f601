"""``/entries`` is no oracle of who holds a key, lookups are audited, workers talk HTTPS (issue #14, item 8).

Two real workers serve their web views over TLS (a throwaway CA); a lookup reaching the worker that
does not own the key's partition is relayed to the owner over HTTPS with the cluster token, which
goes only to the configured cluster URLs. Without the ``pii`` scope a key held by a participant the
workers do not serve answers exactly as an absent key.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from tests.integration.conftest import PipelineFactory
from tests.tls_certs import TestPki
from vsync_stream.domain.keys import KeyType
from vsync_stream.domain.masking import mask_key
from vsync_stream.simulator.population import PopulationGenerator
from vsync_stream.worker_process import WorkerProcess, free_port

pytestmark = pytest.mark.integration

P1, P2, OTHER = "12345678", "00000208", "60701190"  # the workers serve P1 and P2 only


async def get(session: aiohttp.ClientSession, url: str, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_entries_without_pii_answer_only_for_the_participants_served_over_https(
        pipeline_factory: PipelineFactory, pki: TestPki, tmp_path: Path) -> None:
    ports = free_port(), free_port()
    urls = [f"https://127.0.0.1:{port}" for port in ports]
    cluster_token, reader, pii = secrets.token_urlsafe(24), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    tls = {"VSYNC_WEB_TLS_CERT": str(pki.server_cert), "VSYNC_WEB_TLS_KEY": str(pki.server_key),
           "VSYNC_CLUSTER_TLS_CA": str(pki.ca), "VSYNC_CLUSTER_URLS": ",".join(urls),
           "VSYNC_CLUSTER_TOKEN": cluster_token, "VSYNC_STANDBY_REPLICAS": "0"}
    pipeline = await pipeline_factory(participants=[P1, P2], partitions=4, start=False, env_extra=tls)
    pipeline.env["VSYNC_API_TOKENS"] += f",{reader}=entries,{pii}=entries+pii"
    workers = []
    for name, port, url in zip(("w1", "w2"), ports, urls, strict=True):
        env = dict(pipeline.env, VSYNC_WEB_PORT=str(port), VSYNC_WEB_ADVERTISED_URL=url,
                   VSYNC_DATA_DIR=f"{pipeline.env['VSYNC_DATA_DIR']}-{name}")
        worker = WorkerProcess(env, tmp_path / f"{pipeline.run_id}-{name}.log")
        worker.base_url = url
        pipeline.extra_workers.append(worker)
        worker.start()
        workers.append(worker)

    generator = PopulationGenerator([P1, P2, OTHER], seed=8)
    ours = [generator.entry(key_type=t, participant=P1) for t in ("CPF", "PHONE", "EMAIL")]
    theirs = [generator.entry(key_type=t, participant=OTHER) for t in ("CPF", "PHONE", "EMAIL")]
    absent = [generator.entry(key_type=t, participant=P2) for t in ("CPF", "PHONE", "EMAIL")]
    filler = [generator.entry() for _ in range(200)]
    await pipeline.publish([pipeline.model.create(e) for e in ours + theirs + filler])

    context = ssl.create_default_context(cafile=str(pki.ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     timeout=aiohttp.ClientTimeout(total=15)) as session:
        # Both workers up, over HTTPS, and combining each other's partitions (worker-to-worker TLS).
        for _ in range(240):
            try:
                status, doc = await get(session, f"{urls[0]}/vsync", None)
                if status == 200 and len(doc["workers"]) == 2 and sum(  # type: ignore[arg-type]
                        r["entries"] for r in doc["vsync"]) == len(ours) + len(filler) - sum(  # type: ignore[union-attr]
                        e.participant == OTHER for e in filler):
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"the workers did not serve every entry over HTTPS; logs {tmp_path}")

        for entry in ours:  # from either worker: one of them relays to the owner over HTTPS
            for url in urls:
                status, doc = await get(session, f"{url}/entries/{quote(entry.key, safe='')}", reader)
                assert status == 200, doc
                assert doc["participant"] == P1 and doc["key"] == mask_key(entry.key_type, entry.key)
        for url in urls:
            answers = set()
            for entry in theirs + absent:
                status, doc = await get(session, f"{url}/entries/{quote(entry.key, safe='')}", reader)
                answers.add((status, str(doc)))
            assert answers == {(404, str({"error": "no such key"}))}, answers
            for entry in theirs:  # with pii the operator sees the row
                status, doc = await get(session, f"{url}/entries/{quote(entry.key, safe='')}", pii)
                assert status == 200 and doc["participant"] == OTHER and doc["key"] == entry.key

    # Plain HTTP is not served.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        with pytest.raises(aiohttp.ClientError):
            await get(session, urls[0].replace("https", "http") + "/healthz", None)

    # Every lookup is audited where it arrived: who, the masked key, the answer; never the key itself.
    for worker in workers:
        worker.stop()
    logs = "".join(w.log_path.read_text("utf-8", errors="replace") for w in workers)
    audited = [line for line in logs.splitlines() if "entry lookup by" in line]
    assert len(audited) == 2 * len(ours) + 2 * len(theirs + absent) + 2 * len(theirs)
    assert any(f"by VSYNC_API_TOKENS item 2: CPF key {mask_key(KeyType.CPF, theirs[0].key)} answered 404" in line
               for line in audited)
    for entry in ours + theirs + absent:
        if entry.key_type != "EVP":
            assert entry.key not in logs
