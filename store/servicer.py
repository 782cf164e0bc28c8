"""The SeriesStore servicer and its registration (with a never-failing deserializer).

gRPC's default deserializer turns a message with invalid UTF-8 into an INTERNAL error that
ends the call. Here every request is decoded by our own function: a bad StoreSeries message
is answered with an INVALID ack and the stream goes on; a bad query is INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message

from seriesflow.store import attributes, find, previews, queries
from seriesflow.store.database import Connection
from seriesflow.store.errors import DatabaseUnavailable, StoreError
from seriesflow.store.grpc_status import GRPC_STATUS
from seriesflow.store.stream import Shared, StreamSession
from seriesflow.store.validation import decode_update
from seriesflow.store.watch import START_CURSOR_KEY, Watchers, WatchRefused
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SeriesStore"].full_name

# grpc ships no type stubs: its context type is Any to mypy either way.
Context: TypeAlias = Any


@dataclass(frozen=True)
class UndecodableRequest:
    message: str


class SeriesStoreServicer:
    """StoreSeries plus the query RPCs; dependencies come in through the constructor."""

    def __init__(self, shared: Shared, watchers: Watchers) -> None:
        self._shared = shared
        self._db = shared.db
        self._watchers = watchers

    def StoreSeries(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[pb.SeriesAck]:
        return StreamSession(self._shared).run(requests, context)

    async def _query(
        self, fn: Callable[[Connection, Any], Awaitable[Message]], request: Any, context: Context
    ) -> Message:
        try:
            if not self._db.up:
                raise DatabaseUnavailable("PostgreSQL is unavailable (health probe failing)")
            return await self._db.run(lambda conn: fn(conn, request))
        except StoreError as exc:
            code = GRPC_STATUS[type(exc)]
            if code == grpc.StatusCode.INTERNAL:
                _log.error("query failed", extra={"fields": {"error": str(exc)}})
            await context.abort(code, str(exc))
            raise AssertionError("abort returned") from exc

    async def GetSeries(self, request: pb.GetSeriesRequest, context: Context) -> Message:
        return await self._query(queries.get_series, request, context)

    async def ListSeries(self, request: pb.ListSeriesRequest, context: Context) -> Message:
        return await self._query(queries.list_series, request, context)

    async def GetStudy(self, request: pb.GetStudyRequest, context: Context) -> Message:
        return await self._query(queries.get_study, request, context)

    async def ListStudies(self, request: pb.ListStudiesRequest, context: Context) -> Message:
        return await self._query(queries.list_studies, request, context)

    async def ListPatients(self, request: pb.ListPatientsRequest, context: Context) -> Message:
        return await self._query(queries.list_patients, request, context)

    async def GetAttributes(self, request: pb.GetAttributesRequest, context: Context) -> Message:
        return await self._query(attributes.get_attributes, request, context)

    async def GetSeriesPreview(
        self, request: pb.GetSeriesPreviewRequest, context: Context
    ) -> Message:
        return await self._query(previews.get_series_preview, request, context)

    async def Query(
        self, request: pb.QueryRequest, context: Context
    ) -> AsyncIterator[pb.QueryResponse]:
        try:
            async for response in find.stream(self._db, request):
                yield response
        except StoreError as exc:
            code = GRPC_STATUS[type(exc)]
            if code == grpc.StatusCode.INTERNAL:
                _log.error("query failed", extra={"fields": {"error": str(exc)}})
            await context.abort(code, str(exc))

    async def WatchSeries(
        self, request: pb.WatchSeriesRequest, context: Context
    ) -> AsyncIterator[pb.SeriesEvent]:
        async def started(position: int) -> None:
            await context.send_initial_metadata(((START_CURSOR_KEY, str(position)),))

        try:
            async for event in self._watchers.stream(request, started):
                yield event
        except WatchRefused as exc:
            await context.abort(exc.code, str(exc))


def _decoder(message_class: type[Message]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(f"request is not a valid {message_class.__name__}: {exc}")

    return decode


def _guarded(fn: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Any]:
    async def behaviour(request: Any, context: Context) -> Any:
        if isinstance(request, UndecodableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await fn(request, context)

    return behaviour


def _guarded_stream(
    fn: Callable[[Any, Context], AsyncIterator[Any]],
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def behaviour(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, UndecodableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for item in fn(request, context):
            yield item

    return behaviour


def generic_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """Handlers for every method of the SeriesStore service found on `servicer`."""
    service = pb.DESCRIPTOR.services_by_name["SeriesStore"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            continue
        response = getattr(pb, method.output_type.name)
        if method.name == "StoreSeries":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, decode_update, response.SerializeToString
            )
        elif method.server_streaming:
            request = getattr(pb, method.input_type.name)
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _guarded_stream(behaviour), _decoder(request), response.SerializeToString
            )
        else:
            request = getattr(pb, method.input_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guarded(behaviour), _decoder(request), response.SerializeToString
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
