"""gRPC server metrics, as go-grpc-prometheus counts them, for every method.

A server interceptor wraps each method handler: it counts the start, every
message received and sent, the final status code, and the handling time
(streams included). A cancelled call counts as CANCELLED, or as
DEADLINE_EXCEEDED when the caller's deadline had passed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dhtd.metrics import Metrics

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    if exc is None:
        code = context.code()
        return str(code.name) if isinstance(code, grpc.StatusCode) else "OK"
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return str(code.name)
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call of every method. Each method's handler is wrapped once
    and cached, so a call costs the counting and nothing more."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler
        wrapped = self._wrapped[details.method] = self._wrap(details.method, handler)
        return wrapped

    def _wrap(self, method_path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, method = method_path.lstrip("/").rpartition("/")
        kind = _TYPES[(handler.request_streaming, handler.response_streaming)]
        labels = (kind, service, method)
        m = self.m
        handled = m.grpc_handled
        seconds = m.grpc_seconds.labels(*labels)
        started = m.grpc_started.labels(*labels)  # the series exist before a call ends
        received = m.grpc_received.labels(*labels)
        sent = m.grpc_sent.labels(*labels)

        async def count_in(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                received.inc()
                yield request

        def begin(request: Any, streaming_in: bool) -> tuple[float, Any]:
            started.inc()
            if streaming_in:
                return time.perf_counter(), count_in(request)
            received.inc()
            return time.perf_counter(), request

        def end(t0: float, context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            handled.labels(*labels, _final_code(context, exc)).inc()
            seconds.observe(time.perf_counter() - t0)

        def wrap_unary_response(inner: Any, streaming_in: bool) -> Any:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0, request = begin(request, streaming_in)
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    end(t0, context, exc)
                    raise
                if response is not None:
                    sent.inc()
                end(t0, context, None)
                return response

            return behaviour

        def wrap_stream_response(inner: Any, streaming_in: bool) -> Any:
            if not inspect.isasyncgenfunction(inner):
                # A handler that writes with context.write() (e.g. Health/Watch):
                # its messages are not seen here, only its start, status and time.
                return wrap_unary_response(inner, streaming_in)

            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0, request = begin(request, streaming_in)
                try:
                    async for response in inner(request, context):
                        sent.inc()
                        yield response
                except BaseException as exc:
                    end(t0, context, exc)
                    raise
                end(t0, context, None)

            return behaviour

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(handler.unary_unary, False),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary, True),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream, False),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream_response(handler.stream_stream, True),
            handler.request_deserializer, handler.response_serializer)
