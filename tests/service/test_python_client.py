"""The Python client (dhtd_client) against a live dhtd with four dev peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from dhtd_client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    QueryEventType,
)
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, dev_node


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with dev_node("py-client", tmp_path_factory.mktemp("pyc")) as node:
        yield node


def test_sync_client_all_methods(live: Node) -> None:
    peer = live.dev_peer_ids()[2]
    with Client(live.grpc_addr, timeout=20) as client:
        info = client.info()
        assert info.peer_id == live.peer_id and info.mode == "server"
        assert client.find_peer(peer).id == peer
        events = list(client.query(peer))
        assert [e.id for e in events if e.type is QueryEventType.FINAL_PEER]
        cid = cid_for(f"py-{time.time_ns()}")
        provided = list(client.provide(cid))
        assert all(p.cid == cid for p in provided)
        assert any(p.event.type is QueryEventType.FINAL_PEER for p in provided)
        assert [p.id for p in client.find_provs(cid, num_providers=1)] == [live.peer_id]
        key = f"/demo/py-{time.time_ns()}".encode()
        stored = [e for e in client.put(key, b"value") if e.type is QueryEventType.FINAL_PEER]
        assert len(stored) >= 1
        assert client.get(key) == b"value"


def test_sync_client_typed_errors(live: Node) -> None:
    with Client(live.grpc_addr, timeout=20) as client:
        with pytest.raises(InvalidArgumentError) as bad:
            client.find_peer("nope")
        assert bad.value.details.startswith("peer_id:")
        with pytest.raises(NotFoundError):
            client.get(b"/demo/never-stored")
        with pytest.raises(NotFoundError):
            list(client.find_provs(cid_for("nobody-provides-this")))
        with pytest.raises(FailedPreconditionError):
            list(client.provide(cid_for("x"), recursive=True))


def test_async_client_streams_and_errors(live: Node) -> None:
    async def main() -> None:
        async with AsyncClient(live.grpc_addr, timeout=20) as client:
            info = await client.info()
            assert info.routing_table_size >= 4
            cid = cid_for(f"apy-{time.time_ns()}")
            kinds = [p.event.type async for p in client.provide(cid)]
            assert QueryEventType.FINAL_PEER in kinds
            found = [p.id async for p in client.find_provs(cid)]
            assert found == [live.peer_id]
            with pytest.raises(NotFoundError):
                await client.get(b"/demo/never-stored-either")

    asyncio.run(main())


def test_the_provide_and_put_sets_through_both_clients(live: Node) -> None:
    cids = [cid_for(f"set-{i}-{time.time_ns()}") for i in range(3)]
    key = f"/demo/set-{time.time_ns()}".encode()
    with Client(live.grpc_addr, timeout=20) as client:
        for cid in cids:
            list(client.provide(cid))
        list(client.put(key, b"kept"))
        listed = {p.cid: p for p in client.list_provides(page_size=2)}  # pages of 2
        assert set(cids) <= set(listed)
        assert all(listed[c].last_announced > 0 for c in cids)
        assert client.stop_providing([cids[0], cid_for("never-provided")]) == 1
        assert (key, b"kept") in {(r.key, r.value) for r in client.list_puts()}

    async def main() -> None:
        async with AsyncClient(live.grpc_addr, timeout=20) as client:
            left = {p.cid async for p in client.list_provides(page_size=1)}
            assert cids[0] not in left and set(cids[1:]) <= left
            assert key in {r.key async for r in client.list_puts()}
            await client.stop_republishing(key)
            with pytest.raises(NotFoundError):
                await client.stop_republishing(key)
            assert key not in {r.key async for r in client.list_puts()}
            assert await client.stop_providing(cids[1:]) == 2

    asyncio.run(main())
