"""One StoreSeries stream: read updates, group-commit them, ack each after its commit.

A reader task validates updates as they arrive and queues them (a bounded queue: when the
database is slower than the sender, gRPC flow control pushes back). A dispatcher takes
everything waiting, up to the batch limits, and merges it in ONE transaction; up to
`max_inflight` such transactions run at once on separate pooled connections, so one
batch's commit (fsync) overlaps the next batch's work. A batch that shares a series with
an earlier in-flight batch waits for it: updates of a series commit in stream order.
Each update gets one ack, sent after its transaction committed; invalid updates are acked
(ok=false, INVALID) on their own and cost nothing else.

If a batch fails in PostgreSQL the stream ends with the code store.grpc_status gives its
error (UNAVAILABLE when PostgreSQL is down, ABORTED for a lost race, ...) and unacked
updates stay unacked: the receiver reconnects and re-sends them, which the idempotent merge
makes safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from seriesflow.store import ingest
from seriesflow.store.completion import Policy
from seriesflow.store.database import Database
from seriesflow.store.errors import DatabaseUnavailable, RejectedData, StoreError
from seriesflow.store.grpc_status import GRPC_STATUS, TRANSIENT
from seriesflow.store.ingest import Item
from seriesflow.store.metrics import StoreMetrics
from seriesflow.store.validation import (
    InvalidUpdate,
    UndecodableUpdate,
    ValidHold,
    ValidUpdate,
    validate,
)
from seriesflow.store.vocabulary import STATUS_TO_PB
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

SHUTTING_DOWN = (
    "the store is shutting down; reconnect (to another replica) and re-send unacknowledged updates"
)


@dataclass(frozen=True)
class Limits:
    batch_max_updates: int
    batch_max_instances: int
    max_instances_per_update: int
    max_inflight: int = 2


@dataclass(frozen=True)
class Shared:
    """What the servicer hands every StoreSeries stream (and uses itself for queries)."""

    db: Database
    metrics: StoreMetrics
    limits: Limits
    draining: asyncio.Event  # set at SIGTERM: no new streams, open ones wind down
    policy: Policy


@dataclass
class _Rejected:
    update_id: str
    field: str
    message: str
    received_at: float


@dataclass
class _Abort:
    code: grpc.StatusCode
    message: str


_END = object()


class StreamSession:
    """Serves one StoreSeries call; `run` is the handler's async generator of acks."""

    def __init__(self, shared: Shared) -> None:
        self._db = shared.db
        self._metrics = shared.metrics
        self._limits = limits = shared.limits
        self._draining = shared.draining
        self._policy = shared.policy
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * limits.batch_max_updates)
        # Also bound what is buffered by instances, not only by updates: a few huge updates
        # must not pile up in memory while the database is slow.
        self._queued_instances = 0
        self._room = asyncio.Event()
        self._room.set()
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = asyncio.Semaphore(limits.max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        self._series_tail: dict[str, asyncio.Task[None]] = {}

    async def run(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SeriesAck]:
        self._metrics.active_streams.inc()
        reader = asyncio.create_task(self._read(requests))
        dispatcher = asyncio.create_task(self._dispatch(reader))
        try:
            while (item := await self._outbox.get()) is not _END:
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.message)
                ack, received_at = item
                yield ack
                # Measured as the ack is handed to gRPC: read -> validate -> commit -> send.
                self._metrics.ack_latency.observe(time.monotonic() - received_at)
        finally:
            for task in (reader, dispatcher, *self._inflight):
                task.cancel()
            self._metrics.active_streams.dec()

    # -- reading -------------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for message in requests:
                now = time.monotonic()
                if isinstance(message, UndecodableUpdate):
                    item: Any = _Rejected(message.update_id, "", message.message, now)
                else:
                    try:
                        item = validate(
                            message,
                            received_at=now,
                            max_instances=self._limits.max_instances_per_update,
                        )
                    except InvalidUpdate as exc:
                        item = _Rejected(message.update_id, exc.field, exc.message, now)
                    except Exception as exc:
                        # A bug in validation, triggered by this message: it alone is
                        # rejected (contract 4); the stream and the other updates go on.
                        _log.error(
                            "update could not be validated",
                            extra={"fields": {"error": type(exc).__name__}},
                            exc_info=True,
                        )
                        item = _Rejected(
                            message.update_id,
                            "",
                            f"the store could not validate it ({type(exc).__name__});"
                            " a store bug: see its log",
                            now,
                        )
                while self._queued_instances >= 2 * self._limits.batch_max_instances:
                    self._room.clear()
                    await self._room.wait()
                self._queued_instances += _size(item)
                await self._inbox.put(item)
        finally:
            await self._inbox.put(_END)

    async def _take_batch(self) -> tuple[list[Any], bool]:
        """Everything waiting, up to the limits; True when the stream has ended (or the
        store is draining and nothing already read is left)."""
        get = asyncio.ensure_future(self._inbox.get())
        drain = asyncio.ensure_future(self._draining.wait())
        await asyncio.wait({get, drain}, return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        if not get.done():
            get.cancel()
            items = []
            while not self._inbox.empty():
                if (nxt := self._inbox.get_nowait()) is not _END:
                    items.append(nxt)
            return items, True
        first = get.result()
        if first is _END:
            return [], True
        items, instances = [first], _size(first)
        ended = False
        while (
            len(items) < self._limits.batch_max_updates
            and instances < self._limits.batch_max_instances
            and not self._inbox.empty()
        ):
            nxt = self._inbox.get_nowait()
            if nxt is _END:
                ended = True
                break
            items.append(nxt)
            instances += _size(nxt)
        self._queued_instances -= instances
        self._room.set()
        # Draining: answer what was already read, batch by batch, then end the stream.
        return items, ended or (self._draining.is_set() and self._inbox.empty())

    # -- committing ----------------------------------------------------------------------

    async def _dispatch(self, reader: asyncio.Task[None]) -> None:
        ended = False
        while not ended:
            items, ended = await self._take_batch()
            valid = []
            for item in items:
                if isinstance(item, _Rejected):
                    self._outbox.put_nowait(self._reject(item))
                else:
                    valid.append(item)
            if valid:
                await self._slots.acquire()
                self._start(valid)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._draining.is_set() and not reader.done():
            self._outbox.put_nowait(_Abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN))
        self._outbox.put_nowait(_END)

    def _start(self, updates: list[Item]) -> None:
        before = {t for u in updates if (t := self._series_tail.get(u.series_uid)) is not None}
        task = asyncio.create_task(self._commit(updates, before))
        self._inflight.add(task)
        for u in updates:
            self._series_tail[u.series_uid] = task

        def finished(done: asyncio.Task[None]) -> None:
            self._inflight.discard(done)
            self._slots.release()
            for u in updates:
                if self._series_tail.get(u.series_uid) is done:
                    del self._series_tail[u.series_uid]

        task.add_done_callback(finished)

    async def _commit(self, updates: list[Item], before: set[asyncio.Task[None]]) -> None:
        if before:  # an earlier batch holds one of these series: keep stream order
            await asyncio.gather(*before, return_exceptions=True)
        try:
            result = await self._transaction(updates)
        except RejectedData:
            # One update PostgreSQL refuses must not sink its batch: retry each alone.
            for update in updates:
                await self._commit_alone(update)
            return
        except StoreError as exc:
            self._fail(exc, len(updates))
            return
        except Exception:
            # A bug: end the stream visibly (INTERNAL) rather than leave updates unacked.
            _log.exception("batch failed unexpectedly")
            self._outbox.put_nowait(_Abort(grpc.StatusCode.INTERNAL, "store internal error"))
            return
        for ack in self._acks(updates, result):
            self._outbox.put_nowait(ack)

    async def _commit_alone(self, update: Item) -> None:
        try:
            result = await self._transaction([update])
        except RejectedData as exc:
            self._outbox.put_nowait(
                self._reject(_Rejected(update.update_id, "", str(exc), update.received_at))
            )
            return
        except StoreError as exc:
            self._fail(exc, 1)
            return
        for ack in self._acks([update], result):
            self._outbox.put_nowait(ack)

    async def _transaction(self, updates: list[Item]) -> ingest.BatchResult:
        if not self._db.up:
            raise DatabaseUnavailable("PostgreSQL is unavailable (health probe failing)")
        start = time.perf_counter()
        result = await self._db.run(lambda conn: ingest.merge(conn, updates, self._policy))
        self._metrics.transaction_seconds.observe(time.perf_counter() - start)
        return result

    # -- answering -----------------------------------------------------------------------

    def _reject(self, item: _Rejected) -> tuple[pb.SeriesAck, float]:
        self._metrics.updates.labels(result="invalid").inc()
        message = f"{item.field}: {item.message}" if item.field else item.message
        ack = pb.SeriesAck(
            update_id=item.update_id,
            ok=False,
            error=pb.AckError(kind=pb.AckError.KIND_INVALID, field=item.field, message=message),
        )
        return ack, item.received_at

    def _acks(
        self, updates: list[Item], result: ingest.BatchResult
    ) -> list[tuple[pb.SeriesAck, float]]:
        m = self._metrics
        m.record_decisions(result.completions, result.events, result.holds_expired)
        m.instances.labels(result="new").inc(result.new)
        m.instances.labels(result="duplicate").inc(result.duplicate)
        m.instances.labels(result="conflict").inc(
            result.conflicts.get("instance_in_other_series", 0)
        )
        for kind, count in result.conflicts.items():
            m.merge_conflicts.labels(kind=kind).inc(count)
        m.updates.labels(result="ok").inc(len(updates))
        acks = []
        for update in updates:
            ack = pb.SeriesAck(update_id=update.update_id, ok=True)
            # A hold may name a series with no instance stored yet: no count, no status.
            if (state := result.series.get(update.series_uid)) is not None:
                ack.num_instances = state.num_instances
                ack.status = STATUS_TO_PB[state.status]
            if isinstance(update, ValidHold):
                ack.hold_seconds = self._policy.hold_seconds
            acks.append((ack, update.received_at))
        return acks

    def _fail(self, exc: StoreError, pending: int) -> None:
        """End the stream; its unacked updates will be re-sent by the receiver."""
        self._metrics.updates.labels(result="unavailable").inc(pending)
        code = GRPC_STATUS[type(exc)]
        if code in TRANSIENT:
            _log.warning(
                "stream ended: database unavailable", extra={"fields": {"error": str(exc)}}
            )
            message = f"{exc}; reconnect and re-send unacknowledged updates"
        elif code == grpc.StatusCode.INTERNAL:
            _log.error("stream ended: database error", extra={"fields": {"error": str(exc)}})
            message = f"store database error: {exc}"
        else:
            message = str(exc)
        self._outbox.put_nowait(_Abort(code, message))


def _size(item: Any) -> int:
    return len(item.instances) if isinstance(item, ValidUpdate) else 0


__all__ = ["Limits", "StreamSession"]
