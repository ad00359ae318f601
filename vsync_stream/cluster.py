"""The worker's view of its consumer group: which worker owns each table partition, and reads that
span every partition whatever the assignment.

Entries are partitioned by Pix key, so each partition holds a part of every (participant, key type)
VSync. With several workers, the one that verifies (the *coordinator*: the owner of partition 0)
asks every owner for its partitions' ledgers and the offsets they reflect, and combines them
(DESIGN 3.4, invariant I4). Nothing is combined unless every partition answers from a recovered
owner of the same group generation; otherwise :class:`StateNotReady` says which partition or worker
is missing, and the web view answers 503 with ``Retry-After``.

Workers reach each other over their web views (``VSYNC_WEB_ADVERTISED_URL``) with the shared
``VSYNC_CLUSTER_TOKEN``, sent only to the URLs of ``VSYNC_CLUSTER_URLS`` (by default only to URLs of
this worker's own scheme and host): a URL in the group's assignment comes from whoever joined the
consumer group, and must not receive the token otherwise. ``https://`` URLs are verified against
``VSYNC_CLUSTER_TLS_CA``. The owner of a partition comes from Faust's assignor (the assignment
carries every member's URL); the partition of a Pix key is the Kafka default partitioner's
(murmur2 of the key bytes), the one the adapter's producer uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka.partitioner import murmur2
from yarl import URL

from vsync_stream.domain.keys import is_ispb
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.errors import StateNotReady
from vsync_stream.tables.entries import EntriesTable, PartitionReport

log = logging.getLogger(__name__)

MAX_HOPS = 2  # a routed request is forwarded at most this often (the owner may have moved meanwhile)
HOPS_HEADER = "X-Vsync-Hops"
SCOPES_HEADER = "X-Vsync-Scopes"
CID_BYTES = 32


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """A consistent cut of every partition of the table (invariant I4).

    ``ledger`` combines partitions 0..N-1, each read at one instant on its owner; ``offsets`` maps
    partition → the last key-events offset folded into it (None: nothing folded since the owner
    started); ``workers`` lists the advertised URLs that answered.
    """

    ledger: VSyncLedger
    offsets: dict[int, int | None]
    workers: list[str]


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A response relayed from another worker."""

    status: int
    body: bytes
    content_type: str
    retry_after: str | None


class Cluster:
    """Partition ownership and cluster-wide reads of the entries table.

    Args:
        faust_app: the worker's Faust app (its assignor knows the assignment and members' URLs).
        entries: the local entries table.
        partitions: partitions of the key-events topic and of the changelog.
        cluster_token: the shared worker-to-worker bearer token (None: this worker cannot reach others).
        timeout_s: timeout of one request to another worker, seconds.
    """

    def __init__(self, faust_app: Any, entries: EntriesTable, partitions: int, cluster_token: str | None,
                 timeout_s: float, cluster_urls: list[str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = faust_app
        self.entries = entries
        self.partitions = partitions
        self._token = cluster_token
        self.timeout_s = timeout_s
        self._allowed = frozenset(origin_of(url) for url in cluster_urls or ())
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()

    def may_receive_token(self, url: str) -> bool:
        """Tell whether the cluster token may be sent to the worker at ``url``.

        True when ``url``'s origin (scheme, host, port) is one of ``VSYNC_CLUSTER_URLS``; with that
        setting empty, when its scheme and host are this worker's own.
        """
        try:
            origin = origin_of(url)
        except ValueError:
            return False
        if self._allowed:
            return origin in self._allowed
        mine, theirs = URL(origin_of(self.self_url)), URL(origin)
        return (mine.scheme, mine.host) == (theirs.scheme, theirs.host)

    # -- ownership -----------------------------------------------------------------------------
    @property
    def self_url(self) -> str:
        """This worker's advertised URL."""
        return str(self.app.conf.canonical_url)

    def partition_of(self, key: bytes) -> int:
        """The partition of a Pix key: Kafka's default partitioner (murmur2), as the adapter produces."""
        return (murmur2(key) & 0x7FFFFFFF) % self.partitions

    def owners(self) -> dict[int, str]:
        """Partition → advertised URL of the worker holding it active, per the current assignment."""
        topic = self.entries.changelog_topic.get_topic_name()
        distribution = self.app.assignor.changelog_distribution or {}
        return {p: url for url, topics in distribution.items() for p in topics.get(topic, ())}

    def placement(self) -> dict[int, str]:
        """:meth:`owners`, for every partition 0..N-1.

        Raises:
            StateNotReady: some partition has no owner yet (the group is rebalancing).
        """
        owners = self.owners()
        missing = sorted(set(range(self.partitions)) - set(owners))
        if missing:
            raise StateNotReady(f"partitions {missing} have no owner yet: the consumer group is rebalancing")
        return owners

    def owner(self, partition: int) -> str:
        """The advertised URL of the owner of ``partition``.

        Raises:
            StateNotReady: the partition has no owner yet (the group is rebalancing).
        """
        url = self.owners().get(partition)
        if url is None:
            raise StateNotReady(f"partition {partition} has no owner yet: the consumer group is rebalancing")
        return url

    def is_self(self, url: str) -> bool:
        """True when ``url`` is this worker."""
        return url == self.self_url

    def coordinator(self) -> str:
        """The worker that runs verifications and reconciliations: the owner of partition 0."""
        return self.owner(0)

    def is_coordinator(self) -> bool:
        """True when this worker owns partition 0 (False while the group is rebalancing)."""
        try:
            return self.is_self(self.coordinator())
        except StateNotReady:
            return False

    # -- requests to other workers ------------------------------------------------------------
    def _headers(self, url: str, scopes: str = "", hops: int = 1) -> dict[str, str]:
        if self._token is None:
            raise StateNotReady("another worker holds this state, and VSYNC_CLUSTER_TOKEN is not set: "
                                "workers of one app id need the same cluster token to reach each other")
        if not self.may_receive_token(url):
            log.error("refusing to send the cluster token to %s: not one of VSYNC_CLUSTER_URLS", url,
                      extra={"peer": url})
            raise StateNotReady(f"the owner's URL {url} is not one of VSYNC_CLUSTER_URLS: the cluster token is not "
                                "sent there; list every worker's advertised URL in VSYNC_CLUSTER_URLS")
        return {"Authorization": f"Bearer {self._token}", SCOPES_HEADER: scopes, HOPS_HEADER: str(hops)}

    async def forward(self, url: str, method: str, path_qs: str, body: bytes, scopes: str, hops: int) -> Forwarded:
        """Relay a request to another worker with its body and the caller's scopes.

        Args:
            url: the worker's advertised URL.
            method: HTTP method.
            path_qs: path and query string of the original request.
            body: the original request body.
            scopes: the caller's scopes, comma-separated (trusted by the peer only with the cluster token).
            hops: how often the request was forwarded before (the peer refuses beyond ``MAX_HOPS``).

        Raises:
            StateNotReady: the worker did not answer (it may be restarting).
        """
        headers = self._headers(url, scopes, hops + 1)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            target = URL(url.rstrip("/") + path_qs, encoded=True)  # as received: no dot-segment collapsing
            async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                    method, target, data=body or None, headers=headers, ssl=self._ssl) as resp:
                return Forwarded(resp.status, await resp.read(), resp.content_type, resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StateNotReady(f"the owner {url} did not answer ({type(exc).__name__}); the assignment may be "
                                f"changing") from None

    async def _report(self, url: str) -> PartitionReport:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                    url.rstrip("/") + "/internal/partitions", headers=self._headers(url), ssl=self._ssl) as resp:
                if resp.status == 503:
                    raise StateNotReady(f"worker {url} is not ready: {(await resp.text())[:200]}")
                if resp.status != 200:
                    raise StateNotReady(f"worker {url} answered {resp.status} to /internal/partitions: "
                                        f"{(await resp.text())[:200]}")
                return PartitionReport.from_json(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise StateNotReady(f"worker {url} did not report its partitions ({type(exc).__name__}: {exc})") from None

    # -- cluster-wide reads --------------------------------------------------------------------
    async def snapshot(self) -> ClusterSnapshot:
        """Combine every partition's ledger, each read on its owner (invariant I4).

        Raises:
            StateNotReady: a partition has no owner, an owner is recovering or unreachable, or the
                assignment changed while the partitions were read (the message says which).
        """
        local = self.entries.report()
        if local.recovering:
            raise StateNotReady("table partitions are recovering on this worker; retry in a few seconds")
        owners = self.placement()
        reports = {self.self_url: local}
        others = sorted({url for url in owners.values() if not self.is_self(url)})
        for url, report in zip(others, await asyncio.gather(*[self._report(url) for url in others]), strict=True):
            reports[url] = report
        combined = VSyncLedger()
        offsets: dict[int, int | None] = {}
        for partition in range(self.partitions):
            url = owners[partition]
            report = reports[url]
            if report.recovering:
                raise StateNotReady(f"partition {partition} is recovering on {url}; retry in a few seconds")
            if report.generation != local.generation:
                raise StateNotReady(f"the assignment is changing (generation {report.generation} on {url}, "
                                    f"{local.generation} here); retry in a few seconds")
            state = report.partitions.get(partition)
            if state is None:
                raise StateNotReady(f"partition {partition} is not active on {url} yet; retry in a few seconds")
            combined.merge(state.ledger)
            offsets[partition] = state.offset
        if self.entries.generation != local.generation or self.entries.recovering:
            raise StateNotReady("the assignment changed while the partitions were read; retry in a few seconds")
        return ClusterSnapshot(combined, offsets, [self.self_url, *others])

    async def check_ready(self) -> None:
        """Raise :class:`StateNotReady` unless every partition has a recovered owner."""
        await self.snapshot()

    def _local_ready(self, partition: int) -> bool:
        return not self.entries.recovering and partition in self.entries.partition_states

    async def get_raw(self, key: bytes) -> bytes | None:
        """The stored row of a Pix key, read on the partition's owner (None: no such key).

        Raises:
            StateNotReady: the owner is recovering, unreachable, or the assignment is changing.
        """
        partition = self.partition_of(key)
        url = self.owner(partition)
        if self.is_self(url):
            if not self._local_ready(partition):
                raise StateNotReady(f"partition {partition} is recovering; retry in a few seconds")
            return self.entries.read(partition, key)
        reply = await self.forward(url, "GET", f"/internal/row/{partition}/{key.hex()}", b"", "", 0)
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise StateNotReady(f"the owner of partition {partition} answered {reply.status}")
        return reply.body

    # The two methods below run in a worker thread (the reconciler's table scans), so they talk to
    # other workers with blocking urllib calls, one request per remote partition.
    def _fetch(self, url: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(url.rstrip("/") + path, data=body, headers=self._headers(url),
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=max(self.timeout_s, 60.0),  # noqa: S310
                                        context=self._ssl) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            raise StateNotReady(f"worker {url} answered {exc.code} to {path.split('?')[0]}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise StateNotReady(f"worker {url} did not answer ({type(exc).__name__})") from None

    def pair_cids(self, participant: str, key_type: str) -> Iterator[str]:
        """Every active CID (64 lower-case hex) of one (participant, key type), over all partitions.

        Raises:
            StateNotReady: a partition's owner is recovering or unreachable (never a partial set).
        """
        for partition, url in sorted(self.placement().items()):
            if self.is_self(url):
                if not self._local_ready(partition):
                    raise StateNotReady(f"partition {partition} is recovering; retry later")
                yield from (cid for _key, cid in self.entries.pair_rows(partition, participant, key_type))
                continue
            quoted = urllib.parse.quote(f"{participant}/{key_type}", safe="")
            data = self._fetch(url, f"/internal/pair-cids/{partition}?pair={quoted}")
            for i in range(0, len(data), CID_BYTES):
                yield data[i:i + CID_BYTES].hex()

    def find_cids(self, wanted: Mapping[tuple[str, str], set[str]]) -> dict[tuple[str, str], dict[str, str]]:
        """The Pix keys holding given CIDs, over all partitions (see :meth:`EntriesTable.find_cids`).

        Raises:
            StateNotReady: a partition's owner is recovering or unreachable.
        """
        found: dict[tuple[str, str], dict[str, str]] = {pair: {} for pair in wanted}
        body = json.dumps({f"{p}/{t}": sorted(cids) for (p, t), cids in wanted.items()}).encode()
        for partition, url in sorted(self.placement().items()):
            if self.is_self(url):
                if not self._local_ready(partition):
                    raise StateNotReady(f"partition {partition} is recovering; retry later")
                part = self.entries.find_cids(dict(wanted), partitions=[partition])
            else:
                doc = json.loads(self._fetch(url, f"/internal/find-cids/{partition}", body))
                part = {tuple(pair.split("/", 1)): keys for pair, keys in doc.items()}  # type: ignore[misc]
            for pair, keys in part.items():
                found[pair].update(keys)
        return found


def origin_of(url: str) -> str:
    """The origin ``scheme://host:port`` of a worker URL (lower case, explicit port), as compared for the token.

    Raises:
        ValueError: not an absolute ``http://`` or ``https://`` URL.
    """
    parsed = URL(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r} is not an http:// or https:// URL of a worker's web view")
    return f"{parsed.scheme}://{parsed.host.lower()}:{parsed.port}"


def parse_pair_cids_query(pair: str) -> tuple[str, str]:
    """``"<participant>/<key type>"`` → (participant, key type); ValueError when malformed."""
    participant, _, key_type = pair.partition("/")
    if not is_ispb(participant) or not key_type:
        raise ValueError("pair must be <participant>/<key type>, the participant an 8-digit ISPB")
    return participant, key_type


def local_pair_cids(entries: EntriesTable, partition: int, participant: str, key_type: str) -> bytes:
    """The active CIDs of one pair in one local partition, 32 raw bytes each (``/internal/pair-cids``)."""
    return b"".join(bytes.fromhex(cid) for _key, cid in entries.pair_rows(partition, participant, key_type))

