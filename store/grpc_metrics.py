"""gRPC server metrics: seriesflow_store_grpc_server_started_total, _handled_total and
_handling_seconds.

Labels (grpc_service, grpc_method, grpc_type, grpc_code) and the name's tail follow the
go-grpc-prometheus conventions; the seriesflow_store_ prefix keeps them apart from every
other gRPC server in a shared Prometheus, where a bare grpc_server_handled_total would be
summed with theirs by any query not scoped by job (the health and reflection services,
which this interceptor counts as well, have the same grpc_service everywhere). A stock
gRPC dashboard works after replacing `grpc_server_` by `seriesflow_store_grpc_server_`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from seriesflow.store.grpc_wrap import wrap

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


class GrpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.started = Counter(
            "seriesflow_store_grpc_server_started_total",
            "RPCs started on the server",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "seriesflow_store_grpc_server_handled_total",
            "RPCs completed on the server, by status code",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "seriesflow_store_grpc_server_handling_seconds",
            "Duration of RPCs until the server finished them",
            labels,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300),
            registry=registry,
        )


def _code_of(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # grpc.aio may hold the raw cygrpc integer
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: GrpcMetrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        shape = (handler.request_streaming, handler.response_streaming)
        labels = (service, method, _TYPES[shape])
        m = self._m

        @contextlib.asynccontextmanager
        async def observed(context: Any) -> AsyncIterator[None]:
            m.started.labels(*labels).inc()
            start, error = time.perf_counter(), None
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                m.handled.labels(*labels, _code_of(context, error)).inc()
                m.seconds.labels(*labels).observe(time.perf_counter() - start)

        return wrap(handler, observed)
