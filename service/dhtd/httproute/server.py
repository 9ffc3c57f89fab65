"""A small HTTP/1.1 server on the asyncio loop, on h11's protocol state machine.

It serves one application callable (:mod:`dhtd.httproute.routes`) and promises:

- **Bounded input.** A request head larger than :data:`MAX_HEAD_BYTES` gets 431,
  a body larger than the application's limit 413, a client that sends nothing
  for :data:`IDLE_TIMEOUT` (or takes longer than :data:`REQUEST_TIMEOUT` to send
  a request) is disconnected. At most :data:`MAX_CONNECTIONS` connections are
  open; more are closed at once.
- **Streaming.** A response without a length is sent chunked, each piece the
  moment the application hands it over (NDJSON records as the DHT finds them).
- **A client that goes away stops the work.** While the application runs, the
  connection is watched; end of stream cancels the application's task.
- **Keep-alive** as HTTP/1.1 allows, one request at a time per connection.
- Errors in the application become a 500 with a one-line text (and a log line),
  never a traceback to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import h11

log = logging.getLogger("dhtd.httproute")

# The request line and headers together (someguy/Go's net/http allow 1 MiB; a
# routing request is a path and a few headers).
MAX_HEAD_BYTES = 16 * 1024
# A connection idle between requests is closed after this (Go's IdleTimeout-like).
IDLE_TIMEOUT = 60.0
# A request's head and body must arrive within this.
REQUEST_TIMEOUT = 10.0
# Open connections at once; more are closed as they come (ours).
MAX_CONNECTIONS = 512
# Bytes read from the socket at a time, and handed to h11 at a time (h11 checks
# MAX_HEAD_BYTES only while a head is incomplete: small slices make it see one).
_READ = 16 * 1024
_SLICE = 1024


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


class Response:
    """What the application writes through: :meth:`send` a whole response, or
    :meth:`start` then :meth:`write` pieces (sent chunked) until it returns."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                 head_request: bool) -> None:
        self._conn = conn
        self._writer = writer
        self._head = head_request
        self.status = 0  # set once the head is sent
        self.sent_bytes = 0

    @property
    def started(self) -> bool:
        return self.status != 0

    async def _emit(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def start(self, status: int, headers: Sequence[tuple[str, str]],
                    length: int | None = None) -> None:
        fields = list(headers)
        if length is not None:
            fields.append(("Content-Length", str(length)))
        self.status = status
        await self._emit(h11.Response(status_code=status, headers=fields))

    async def write(self, data: bytes) -> None:
        if data and not self._head:
            self.sent_bytes += len(data)
            await self._emit(h11.Data(data=data))

    async def end(self) -> None:
        await self._emit(h11.EndOfMessage())

    async def send(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        await self.start(status, headers, len(body))
        await self.write(body)
        await self.end()


App = Callable[[Request, Response], Awaitable[None]]


class HttpServer:
    """Serves ``app`` until closed; ``max_body`` bounds a request's body."""

    def __init__(self, app: App, max_body: int) -> None:
        self._app = app
        self._max_body = max_body
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stops listening and ends every connection (their work is cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        try:
            await _Connection(self._app, self._max_body, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, h11.ProtocolError):
            pass  # the client went away or broke the protocol: its connection ends
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Connection:
    def __init__(self, app: App, max_body: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.app = app
        self.max_body = max_body
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._pending = b""  # read from the socket, not yet handed to h11

    async def _next(self, timeout: float) -> h11.Event:
        async with asyncio.timeout(timeout):
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]
                if not self._pending:
                    data = await self.reader.read(_READ)
                    if not data:
                        self.conn.receive_data(b"")
                        continue
                    self._pending = data
                self.conn.receive_data(self._pending[:_SLICE])
                self._pending = self._pending[_SLICE:]

    async def _refuse(self, status: int, text: str) -> None:
        response = Response(self.conn, self.writer, False)
        body = (text + "\n").encode()
        with contextlib.suppress(h11.LocalProtocolError):
            await response.send(status, [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Connection", "close")], body)

    async def run(self) -> None:
        while True:
            try:
                event = await self._next(IDLE_TIMEOUT)
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, f"bad request: {exc}")
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            try:
                request = await self._read(event)
            except _TooLarge:
                await self._refuse(413, f"request body larger than {self.max_body} bytes")
                return
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, f"bad request: {exc}")
                return
            response = Response(self.conn, self.writer, request.method == "HEAD")
            if not await self._serve(request, response):
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read(self, head: h11.Request) -> Request:
        target = head.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        body = bytearray()
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while True:
                event = await self._next(REQUEST_TIMEOUT)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.max_body:
                        raise _TooLarge
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError("the request ended early", 400)
        return Request(head.method.decode("latin-1").upper(), path, query, headers, bytes(body))

    async def _serve(self, request: Request, response: Response) -> bool:
        """Runs the application, cancelled if the client closes the connection; True
        if the connection can serve another request."""
        work = asyncio.ensure_future(self.app(request, response))
        watch = asyncio.ensure_future(self._watch())
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done and work not in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                return False
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch
        try:
            work.result()
        except Exception as exc:
            log.error("routing request failed", extra={"path": request.path,
                                                        "error": f"{type(exc).__name__}: {exc}"})
            if not response.started:
                await self._refuse(500, "internal error (see dhtd's log)")
            return False
        return True

    async def _watch(self) -> None:
        """Returns when the client closes its side, or sends more meanwhile than one
        more request can hold (what it sends is kept for the next request)."""
        while True:
            data = await self.reader.read(_READ)
            if not data:
                return
            self._pending += data
            if len(self._pending) > MAX_HEAD_BYTES + self.max_body:
                return  # a client that floods while it is answered is let go


class _TooLarge(Exception):
    pass

