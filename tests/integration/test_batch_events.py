"""batch_events on Provide, Put and Query, against real dhtd processes: the same
events, in the same order, several per message, and the walk's results intact."""

from __future__ import annotations

import time

import pytest

from dht.v1 import dht_pb2 as pb
from tests.integration.conftest import NAMESPACE
from tests.integration.test_swarm import FINAL, assert_walk_in_order, cid_for, kad
from tests.swarm import Node

pytestmark = pytest.mark.integration


def test_batched_query_streams_the_same_walk_in_fewer_messages(five: list[Node]) -> None:
    target = five[2].dev_peer_ids()[1]
    asker = five[0]
    messages = list(asker.dht.Query(pb.QueryRequest(peer_id=target, batch_events=True),
                                    timeout=20))
    assert all(not m.HasField("event") for m in messages)  # batched: only `events`
    events = [e for m in messages for e in m.events]
    assert 0 < len(messages) < len(events)
    # The walk's result is the true 20 closest, as without batching.
    everyone = [n.peer_id for n in five] + [p for n in five for p in n.dev_peer_ids()]
    others = [p for p in everyone if p != asker.peer_id]
    truth = sorted(others, key=lambda p: int.from_bytes(kad(p)) ^ int.from_bytes(kad(target)))
    finals = [e.id for e in events if e.type == FINAL]
    assert finals == truth[:20]
    assert_walk_in_order(events)


def test_batched_provide_names_each_events_cid_and_is_found(five: list[Node]) -> None:
    cids = [cid_for(f"batched-provide-{i}-{time.time_ns()}") for i in range(2)]
    messages = list(five[1].dht.Provide(pb.ProvideRequest(cids=cids, batch_events=True),
                                        timeout=30))
    assert all(not m.HasField("event") and not m.cid for m in messages)
    events = [e for m in messages for e in m.events]
    assert 0 < len(messages) < len(events)
    assert {e.cid for e in events} == set(cids)
    for cid in cids:  # each CID's record was taken by at least one peer
        assert any(e.cid == cid and e.event.type == FINAL for e in events)
        found = list(five[3].dht.FindProvs(pb.FindProvsRequest(cid=cid), timeout=10))
        assert five[1].peer_id in {f.provider.id for f in found}


def test_batched_put_is_stored_and_got(five: list[Node]) -> None:
    key = f"/{NAMESPACE}/batched-{time.time_ns()}".encode()
    messages = list(five[0].dht.Put(pb.PutRequest(key=key, value=b"v", batch_events=True),
                                    timeout=20))
    assert all(not m.HasField("event") for m in messages)
    events = [e for m in messages for e in m.events]
    assert len(messages) < len(events)
    assert any(e.type == FINAL for e in events)
    assert five[4].dht.Get(pb.GetRequest(key=key), timeout=10).value == b"v"
