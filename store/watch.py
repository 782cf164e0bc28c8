"""WatchSeries: the event log as an ordered, resumable stream, woken by LISTEN/NOTIFY.

Each store process keeps one PostgreSQL connection that LISTENs on store.events.CHANNEL;
every commit that writes events NOTIFYs it, from any store replica, and `EventSignal`
wakes every watcher of this process. A watcher reads the log in cursor order from its
position (one snapshot per page, see store.events.read), sends what matches its filters,
moves its position to the page's end, and when it has reached the log's end waits for the
next signal. Were the LISTEN connection lost, watchers poll every second until it is back.

A consumer's cursor stays valid as long as retention has not deleted the events after it;
a watcher that falls behind the pruned point, or asks for a cursor beyond the log's end,
gets OUT_OF_RANGE with what to do. At shutdown watchers end with UNAVAILABLE naming the
cursor to resume from, so a client reconnects (to another replica) and goes on. Each call's
initial metadata carries START_CURSOR_KEY, the position it starts after: a client that
asked "from now" and lost the call before any event resumes from there, missing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import grpc
import psycopg

from seriesflow.store import events, queries
from seriesflow.store.database import Database, libpq_url
from seriesflow.store.errors import DatabaseUnavailable, StoreError
from seriesflow.store.grpc_status import GRPC_STATUS
from seriesflow.store.metrics import StoreMetrics
from seriesflow.store.vocabulary import REASON_TO_PB, STATUS_TO_PB
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

# Events of the log one read covers (matching or not); bounds a page's rows and memory.
PAGE_SPAN: Final = 500
# How long a caught-up watcher waits for a signal before reading anyway: a safety net only.
_WAIT_LISTENING: Final = 10.0
_WAIT_POLLING: Final = 1.0
_CONSUMER_MAX: Final = 64
_CURSOR_MAX: Final = 2**63 - 1
_PRUNE_BATCH: Final = 10_000
START_CURSOR_KEY: Final = "seriesflow-start-cursor"

KIND_TO_PB: Final[dict[str, pb.SeriesEventKind]] = {
    "CREATED": pb.SERIES_EVENT_KIND_CREATED,
    "INSTANCES_ADDED": pb.SERIES_EVENT_KIND_INSTANCES_ADDED,
    "COMPLETED": pb.SERIES_EVENT_KIND_COMPLETED,
    "REOPENED": pb.SERIES_EVENT_KIND_REOPENED,
}
KIND_FROM_PB: Final = {value: text for text, value in KIND_TO_PB.items()}


class WatchRefused(Exception):
    """The request cannot be served as asked; `code` and the message say why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class EventSignal:
    """Wakes waiting watchers whenever any store replica commits events."""

    def __init__(self, url: str) -> None:
        self._url = libpq_url(url)
        self._event = asyncio.Event()
        self.listening = False
        self.log_end = 0  # the highest cursor a notification announced

    def current(self) -> asyncio.Event:
        """The event the next signal sets: take it before reading, wait on it after, and
        no signal in between is missed."""
        return self._event

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def run(self) -> None:
        """LISTEN until cancelled, reconnecting with backoff."""
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name="seriesflow-store-listen",
                )
            except (psycopg.Error, OSError) as exc:
                _log.debug("event listener cannot connect", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            notices = conn.notifies()
            try:
                await conn.execute(f"LISTEN {events.CHANNEL}")
                self.listening = True
                delay = 0.5
                self._wake()  # anything committed while not listening is read now
                async for notice in notices:
                    if notice.payload.isdigit():
                        self.log_end = max(self.log_end, int(notice.payload))
                    self._wake()
            except (psycopg.Error, OSError) as exc:
                _log.warning(
                    "event listener lost its connection; watchers poll until it is back",
                    extra={"fields": {"error": str(exc)}},
                )
            finally:
                self.listening = False
                # The generator holds the connection's lock while it waits: close it first,
                # or closing the connection (at shutdown, on cancel) waits for ever.
                with contextlib.suppress(Exception):
                    await notices.aclose()
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(delay)

    async def wait(self, event: asyncio.Event, stop: asyncio.Event) -> None:
        timeout = _WAIT_LISTENING if self.listening else _WAIT_POLLING
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()


@dataclass(frozen=True)
class Request:
    after: int | None  # None: from now
    filters: events.Filters
    consumer: str


def parse_request(request: pb.WatchSeriesRequest) -> Request:
    """The request's fields checked; WatchRefused(INVALID_ARGUMENT) names a bad one."""
    text = request.after_cursor.strip()
    after: int | None = None
    if text:
        if not text.isdigit() or not text.isascii() or int(text) > _CURSOR_MAX:
            raise WatchRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"after_cursor: {text[:40]!r} is not a cursor (decimal digits, as in "
                "SeriesEvent.cursor); leave it empty to watch from now",
            )
        after = int(text)
    kinds = []
    for kind in request.kinds:
        if kind == pb.SERIES_EVENT_KIND_UNSPECIFIED:
            continue
        if kind not in KIND_FROM_PB:
            raise WatchRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"kinds: unknown value {kind}; known: {', '.join(sorted(KIND_TO_PB))}",
            )
        kinds.append(KIND_FROM_PB[kind])
    for name in ("modality", "calling_ae_title", "consumer"):
        if "\0" in getattr(request, name):
            raise WatchRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"{name}: contains a NUL character"
            )
    if len(request.consumer) > _CONSUMER_MAX:
        raise WatchRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"consumer: {len(request.consumer)} characters; at most {_CONSUMER_MAX}",
        )
    return Request(
        after,
        events.Filters(tuple(sorted(set(kinds))), request.modality, request.calling_ae_title),
        request.consumer or "unnamed",
    )


def event_message(row: dict[str, Any]) -> pb.SeriesEvent:
    series = queries.series_message(row)
    # As of the event, not as of now (see SeriesEvent.series).
    series.num_instances = row["event_num_instances"]
    series.status = STATUS_TO_PB[row["event_status"]]
    message = pb.SeriesEvent(
        cursor=str(row["cursor"]),
        kind=KIND_TO_PB[row["kind"]],
        completion_version=row["event_version"],
        completion_reason=REASON_TO_PB[row["event_reason"]],
        completion_detail=row["event_detail"],
        instances_added=row["instances_added"],
        series=series,
    )
    message.occurred_at.FromDatetime(row["occurred_at"])
    return message


class Watchers:
    """Serves WatchSeries calls of one store process."""

    def __init__(
        self,
        db: Database,
        signal: EventSignal,
        metrics: StoreMetrics,
        draining: asyncio.Event,
        retention_seconds: int,
    ) -> None:
        self._db = db
        self._signal = signal
        self._metrics = metrics
        self._draining = draining
        self._retention = retention_seconds
        # Each open watch's consumer name and position; the lag gauge reads them at scrape
        # time against the log's end, so a consumer that stopped reading shows its lag grow.
        self._positions: dict[object, tuple[str, int]] = {}
        self._log_end = 0
        # Unfiltered reads of the log's head in flight, by position: watchers that are
        # caught up wake together at each commit and share one query (filters applied here).
        self._head_reads: dict[int, asyncio.Task[events.Page]] = {}

    async def stream(
        self,
        request: pb.WatchSeriesRequest,
        started: Callable[[int], Awaitable[None]] | None = None,
    ) -> AsyncIterator[pb.SeriesEvent]:
        """The events for `request`; raises WatchRefused to end the call with a status.
        `started` is told the position the watch starts after (before any event)."""
        asked = parse_request(request)
        self._metrics.watchers.inc()
        me = object()
        try:
            bounds = await self._run(events.bounds)
            position = self._start(asked.after, bounds)
            self._track(me, asked.consumer, position, bounds.last_cursor)
            if started is not None:
                await started(position)
            live = asked.after is None
            while True:
                wake = self._signal.current()
                if live:
                    page = _matching(await self._read_head(position), asked.filters)
                else:
                    page = await self._run(
                        lambda conn, p=position: events.read(conn, p, PAGE_SPAN, asked.filters)
                    )
                if page.bounds.pruned_through > position:
                    raise self._pruned(position, page.bounds)
                now = time.time()
                for row in page.rows:
                    message = event_message(row)
                    if live:
                        self._metrics.event_delivery.observe(
                            max(0.0, now - row["occurred_at"].timestamp())
                        )
                    yield message
                    self._track(me, asked.consumer, row["cursor"], page.bounds.last_cursor)
                position = page.end
                self._track(me, asked.consumer, position, page.bounds.last_cursor)
                if position < page.bounds.last_cursor:
                    continue  # more to replay
                live = True
                if self._draining.is_set():
                    raise self._shutting_down(position)
                await self._signal.wait(wake, self._draining)
                if self._draining.is_set():
                    raise self._shutting_down(position)
        finally:
            self._metrics.watchers.dec()
            self._positions.pop(me, None)
            if all(name != asked.consumer for name, _ in self._positions.values()):
                with contextlib.suppress(KeyError):
                    self._metrics.watch_lag.remove(asked.consumer)

    def _track(self, watch: object, consumer: str, position: int, log_end: int) -> None:
        first = all(name != consumer for name, _ in self._positions.values())
        self._positions[watch] = (consumer, position)
        self._log_end = max(self._log_end, log_end)
        if first:
            self._metrics.watch_lag.labels(consumer=consumer).set_function(
                lambda: self._lag(consumer)
            )

    def _lag(self, consumer: str) -> float:
        """Events committed that this consumer's furthest-behind watch was not yet sent."""
        end = max(self._log_end, self._signal.log_end)
        behind = [end - p for name, p in self._positions.values() if name == consumer]
        return float(max(behind, default=0))

    async def _read_head(self, position: int) -> events.Page:
        task = self._head_reads.get(position)
        if task is None:
            task = asyncio.ensure_future(
                self._run(lambda conn: events.read(conn, position, PAGE_SPAN, _EVERYTHING))
            )
            self._head_reads[position] = task
            task.add_done_callback(lambda _: self._head_reads.pop(position, None))
        # Shielded: one watcher leaving must not cancel the read the others wait for.
        page: events.Page = await asyncio.shield(task)
        return page

    async def _run(self, fn: Any) -> Any:
        try:
            if not self._db.up:
                raise DatabaseUnavailable("PostgreSQL is unavailable (health probe failing)")
            return await self._db.run(fn)
        except StoreError as exc:
            raise WatchRefused(
                GRPC_STATUS[type(exc)], f"{exc}; reconnect and resume from your last cursor"
            ) from exc

    def _start(self, after: int | None, bounds: events.Bounds) -> int:
        if after is None:
            return bounds.last_cursor
        if after > bounds.last_cursor:
            raise WatchRefused(
                grpc.StatusCode.OUT_OF_RANGE,
                f"after_cursor {after} is beyond the event log's last cursor "
                f"{bounds.last_cursor}: it comes from another database (was it replaced or "
                "restored?). Resync from ListSeries, then watch with an empty after_cursor",
            )
        if after < bounds.pruned_through:
            raise self._pruned(after, bounds)
        return after

    def _pruned(self, after: int, bounds: events.Bounds) -> WatchRefused:
        kept = dt.timedelta(seconds=self._retention) if self._retention else "forever"
        return WatchRefused(
            grpc.StatusCode.OUT_OF_RANGE,
            f"events after cursor {after} up to {bounds.pruned_through} were deleted by "
            f"retention (SERIESFLOW_EVENT_RETENTION keeps {kept}): resync from ListSeries, "
            f"then resume with after_cursor={bounds.pruned_through}",
        )

    def _shutting_down(self, position: int) -> WatchRefused:
        return WatchRefused(
            grpc.StatusCode.UNAVAILABLE,
            "the store is shutting down; reconnect (to another replica) and resume with "
            f"after_cursor={position}",
        )


_EVERYTHING: Final = events.Filters((), "", "")


def _matching(page: events.Page, filters: events.Filters) -> events.Page:
    """`page` with only the rows `filters` match (the SQL read's filters, in Python)."""
    rows = [
        r
        for r in page.rows
        if (not filters.kinds or r["kind"] in filters.kinds)
        and (not filters.modality or r["modality"] == filters.modality)
        and (not filters.calling_ae_title or r["source_ae_title"] == filters.calling_ae_title)
    ]
    return events.Page(rows, page.end, page.bounds)


async def prune_forever(db: Database, metrics: StoreMetrics, retention_seconds: int) -> None:
    """Delete events older than the retention, in batches, every minute or so."""
    interval = max(1.0, min(60.0, retention_seconds / 10))
    while True:
        try:
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=retention_seconds)
            deleted = _PRUNE_BATCH
            while deleted == _PRUNE_BATCH:
                deleted = await db.run(partial(events.prune, older_than=cutoff, batch=_PRUNE_BATCH))
                metrics.events_pruned.inc(deleted)
        except StoreError as exc:
            _log.debug("event pruning skipped", extra={"fields": {"error": str(exc)}})
        await asyncio.sleep(interval)
