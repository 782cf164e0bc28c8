"""One StoreSeries stream: read updates, group-commit them, ack each after its commit.

A reader task validates updates as they arrive and queues them (a bounded queue: when the
database is slower than the sender, gRPC flow control pushes back). The writer takes
everything waiting, up to the batch limits, merges it in ONE transaction and then sends one
ack per update. Invalid updates are acked (ok=false, INVALID) on their own and cost nothing
else. If PostgreSQL is unavailable the stream ends with UNAVAILABLE and unacked updates stay
unacked: the receiver reconnects and re-sends them, which the idempotent merge makes safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from seriesflow.v1 import series_store_pb2 as pb
from store import ingest
from store.database import Database
from store.errors import (
    DatabaseUnavailable,
    RejectedData,
    SchemaNotAtHead,
    StoreError,
)
from store.metrics import StoreMetrics
from store.validation import InvalidUpdate, UndecodableUpdate, ValidUpdate, validate

_log = logging.getLogger(__name__)

STATUS = {"RECEIVING": pb.SERIES_STATUS_RECEIVING, "COMPLETE": pb.SERIES_STATUS_COMPLETE}


@dataclass(frozen=True)
class Limits:
    batch_max_updates: int
    batch_max_instances: int
    max_instances_per_update: int


@dataclass
class _Rejected:
    update_id: str
    field: str
    message: str
    received_at: float


_END = object()


class StreamSession:
    """Serves one StoreSeries call; `run` is the handler's async generator of acks."""

    def __init__(
        self,
        db: Database,
        metrics: StoreMetrics,
        limits: Limits,
        draining: asyncio.Event,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._limits = limits
        self._draining = draining
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * limits.batch_max_updates)

    async def run(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SeriesAck]:
        self._metrics.active_streams.inc()
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                items, ended = await self._take_batch()
                valid: list[ValidUpdate] = []
                for item in items:
                    if isinstance(item, _Rejected):
                        yield self._reject(item)
                    else:
                        valid.append(item)
                if valid:
                    async for ack in self._commit(valid, context):
                        yield ack
                if ended:
                    if self._draining.is_set() and not reader.done():
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            "the store is shutting down; reconnect (to another replica) and "
                            "re-send unacknowledged updates",
                        )
                    return
        finally:
            reader.cancel()
            self._metrics.active_streams.dec()

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
                await self._queue.put(item)
        finally:
            await self._queue.put(_END)

    async def _take_batch(self) -> tuple[list[Any], bool]:
        """Everything waiting, up to the limits; True when the stream has ended (or the
        store is draining, in which case only what was already read is taken)."""
        get = asyncio.ensure_future(self._queue.get())
        drain = asyncio.ensure_future(self._draining.wait())
        await asyncio.wait({get, drain}, return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        if not get.done():
            get.cancel()
            return self._drain_all(), True
        items: list[Any] = []
        instances = 0
        first = get.result()
        if first is _END:
            return items, True
        items.append(first)
        instances += _size(first)
        while (
            len(items) < self._limits.batch_max_updates
            and instances < self._limits.batch_max_instances
            and not self._queue.empty()
        ):
            nxt = self._queue.get_nowait()
            if nxt is _END:
                return items, True
            items.append(nxt)
            instances += _size(nxt)
        # Draining: answer what was already read, batch by batch, then end the stream.
        return items, self._draining.is_set() and self._queue.empty()

    def _drain_all(self) -> list[Any]:
        items = []
        while not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is not _END:
                items.append(nxt)
        return items

    def _reject(self, item: _Rejected) -> pb.SeriesAck:
        self._metrics.updates.labels(result="invalid").inc()
        self._metrics.ack_latency.observe(time.monotonic() - item.received_at)
        message = f"{item.field}: {item.message}" if item.field else item.message
        return pb.SeriesAck(
            update_id=item.update_id,
            ok=False,
            error=pb.AckError(kind=pb.AckError.KIND_INVALID, field=item.field, message=message),
        )

    async def _commit(
        self, updates: list[ValidUpdate], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SeriesAck]:
        try:
            result = await self._transaction(updates)
        except RejectedData:
            if len(updates) == 1:
                raise
            # One update PostgreSQL refuses must not sink its batch: retry each alone.
            for update in updates:
                async for ack in self._commit_alone(update, context):
                    yield ack
            return
        except StoreError as exc:
            await self._fail_stream(exc, len(updates), context)
            return
        for ack in self._acks(updates, result):
            yield ack

    async def _commit_alone(
        self, update: ValidUpdate, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SeriesAck]:
        try:
            result = await self._transaction([update])
        except RejectedData as exc:
            yield self._reject(_Rejected(update.update_id, "", str(exc), update.received_at))
            return
        except StoreError as exc:
            await self._fail_stream(exc, 1, context)
            return
        for ack in self._acks([update], result):
            yield ack

    async def _transaction(self, updates: list[ValidUpdate]) -> ingest.BatchResult:
        if not self._db.up:
            raise DatabaseUnavailable("PostgreSQL is unavailable (health probe failing)")
        start = time.perf_counter()
        result = await self._db.run(lambda conn: ingest.merge(conn, updates))
        self._metrics.transaction_seconds.observe(time.perf_counter() - start)
        return result

    def _acks(self, updates: list[ValidUpdate], result: ingest.BatchResult) -> list[pb.SeriesAck]:
        m = self._metrics
        m.instances.labels(result="new").inc(result.new)
        m.instances.labels(result="duplicate").inc(result.duplicate)
        m.instances.labels(result="conflict").inc(
            result.conflicts.get("instance_in_other_series", 0)
        )
        for kind, count in result.conflicts.items():
            m.merge_conflicts.labels(kind=kind).inc(count)
        m.updates.labels(result="ok").inc(len(updates))
        now = time.monotonic()
        acks = []
        for update in updates:
            state = result.series[update.series_uid]
            m.ack_latency.observe(now - update.received_at)
            acks.append(
                pb.SeriesAck(
                    update_id=update.update_id,
                    ok=True,
                    num_instances=state.num_instances,
                    status=STATUS[state.status],
                )
            )
        return acks

    async def _fail_stream(
        self, exc: StoreError, pending: int, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._metrics.updates.labels(result="unavailable").inc(pending)
        if isinstance(exc, DatabaseUnavailable):
            _log.warning(
                "stream ended: database unavailable", extra={"fields": {"error": str(exc)}}
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{exc}; reconnect and re-send unacknowledged updates",
            )
        if isinstance(exc, SchemaNotAtHead):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        _log.error("stream ended: database error", extra={"fields": {"error": str(exc)}})
        await context.abort(grpc.StatusCode.INTERNAL, f"store database error: {exc}")


def _size(item: Any) -> int:
    return len(item.instances) if isinstance(item, ValidUpdate) else 0
