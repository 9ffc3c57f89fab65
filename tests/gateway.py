"""A trustless gateway for tests (the Trustless Gateway spec, IPIP-402), over real HTTP
on 127.0.0.1: ``GET /ipfs/{cid}?format=car`` (or with Accept: application/vnd.ipld.car)
answers the CAR registered for that root, streamed in small chunks;
``?format=raw`` (or Accept: application/vnd.ipld.raw) answers one block added
with :meth:`Gateway.add_blocks`, found by multihash as the spec's gateways do;
404 for anything else it does not have; 400 for a request that asks for neither.
A root can be made to stall (headers sent, then nothing), as a slow gateway would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from dhtd.errors import InvalidArgument
from dhtd.ids import Cid, parse_cid

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=n"
CHUNK = 4096
STALL_LIMIT = 60.0  # a stalled answer ends by itself after this long at most


class Gateway:
    def __init__(self) -> None:
        self.cars: dict[str, bytes] = {}
        self.blocks: dict[bytes, bytes] = {}  # multihash -> block
        self.stalled: set[str] = set()
        self.requests: list[str] = []  # paths asked, with their query
        self._closing = threading.Event()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # (http.server's name)
                gateway.requests.append(self.path)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                wants_car = (query.get("format") == ["car"]
                             or "application/vnd.ipld.car" in self.headers.get("Accept", ""))
                wants_raw = query.get("format") == ["raw"] or RAW_TYPE in self.headers.get(
                    "Accept", "")
                if parts.path.startswith("/ipfs/") and wants_raw and not wants_car:
                    self._block(parts.path.removeprefix("/ipfs/"))
                    return
                if not parts.path.startswith("/ipfs/") or not wants_car:
                    self.send_error(400, "ask for a CAR: ?format=car")
                    return
                root = parts.path.removeprefix("/ipfs/")
                if root in gateway.stalled:
                    self.send_response(200)
                    self.send_header("Content-Type", CAR_TYPE)
                    self.end_headers()
                    gateway._closing.wait(STALL_LIMIT)
                    return
                car = gateway.cars.get(root)
                if car is None:
                    self.send_error(404, "no such root here")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CAR_TYPE)
                self.send_header("Content-Length", str(len(car)))
                self.end_headers()
                for i in range(0, len(car), CHUNK):
                    self.wfile.write(car[i:i + CHUNK])

            def _block(self, text: str) -> None:
                try:
                    block = gateway.blocks.get(parse_cid(text, "cid").multihash)
                except InvalidArgument:
                    self.send_error(400, "not a CID")
                    return
                if block is None:
                    self.send_error(404, "no such block here")
                    return
                self.send_response(200)
                self.send_header("Content-Type", RAW_TYPE)
                self.send_header("Content-Length", str(len(block)))
                self.end_headers()
                self.wfile.write(block)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, root: Cid, car: bytes) -> None:
        self.cars[str(root)] = car

    def add_blocks(self, blocks: list[tuple[Cid, bytes]]) -> None:
        for cid, data in blocks:
            self.blocks[cid.multihash] = data

    def stall(self, root: Cid) -> None:
        self.stalled.add(str(root))

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@contextmanager
def gateway() -> Iterator[Gateway]:
    served = Gateway()
    served.start()
    try:
        yield served
    finally:
        served.close()
