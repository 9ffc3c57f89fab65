"""The gRPC edge around every method: requests that do not decode, the cap on
calls in flight, and server metrics as go-grpc-prometheus counts them.

One server interceptor wraps each method handler once and caches it. For every
call of every method (health and reflection included) it promises:

* **Undecodable requests end with INVALID_ARGUMENT.** The request deserializer
  never raises (grpc.aio would answer UNKNOWN and log a traceback): bytes that do
  not decode as the method's request message become an :class:`Undecodable`
  marker, and the call ends with ``request: does not decode as <type>: <reason>``,
  short whatever was sent, and a DEBUG log line at most. Unary and streaming
  requests alike.
* **At most ``max_in_flight`` calls of the limited services run at once**
  (dht.v1; server streams count until they end). One more ends at once, never
  queued, with RESOURCE_EXHAUSTED naming ``--max-concurrent-rpcs``. Health and
  reflection are never limited, so probes answer under any load.
* **Metrics.** The start, every message received and sent, the final status code
  and the handling time (streams included) are counted; refused calls too, with
  their code. A cancelled call counts as CANCELLED, or as DEADLINE_EXCEEDED when
  the caller's deadline had passed.

Statuses and messages come from :func:`dhtd.api.status.status_of`, the one table.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from dhtd.errors import DhtdError, InvalidArgument, ResourceExhausted, excerpt
from dhtd.metrics import Metrics

from .status import status_of

log = logging.getLogger("dhtd.api")

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}

# The flag that sets the cap, named in the RESOURCE_EXHAUSTED message.
MAX_IN_FLIGHT_FLAG = "--max-concurrent-rpcs"

Deserializer = Callable[[bytes], Any]

# What protobuf (upb) says of any bytes it cannot decode is only "Error parsing
# message with type '<type>'"; the caller gets the two likely causes instead.
_WIRE_HINT = "not protobuf wire format, or a string field that is not valid UTF-8"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands for a request message that did not decode; the call ends with ``error``."""

    error: InvalidArgument


def tolerant(deserialize: Deserializer | None, method: str) -> Deserializer | None:
    """``deserialize``, made never to raise: what it cannot decode becomes an
    :class:`Undecodable` whose error names the message type (``dht.v1.FindPeerRequest``)
    and quotes at most ECHO_CHARS of the reason. None stays None (raw bytes)."""
    if deserialize is None:
        return None
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = str(getattr(descriptor, "full_name", "") or f"the request of {method}")

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:
            text = str(exc) or type(exc).__name__
            reason = _WIRE_HINT if name in text else excerpt(text)
            log.debug("request does not decode",
                      extra={"method": method, "size": len(raw), "reason": reason})
            return Undecodable(InvalidArgument("request", f"does not decode as {name}: {reason}"))

    return decode


async def _refuse(context: grpc.aio.ServicerContext, error: DhtdError) -> NoReturn:
    code, message = status_of(error)
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


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


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decoding, the in-flight cap and metrics for every method (see the module doc).

    ``limited`` are the full names of the services whose calls count against
    ``max_in_flight``. Each method's handler is wrapped once and cached, so a call
    costs the checks and the counting and nothing more.
    """

    def __init__(self, metrics: Metrics, *, max_in_flight: int, limited: Collection[str]) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.m = metrics
        self.max_in_flight = max_in_flight
        self.limited = frozenset(limited)
        self.in_flight = 0  # calls of the limited services admitted and not ended
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

    def _admit(self) -> None:
        """Takes a slot; ResourceExhausted when all are taken."""
        if self.in_flight >= self.max_in_flight:
            raise ResourceExhausted(
                f"dhtd is running {self.in_flight} calls, its limit ({MAX_IN_FLIGHT_FLAG} "
                f"{self.max_in_flight}); retry with backoff"
            )
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight -= 1

    def _wrap(self, method_path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, method = method_path.lstrip("/").rpartition("/")
        kind = _TYPES[(handler.request_streaming, handler.response_streaming)]
        labels = (kind, service, method)
        limited = service in self.limited
        admit, release = self._admit, self._release
        m = self.m
        handled = m.grpc_handled
        seconds = m.grpc_seconds.labels(*labels)
        started = m.grpc_started.labels(*labels)  # the series exist before a call ends
        received = m.grpc_received.labels(*labels)
        sent = m.grpc_sent.labels(*labels)

        async def check_in(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[Any]:
            async for request in requests:
                received.inc()
                if isinstance(request, Undecodable):
                    await _refuse(context, request.error)
                yield request

        def begin(request: Any, streaming_in: bool, context: grpc.aio.ServicerContext
                  ) -> tuple[float, Any]:
            started.inc()
            if streaming_in:
                return time.perf_counter(), check_in(request, context)
            received.inc()
            return time.perf_counter(), request

        async def enter(request: Any, context: grpc.aio.ServicerContext) -> bool:
            """Ends the call if its request did not decode or no slot is free;
            True when it took a slot, which the caller must release."""
            if isinstance(request, Undecodable):
                await _refuse(context, request.error)
            if not limited:
                return False
            try:
                admit()
            except ResourceExhausted as exc:
                await _refuse(context, exc)
            return True

        def end(t0: float, context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            handled.labels(*labels, _final_code(context, exc)).inc()
            seconds.observe(time.perf_counter() - t0)

        def wrap_unary_response(inner: Any, streaming_in: bool) -> Any:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0, request = begin(request, streaming_in, context)
                admitted = False
                try:
                    admitted = await enter(request, context)
                    response = await inner(request, context)
                except BaseException as exc:
                    end(t0, context, exc)
                    raise
                finally:
                    if admitted:
                        release()
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
                t0, request = begin(request, streaming_in, context)
                admitted = False
                try:
                    admitted = await enter(request, context)
                    async for response in inner(request, context):
                        sent.inc()
                        yield response
                except BaseException as exc:
                    end(t0, context, exc)
                    raise
                finally:
                    if admitted:
                        release()
                end(t0, context, None)

            return behaviour

        decode = tolerant(handler.request_deserializer, method_path)
        encode = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(handler.unary_unary, False), decode, encode)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary, True), decode, encode)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream, False), decode, encode)
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream_response(handler.stream_stream, True), decode, encode)
