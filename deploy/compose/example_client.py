"""A walk through dhtd's API with the dhtd_client package, against three nodes.

    python example_client.py HOST:PORT HOST:PORT HOST:PORT
    DHTD_TARGETS=HOST:PORT,HOST:PORT,HOST:PORT python example_client.py

The gRPC addresses are, in order, the node that provides (node1), the node that
puts (node2) and the node that looks both up (node3). Fewer than three are reused
in turn. It provides a fresh CID on node1 and finds its provider from node3, then
puts a record under /demo/ on node2 and gets it from node3: the nodes need
``--namespace demo``. Exits 0 when all four steps worked, 1 otherwise.

docker-compose.yml runs it as the ``example-client`` service; against the
published ports it runs from the host as well:

    DHTD_TARGETS=127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 \\
        python deploy/compose/example_client.py
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from dhtd_client import (
    Client,
    DhtdError,
    NotFoundError,
    QueryEventType,
    UnavailableError,
)

T = TypeVar("T")

# Deadline of one call, seconds.
CALL_TIMEOUT = 30.0
# A fresh swarm may still be filling its routing tables: a step that found no
# peer or nothing yet is tried again this many times, RETRY_DELAY apart.
ATTEMPTS = 5
RETRY_DELAY = 2.0


def targets_from(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    raw = list(argv) or [environ.get("DHTD_TARGETS", "")]
    targets = [t.strip() for arg in raw for t in arg.split(",") if t.strip()]
    if not targets:
        raise SystemExit(
            "usage: example_client.py HOST:PORT [HOST:PORT HOST:PORT]  "
            "(or DHTD_TARGETS=HOST:PORT,...)"
        )
    return [targets[i % len(targets)] for i in range(3)]


def raw_cid(data: bytes) -> str:
    """The CIDv1 (raw codec, sha2-256, base32) of ``data``."""
    digest = hashlib.sha256(data).digest()
    binary = bytes([0x01, 0x55, 0x12, len(digest)]) + digest
    return "b" + base64.b32encode(binary).decode("ascii").lower().rstrip("=")


def retry(what: str, step: Callable[[], T]) -> T:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return step()
        except (NotFoundError, UnavailableError) as exc:
            if attempt == ATTEMPTS:
                raise
            print(f"  {what}: {type(exc).__name__} ({exc}); retrying", flush=True)
            time.sleep(RETRY_DELAY)
    raise AssertionError("unreachable")


def run(provider_addr: str, putter_addr: str, reader_addr: str) -> None:
    run_id = uuid.uuid4().hex[:12]
    cid = raw_cid(f"dhtd example {run_id}".encode())
    key = f"/demo/example-{run_id}".encode()
    value = f"hello from the example client, run {run_id}".encode()

    with (
        Client(provider_addr, timeout=CALL_TIMEOUT) as node1,
        Client(putter_addr, timeout=CALL_TIMEOUT) as node2,
        Client(reader_addr, timeout=CALL_TIMEOUT) as node3,
    ):
        for name, client, addr in (
            ("node1", node1, provider_addr),
            ("node2", node2, putter_addr),
            ("node3", node3, reader_addr),
        ):
            info = client.info()
            print(f"{name} {addr}: peer {info.peer_id}, {info.routing_table_size} DHT peers")
        provider_id = node1.info().peer_id

        def provide() -> int:
            events = list(node1.provide(cid))
            return sum(e.event.type is QueryEventType.FINAL_PEER for e in events)

        delivered = retry("provide", provide)
        print(f"provide {cid} on node1: announced to {delivered} peers")

        def find_provider() -> str:
            found = [p.id for p in node3.find_provs(cid, num_providers=1)]
            if provider_id not in found:
                raise NotFoundError(f"providers {found} do not include node1")
            return provider_id

        found = retry("findprovs", find_provider)
        print(f"findprovs {cid} on node3: provider {found} (node1)")

        stored = retry(
            "put",
            lambda: sum(e.type is QueryEventType.FINAL_PEER for e in node2.put(key, value)),
        )
        print(f"put {key.decode()} on node2: stored on {stored} peers")

        def get() -> bytes:
            got = node3.get(key)
            if got != value:
                raise NotFoundError(f"got {got!r}, not the value just put")
            return got

        got = retry("get", get)
        print(f"get {key.decode()} on node3: {got.decode()!r}")


def main(argv: Sequence[str] | None = None) -> int:
    provider_addr, putter_addr, reader_addr = targets_from(
        sys.argv[1:] if argv is None else argv, os.environ
    )
    try:
        run(provider_addr, putter_addr, reader_addr)
    except DhtdError as exc:
        print(f"example client: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("example client: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
