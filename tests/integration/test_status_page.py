"""The status page in a real browser: headless Chromium loads ``/status`` from a running worker.

Chromium runs the page's script (``--virtual-time-budget`` lets its fetches finish), then
``--dump-dom`` gives the DOM as the script left it and ``--screenshot`` a picture of it, kept in
``.local/artifacts/`` (``status.png``: after a verification and a reconciliation;
``status-reconciling.png``: while a reconciliation runs). Chromium is Debian's package: without it
the test fails and says what to install.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import REPO, Pipeline, PipelineFactory
from vsync_stream.cli import request_verification
from vsync_stream.simulator.population import generate_entries

pytestmark = pytest.mark.integration

P1, P2 = "12345678", "00000208"
KEY_TYPES = ("CPF", "CNPJ", "PHONE", "EMAIL", "EVP")
ARTIFACTS = REPO / ".local" / "artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def chromium() -> str:
    """Path of Debian's Chromium; fails the test (never skips) when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to test the status page: `apt-get install -y chromium` "
                "(Debian's package; .ci/run installs it)")


async def render(url: str, screenshot: Path, profile: Path, budget_ms: int = 5000) -> str:
    """Load ``url`` in headless Chromium; save a screenshot and return the DOM after the scripts ran."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1250",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={screenshot}", "--dump-dom", url]
    # In a thread: the DICT simulator serves the worker from this test's event loop meanwhile.
    proc = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    assert screenshot.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    return proc.stdout


class Dom(HTMLParser):
    """The elements of a dumped DOM that carry ``data-*`` attributes or a role, with their text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self._stack: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "br", "input", "img", "link"):
            return  # void elements never close
        attributes = {k: v or "" for k, v in attrs}
        self._stack.append(tag)
        if any(k.startswith("data-") or k == "role" for k in attributes) or "id" in attributes:
            element = {"tag": tag, "attrs": attributes, "text": "", "depth": len(self._stack)}
            self.found.append(element)
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        depth = len(self._stack)
        self._open = [e for e in self._open if e["depth"] < depth]
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data

    def with_attr(self, name: str, value: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.found if name in e["attrs"] and (value is None or e["attrs"][name] == value)]


async def get_json(pipeline: Pipeline, path: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{pipeline.worker.base_url}{path}") as resp:
            assert resp.status == 200, f"{path} answered {resp.status}"
            return await resp.json()


async def wait_for_run(pipeline: Pipeline, run_id: str, done: Any, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = await get_json(pipeline, f"/reconciliations/{run_id}")
        if done(run):
            return run
        await asyncio.sleep(0.3)
    raise AssertionError(f"reconciliation {run_id} did not get there in {timeout_s} s: {run}")


async def test_status_page_shows_pairs_reconciliations_and_history_in_a_browser(
        pipeline_factory: PipelineFactory, tmp_path: Path) -> None:
    chromium()  # fail first, and fast, when the browser is missing
    pipeline = await pipeline_factory(env_extra={"VSYNC_AUTO_RECONCILE": "false"})
    population = list(generate_entries(400, [P1, P2], seed=21))
    await pipeline.publish([pipeline.model.create(e) for e in population])
    await pipeline.worker.wait_handled(pipeline.published, timeout_s=300)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}

    # The DICT gains 12 PHONE keys of P2 behind the pipeline's back: that pair answers NOK.
    extra = [e for e in generate_entries(300, [P2], seed=99) if e.key_type == "PHONE"][:12]
    for entry in extra:
        pipeline.model.tamper_create(entry)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert [(r["participant"], r["keyType"]) for r in rows if r["result"] != "OK"] == [(P2, "PHONE")]

    # A slow DICT keeps the reconciliation running long enough to be seen.
    pipeline.simulator.latency_s = 2.0
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{pipeline.worker.base_url}/reconcile",
                                headers={"Authorization": f"Bearer {pipeline.token}"},
                                json={"participant": P2, "keyType": "PHONE"}) as resp:
            assert resp.status == 202
            run_id = (await resp.json())["id"]
    await wait_for_run(pipeline, run_id, lambda r: r["phase"].startswith("fetching") and r["progress"]["done"] >= 1)
    url = f"{pipeline.worker.base_url}/status"
    dom = Dom(await render(url, ARTIFACTS / "status-reconciling.png", tmp_path / "chromium-1"))
    running = [e for e in dom.with_attr("data-reconciliation", run_id) if "data-phase" in e["attrs"]]
    assert len(running) == 1, "the running reconciliation is not on the page"
    assert running[0]["attrs"]["data-phase"].startswith("fetching the DICT's entries by CID")
    bars = [e for e in dom.with_attr("role", "progressbar") if e["attrs"].get("aria-valuemax") == "12"]
    assert len(bars) == 1 and 1 <= int(bars[0]["attrs"]["aria-valuenow"]) <= 12

    pipeline.simulator.latency_s = 0.0
    run = await wait_for_run(pipeline, run_id, lambda r: r["finishedAt"] is not None)
    assert run["result"] == "OK" and run["added"] == 12

    dom = Dom(await render(url, ARTIFACTS / "status.png", tmp_path / "chromium-2"))
    assert dom.with_attr("data-state", "rendered"), "the page's script did not finish rendering"
    pairs = {(e["attrs"]["data-participant"], e["attrs"]["data-key-type"]): e
             for e in dom.with_attr("data-participant")}
    assert set(pairs) == {(p, t) for p in (P1, P2) for t in KEY_TYPES}
    for (participant, key_type), row in pairs.items():
        count = pipeline.model.count(participant, key_type)
        assert row["attrs"]["data-result"] == "OK", (participant, key_type)
        assert row["attrs"]["data-entries"] == str(count)
        assert f"{count:,}" in row["text"] and "OK" in row["text"], row["text"]
        assert pipeline.model.vsync(participant, key_type)[:8] in row["text"]  # the VSync, abbreviated
    assert not dom.with_attr("data-phase"), "a reconciliation still shows as running"
    recent = [e for e in dom.with_attr("data-reconciliation", run_id)]
    assert len(recent) == 1 and "OK" in recent[0]["text"] and "+12" in recent[0]["text"]

    # The history chart: one dot per verification, the NOK among them.
    history = (await get_json(pipeline, "/verifications?limit=500"))["verifications"]
    dots = [e for e in dom.found if e["tag"] == "circle"]
    assert len(dots) == len(history) == 21  # two rounds of 10 pairs, and the reconciliation's own
    assert sorted(d["attrs"]["data-result"] for d in dots) == sorted(v["result"] for v in history)
    assert any(d["attrs"]["data-result"] == "NOK" for d in dots)

    # /metrics tells the same story as the page, from the same worker.
    await assert_metrics_agree(pipeline, run_id)


async def scrape(pipeline: Pipeline) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The worker's /metrics as {(sample name, labels): value}."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{pipeline.worker.base_url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def assert_metrics_agree(pipeline: Pipeline, run_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:  # the consumer learns the end offsets from its fetches: lag reaches 0 shortly
        samples = await scrape(pipeline)
        lags = {dict(labels)["partition"]: v for (name, labels), v in samples.items()
                if name == "vsync_consumer_lag_messages"}
        if (lags and set(lags.values()) == {0}) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert lags == {"0": 0, "1": 0, "2": 0, "3": 0}

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("vsync_table_recovering") == 0 and value("vsync_table_active_partitions") == 4
    for participant in (P1, P2):
        for key_type in KEY_TYPES:
            pair = {"participant": participant, "key_type": key_type}
            assert value("vsync_entries", **pair) == pipeline.model.count(participant, key_type)
            assert value("vsync_vsync_known", **pair) == 1
            assert value("vsync_last_verification_result", **pair, result="OK") == 1
            assert value("vsync_last_verification_result", **pair, result="NOK") == 0
            assert (value("vsync_last_ok_timestamp_seconds", **pair) or 0) > time.time() - 600
    assert value("vsync_reconciliations_total", path="cheap", result="OK") == 1
    assert value("vsync_corrections_total", kind="add") == 12
    assert value("vsync_reconciliations_running") == 0
    assert (value("vsync_bridge_request_duration_seconds_count", method="VerifySync") or 0) >= 21
    assert (value("vsync_bridge_request_duration_seconds_count", method="GetEntryByCid") or 0) >= 12
    assert not [k for k in samples if k[0] == "vsync_bridge_errors_total"]  # no Bridge call failed
    assert 0 < (value("vsync_bridge_rate_limit_tokens", method="GetEntryByCid") or 0) <= 36_000
