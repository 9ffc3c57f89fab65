"""The Python client (dhtd_client) against a live dhtd with four dev peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import aclosing

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dht.v1 import dht_pb2_grpc as pb_grpc
from dhtd_client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ProvideEvent,
    ProvideHolders,
    QueryEvent,
    QueryEventType,
)
from tests.integration.test_swarm import cid_for
from tests.service.stub_server import serve
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


def _finals(events: list[QueryEvent]) -> int:
    return sum(e.type is QueryEventType.FINAL_PEER for e in events)


def test_min_holders_and_the_holders_figure(live: Node) -> None:
    """min_holders=20 waits for every store: holders == the FINAL_PEER events."""
    one, two = (cid_for(f"holders-{i}-{time.time_ns()}") for i in range(2))
    with Client(live.grpc_addr, timeout=20) as client:
        put = client.put(f"/demo/holders-{time.time_ns()}".encode(), b"v", min_holders=20)
        assert put.holders is None  # not before the stream ended
        events = list(put)
        assert all(e.id for e in events), "an empty event"
        assert put.holders == _finals(events) >= 1
        provide = client.provide(one, two, min_holders=20)
        provided = list(provide)
        assert all(p.cid in (one, two) and p.event.id for p in provided), "an empty event"
        assert provide.holders == tuple(
            ProvideHolders(cid, _finals([p.event for p in provided if p.cid == cid]))
            for cid in (one, two))
        assert all(h.holders >= 1 for h in provide.holders)

    async def main() -> None:
        async with AsyncClient(live.grpc_addr, timeout=20) as client:
            put = client.put(f"/demo/aholders-{time.time_ns()}".encode(), b"v", min_holders=20)
            events = [e async for e in put]
            assert all(e.id for e in events)
            assert put.holders == _finals(events) >= 1
            cid = cid_for(f"aholders-{time.time_ns()}")
            async with aclosing(client.provide(cid, min_holders=20)) as provide:
                provided = [p.event async for p in provide]
            assert provide.holders == (ProvideHolders(cid, _finals(provided)),)

    asyncio.run(main())


class _Fake(pb_grpc.DhtServiceServicer):
    """Put and Provide streams with an eventless message mid-stream; the holders message
    at the end only when min_holders is set (else a dhtd that predates it)."""

    def __init__(self) -> None:
        self.min_holders: list[int] = []

    def Put(self, request: pb.PutRequest, context: grpc.ServicerContext
            ) -> Iterator[pb.PutResponse]:
        self.min_holders.append(request.min_holders)
        yield pb.PutResponse(events=[_EVENT])
        yield pb.PutResponse()
        yield pb.PutResponse(event=_EVENT)
        if request.min_holders:
            yield pb.PutResponse(holders=2)

    def Provide(self, request: pb.ProvideRequest, context: grpc.ServicerContext
                ) -> Iterator[pb.ProvideResponse]:
        self.min_holders.append(request.min_holders)
        yield pb.ProvideResponse(events=[pb.ProvideEvent(cid="c", event=_EVENT)])
        yield pb.ProvideResponse()
        if request.min_holders:
            yield pb.ProvideResponse(holders=[pb.ProvideHolders(cid="c", holders=1)])


_EVENT = pb.QueryEvent(type=pb.QUERY_EVENT_TYPE_FINAL_PEER, id="12D3KooWPeer")


@pytest.fixture
def fake() -> Iterator[tuple[str, _Fake]]:
    servicer = _Fake()
    with serve(servicer) as addr:
        yield addr, servicer


def test_min_holders_sent_and_older_dhtd_without_holders(fake: tuple[str, _Fake]) -> None:
    addr, servicer = fake
    final = QueryEvent(QueryEventType.FINAL_PEER, "12D3KooWPeer")
    with Client(addr, timeout=10) as client:
        put = client.put(b"/demo/k", b"v", min_holders=3)
        assert list(put) == [final, final] and put.holders == 2
        old = client.put(b"/demo/k", b"v")
        assert list(old) == [final, final] and old.holders is None
        provide = client.provide("c", min_holders=20)
        assert list(provide) == [ProvideEvent("c", final)]
        assert provide.holders == (ProvideHolders("c", 1),)
        old_provide = client.provide("c")
        assert list(old_provide) == [ProvideEvent("c", final)] and old_provide.holders is None
    assert servicer.min_holders == [3, 0, 20, 0]

    async def main() -> None:
        async with AsyncClient(addr, timeout=10) as client:
            put = client.put(b"/demo/k", b"v", min_holders=1)
            assert [e async for e in put] == [final, final] and put.holders == 2
            old = client.provide("c")
            assert [p async for p in old] == [ProvideEvent("c", final)]
            assert old.holders is None

    asyncio.run(main())
    assert servicer.min_holders[4:] == [1, 0]
