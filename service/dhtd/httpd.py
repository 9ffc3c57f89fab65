"""The operator's HTTP endpoints: GET /metrics, /healthz, /readyz.

A deliberately small HTTP/1.1 server on the asyncio loop (no framework): one
request per connection, bounded in size and time.

- ``/metrics``: the Prometheus text format.
- ``/healthz``: 200 while the process and its event loop answer (liveness).
- ``/readyz``: 200 only while the node has DHT peers and gRPC is serving;
  503 otherwise, and from the moment shutdown starts (readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

# A request line and headers larger than this are refused.
MAX_REQUEST_BYTES = 8192
# A client has this long to send its request.
REQUEST_TIMEOUT = 5.0

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class OpsServer:
    """Serves /metrics, /healthz and /readyz until closed."""

    def __init__(self, render_metrics: Callable[[], bytes], ready: Callable[[], bool]) -> None:
        self._render = render_metrics
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, PROMETHEUS_TEXT, self._render()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if self._ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready: no DHT peers yet, or shutting down\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        parts = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or len(head) > MAX_REQUEST_BYTES:
            status, ctype, body = 400, "text/plain", b"bad request\n"
            method = "GET"
        else:
            method = parts[0]
            status, ctype, body = self.respond(method, parts[1])
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        headers = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            writer.write(headers.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        writer.close()
