"""A DhtService stub on a loopback port, for statuses and stream shapes dhtd never
sends on its own (or that an older dhtd sends)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc

from dht.v1 import dht_pb2_grpc as pb_grpc


@contextmanager
def serve(servicer: pb_grpc.DhtServiceServicer) -> Iterator[str]:
    """Serves ``servicer`` until the block ends; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_DhtServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)
