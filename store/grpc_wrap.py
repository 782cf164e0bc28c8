"""Run every gRPC call of any shape inside a guard: the one way our interceptors wrap handlers.

A server interceptor that wants to act around a call (count it, time it, refuse it) must
rebuild the method handler of the same shape around the original behaviour. Both of the
store's interceptors (grpc_metrics, auth) do it through `wrap`, with their guard as an async
context manager entered with the call's context before the behaviour runs and left after it
finished (or raised, including the abort of a refused call).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import grpc

Guard = Callable[[Any], AbstractAsyncContextManager[None]]
# A string: grpc's RpcMethodHandler is generic only in its type stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# (request_streaming, response_streaming) -> the handler factory of that shape
_FACTORIES: dict[tuple[bool, bool], Callable[..., Handler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def wrap(handler: Handler, guard: Guard) -> Handler:
    """`handler` with each call run inside `guard(context)`."""
    shape = (handler.request_streaming, handler.response_streaming)
    behaviour: Callable[..., Any]
    if handler.response_streaming:
        # grpc.aio hands async callables here; its stubs type them as sync ones.
        inner_stream: Any = handler.stream_stream or handler.unary_stream

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            async with guard(context):
                result = inner_stream(request, context)
                if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write() and returns None
                    await result

        behaviour = streaming
    else:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: Any) -> Any:
            async with guard(context):
                return await inner(request, context)

        behaviour = unary
    return _FACTORIES[shape](behaviour, handler.request_deserializer, handler.response_serializer)
