"""The ops HTTP server: paths, readiness, methods, and malformed requests."""

from __future__ import annotations

import asyncio

from dhtd.httpd import MAX_REQUEST_BYTES, OpsServer


async def fetch(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data.split(b"\r\n\r\n", 1)[-1]


def test_paths_and_readiness() -> None:
    ready = {"now": False}

    async def main() -> None:
        server = OpsServer(lambda: b"# metrics\n", lambda: ready["now"])
        port = await server.start("127.0.0.1", 0)
        try:
            assert await fetch(port, b"GET /metrics HTTP/1.1\r\n\r\n") == (200, b"# metrics\n")
            assert (await fetch(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200
            assert (await fetch(port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 503
            ready["now"] = True
            assert (await fetch(port, b"GET /readyz?verbose HTTP/1.1\r\n\r\n"))[0] == 200
            assert (await fetch(port, b"HEAD /readyz HTTP/1.1\r\n\r\n")) == (200, b"")
            assert (await fetch(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await fetch(port, b"GET /other HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await fetch(port, b"nonsense\r\n\r\n"))[0] == 400
            huge = b"GET /" + b"a" * MAX_REQUEST_BYTES + b" HTTP/1.1\r\n\r\n"
            assert (await fetch(port, huge))[0] in (0, 400)
        finally:
            await server.close()

    asyncio.run(main())
