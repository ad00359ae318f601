"""Multi-message Bridge operations: downloading a CID file and walking the CID event log.

Both are async iterators returned by :class:`~vsync_stream.bridges.dict_bridge.BridgeClient`
(``download_cid_file``, ``iter_cid_events``); they keep what they learn on the way (size and
SHA-256 of the file; pages read and the VSync after the last event) as attributes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc

from vsync_stream.bridges.bridge_proto import CidEvent, CidEventsPage, map_rpc_error, normalise_sha256
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.domain.cid import normalise_cid
from vsync_stream.errors import BridgeError, CidFileCorrupt

if TYPE_CHECKING:
    from vsync_stream.bridges.dict_bridge import BridgeClient

__all__ = ["CID_LINE_BYTES", "CidEventsWalk", "CidFileDownload"]

CID_LINE_BYTES = 65  # DESIGN 2.6: 64 hex chars and "\n" per CID

ListPage = Callable[[str, str, datetime, datetime | None, int], Awaitable[CidEventsPage]]


class CidFileDownload:
    """Async iterator over the byte chunks of one CID file download (see ``download_cid_file``).

    Opening the stream is paced and retried like a unary call; once data flows, an error ends the
    download (start it again). ``byte_size`` (bytes) and ``sha256`` (64 lower-case hex) are set from
    the first message; ``received`` counts the bytes so far.

    Raises (while iterating):
        BridgeNotFound: no such job.
        CidFileCorrupt: the content does not match the announced (or expected) size or SHA-256, or
            (:meth:`cids`) a line is not a CID.
        BridgeError: the job is not AVAILABLE, the stream broke, or the first message is malformed.
        RateLimited, BridgeUnavailable: as for unary calls.
    """

    def __init__(self, client: BridgeClient, job_id: str, *, expected_byte_size: int | None = None,
                 expected_sha256: str | None = None) -> None:
        self._client = client
        self.job_id = job_id
        self.expected_byte_size = expected_byte_size
        self.expected_sha256 = normalise_sha256(expected_sha256) if expected_sha256 is not None else None
        self.byte_size: int | None = None
        self.sha256: str | None = None
        self.received = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _open(self) -> tuple[Any, Any]:
        client, operation = self._client, "DownloadCidFile"
        request = pb.DownloadCidFileRequest(job_id=self.job_id)
        async for attempt in client.retrying(operation):
            with attempt:
                await client.pacer.acquire(operation)
                call = client.stub.DownloadCidFile(request, timeout=client.download_deadline_s)
                try:
                    return call, await call.read()
                except grpc.aio.AioRpcError as exc:
                    call.cancel()
                    raise map_rpc_error(exc, operation) from exc
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _check_header(self, first: Any) -> None:
        if first is grpc.aio.EOF:
            raise BridgeError(f"Bridge DownloadCidFile sent nothing for CID file {self.job_id}")
        try:
            self.sha256 = normalise_sha256(first.sha256)
        except ValueError as exc:
            raise BridgeError(f"Bridge DownloadCidFile announced a malformed SHA-256: {exc}") from exc
        self.byte_size = first.byte_size
        if self.expected_byte_size is not None and self.byte_size != self.expected_byte_size:
            raise CidFileCorrupt(f"CID file {self.job_id}: the download announces {self.byte_size} bytes, the job "
                                 f"status said {self.expected_byte_size}; download it again")
        if self.expected_sha256 is not None and self.sha256 != self.expected_sha256:
            raise CidFileCorrupt(f"CID file {self.job_id}: the download announces another SHA-256 than the job "
                                 "status; download it again")

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        call, message = await self._open()
        try:
            self._check_header(message)
            digest = hashlib.sha256()
            while message is not grpc.aio.EOF:
                if message.data:
                    self.received += len(message.data)
                    if self.received > (self.byte_size or 0):
                        raise CidFileCorrupt(f"CID file {self.job_id} is longer than the {self.byte_size} bytes "
                                             "announced; download it again")
                    digest.update(message.data)
                    yield message.data
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError as exc:
                    raise map_rpc_error(exc, "DownloadCidFile") from exc
            if self.received != self.byte_size:
                raise CidFileCorrupt(f"CID file {self.job_id} is truncated: got {self.received} of "
                                     f"{self.byte_size} bytes; download it again")
            if digest.hexdigest() != self.sha256:
                raise CidFileCorrupt(f"CID file {self.job_id} does not match its SHA-256; download it again")
        finally:
            call.cancel()

    async def cids(self) -> AsyncIterator[str]:
        """The CIDs of the file, one per line, lower-cased (the DICT may send upper-case hex).

        Yields:
            64 lower-case hex chars per CID, in file order (which means nothing: no order).

        Raises:
            CidFileCorrupt: a line is not 64 hex chars, or the file does not end with a newline
                (plus everything iterating the chunks raises).
        """
        rest, line_no = b"", 0
        async with aclosing(self._chunks()) as chunks:  # ends the gRPC call at once if we stop early
            async for chunk in chunks:
                lines = (rest + chunk if rest else chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    line_no += 1
                    try:
                        yield normalise_cid(line.decode("ascii"))
                    except (UnicodeDecodeError, ValueError) as exc:
                        raise CidFileCorrupt(f"CID file {self.job_id}, line {line_no}: not a CID ({exc})") from exc
        if rest:
            raise CidFileCorrupt(f"CID file {self.job_id} does not end with a newline after line {line_no}")


class CidEventsWalk:
    """Async iterator over every CID event in a time range, across pages, each event once.

    The DICT's start time is inclusive, so each page begins with the events at the previous page's
    last timestamp again (BCB DICT API, "Eventos de CIDs"). Within one timestamp the DICT keeps its
    log order, so the walk drops, on each new page, as many copies of each (cid, type) at that
    timestamp as the previous page had — exact even when one CID is added, removed and added again
    within a timestamp.

    Attributes:
        pages: pages read so far.
        duplicates: boundary events dropped so far.
        vsync_after_first: the DICT's VSync after the first event of the range (None when empty).
        vsync_after_last: the DICT's VSync after the last event read so far (None when empty).

    Raises (while iterating):
        BridgeError: a page is out of order or empty yet "has more", or a whole page of events shares
            one timestamp (the log cannot be paged past it: use the CID file).
        ValueError, RateLimited, BridgeUnavailable: as ``list_cid_events``.
    """

    def __init__(self, list_page: ListPage, participant: str, key_type: str, since: datetime,
                 until: datetime | None, page_size: int) -> None:
        self._list_page = list_page
        self.participant = participant
        self.key_type = key_type
        self.since = since
        self.until = until
        self.page_size = page_size
        self.pages = 0
        self.duplicates = 0
        self.vsync_after_first: str | None = None
        self.vsync_after_last: str | None = None

    def __aiter__(self) -> AsyncIterator[CidEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[CidEvent]:
        start = self.since
        seen_at_start: Counter[tuple[str, str]] = Counter()  # (cid, type) read at ``start`` already
        while True:
            page = await self._list_page(self.participant, self.key_type, start, self.until, self.page_size)
            self.pages += 1
            events = page.events
            if not events:
                if page.has_more_elements:
                    raise BridgeError("Bridge ListCidEvents answered an empty page that 'has more elements'")
                return
            self._check_order(events, start)
            if self.vsync_after_first is None:
                self.vsync_after_first = page.vsync_after_first
            self.vsync_after_last = page.vsync_after_last
            pending = seen_at_start.copy()
            fresh = 0
            for event in events:
                identity = (event.cid, event.type)
                if event.timestamp == start and pending[identity] > 0:
                    pending[identity] -= 1
                    self.duplicates += 1
                    continue
                fresh += 1
                yield event
            if not page.has_more_elements:
                return
            if fresh == 0:
                raise BridgeError(
                    f"{self.page_size} or more CID events of {self.participant}/{self.key_type} share the "
                    f"timestamp {start.isoformat()}, so the event log cannot be paged past it; reconcile with "
                    "the CID file instead (BACEN's full path)")
            start = events[-1].timestamp
            seen_at_start = Counter((e.cid, e.type) for e in events if e.timestamp == start)

    @staticmethod
    def _check_order(events: list[CidEvent], start: datetime) -> None:
        previous = start
        for event in events:
            if event.timestamp < previous:
                raise BridgeError("Bridge ListCidEvents answered events out of order or before the start time")
            previous = event.timestamp
