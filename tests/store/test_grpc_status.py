"""Store errors reach gRPC through one complete table, the same for queries and streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from st_harness import make_update, uid

from seriesflow.store import errors
from seriesflow.store.completion import Policy
from seriesflow.store.grpc_status import GRPC_STATUS, TRANSIENT
from seriesflow.store.metrics import StoreMetrics
from seriesflow.store.stream import Limits, Shared, StreamSession
from seriesflow.v1 import series_store_pb2 as pb

# What can end a StoreSeries stream: BadRequest and NotFound are raised by queries only,
# and RejectedData is answered by an INVALID ack for the one update (test_invalid_updates).
STREAM_ERRORS = (
    errors.DatabaseUnavailable,
    errors.RetryableConflict,
    errors.SchemaNotAtHead,
    errors.DatabaseFault,
)


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _all_subclasses(sub)
    return out


def test_every_store_error_has_a_grpc_status() -> None:
    assert _all_subclasses(errors.StoreError) <= set(GRPC_STATUS)


def test_a_lost_concurrency_race_is_aborted() -> None:
    assert GRPC_STATUS[errors.RetryableConflict] == grpc.StatusCode.ABORTED
    assert grpc.StatusCode.ABORTED in TRANSIENT


class _FailingDatabase:
    """Up (as far as the health probe knows), but every transaction raises `error`."""

    up = True

    def __init__(self, error: errors.StoreError) -> None:
        self.error = error

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        raise self.error


class _Aborted(Exception):
    pass


class _Context:
    code: grpc.StatusCode | None = None
    details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


async def _stream_end(error: errors.StoreError) -> _Context:
    shared = Shared(
        db=_FailingDatabase(error),  # type: ignore[arg-type]
        metrics=StoreMetrics(),
        limits=Limits(batch_max_updates=8, batch_max_instances=64, max_instances_per_update=64),
        draining=asyncio.Event(),
        policy=Policy(hold_seconds=300),
    )

    async def requests() -> AsyncIterator[pb.SeriesUpdate]:
        series = uid()
        yield make_update(series, [f"{series}.1"])

    context = _Context()
    acks = StreamSession(shared).run(requests(), context)  # type: ignore[arg-type]
    with pytest.raises(_Aborted):
        async for _ in acks:
            pytest.fail("a failed batch was acked")
    return context


@pytest.mark.parametrize("error", STREAM_ERRORS, ids=lambda e: e.__name__)
def test_a_stream_ends_with_the_code_of_the_store_error_that_stopped_it(
    error: type[errors.StoreError],
) -> None:
    context = asyncio.run(_stream_end(error("boom")))
    assert context.code == GRPC_STATUS[error]
    if context.code in TRANSIENT:
        assert "re-send unacknowledged updates" in context.details
