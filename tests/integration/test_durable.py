"""What dhtd acknowledged survives kill -9; its routing table survives a restart.

Real dhtd processes on 127.0.0.1. The node under test is killed with SIGKILL
right after its calls returned OK, and restarts on the same data dir among
peers that never saw its records: it announces them again by itself.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, spawn_node, start_node, wait_until

pytestmark = pytest.mark.integration

# Short schedules, so "within one interval" fits a test.
INTERVALS = ["--reprovide-interval", "4", "--republish-interval", "4", "--namespace", "demo"]


@contextmanager
def nodes(*started: Node) -> Iterator[None]:
    try:
        yield
    finally:
        for node in started:
            node.stop()


def found_provider(asker: Node, cid: str, provider: str) -> bool:
    try:
        return any(r.provider.id == provider for r in asker.dht.FindProvs(
            pb.FindProvsRequest(cid=cid, num_providers=1), timeout=5))
    except grpc.RpcError:
        return False


def got_value(asker: Node, key: bytes) -> bytes | None:
    try:
        return asker.dht.Get(pb.GetRequest(key=key), timeout=5).value
    except grpc.RpcError:
        return None


def test_acknowledged_provides_and_puts_survive_kill_9(tmp_path: Path) -> None:
    cids = [cid_for(f"durable-{i}") for i in range(5)]
    records = {f"/demo/durable-{i}".encode(): f"value-{i}".encode() for i in range(3)}
    old = start_node("old", tmp_path / "old", ["--namespace", "demo"])
    a = start_node("a", tmp_path / "a", ["--bootstrap", old.p2p_addr, *INTERVALS])
    peer_id = a.peer_id
    with nodes(old):
        wait_until(lambda: a.node_info().routing_table_size >= 1, 10, "a to join")
        for _ in a.dht.Provide(pb.ProvideRequest(cids=cids), timeout=20):
            pass
        for key, value in records.items():
            for _ in a.dht.Put(pb.PutRequest(key=key, value=value), timeout=20):
                pass
        a.stop(signal.SIGKILL)
    # A network of fresh peers that never saw any of it.
    fresh = start_node("fresh", tmp_path / "fresh", ["--namespace", "demo"])
    asker = start_node("asker", tmp_path / "asker", ["--bootstrap", fresh.p2p_addr,
                                                      "--namespace", "demo"])
    a = start_node("a2", tmp_path / "a", ["--bootstrap", fresh.p2p_addr, *INTERVALS])
    with nodes(fresh, asker, a):
        assert a.peer_id == peer_id
        for cid in cids:
            wait_until(lambda cid=cid: found_provider(asker, cid, peer_id), 30,
                       f"{cid} announced again by the restarted node")
        for key, value in records.items():
            wait_until(lambda key=key, value=value: got_value(asker, key) == value, 30,
                       f"{key!r} put again by the restarted node")


def test_a_restarted_node_rejoins_from_its_saved_table(tmp_path: Path) -> None:
    boot = start_node("boot", tmp_path / "boot")
    other = start_node("other", tmp_path / "other", ["--bootstrap", boot.p2p_addr])
    a = start_node("a", tmp_path / "a", ["--bootstrap", boot.p2p_addr])
    with nodes(other):
        with nodes(boot):
            wait_until(lambda: a.node_info().routing_table_size >= 2, 20,
                       "a to know boot and other")
            assert a.stop() == 0  # a graceful stop saves the table
        # Its only bootstrap peer is gone; the saved table still names `other`.
        a = start_node("a2", tmp_path / "a", ["--bootstrap", boot.p2p_addr])
        with nodes(a):
            wait_until(lambda: a.node_info().routing_table_size >= 1, 20,
                       "a to rejoin from its saved table")
            found = a.dht.FindPeer(pb.FindPeerRequest(peer_id=other.peer_id), timeout=10)
            assert found.peer.id == other.peer_id


def list_all(call: object, field: str, size: int) -> list[object]:
    items: list[object] = []
    token = ""
    for _ in range(100):
        page = call(size, token)  # type: ignore[operator]
        got = list(getattr(page, field))
        assert len(got) <= size
        items.extend(got)
        token = page.next_page_token
        if not token:
            return items
    raise AssertionError("paging did not end")


def test_records_held_for_others_survive_a_restart(tmp_path: Path) -> None:
    """B provides a CID and puts a record; A, its only peer, holds both. Every node
    but A stops; A restarts (SIGKILL first: the records were never acknowledged
    to anyone, and must survive anyway), and a new peer C that knows only A gets
    B as the provider, with B's address, and gets the value."""
    cid = cid_for("held-for-others")
    key, value = b"/demo/held-for-others", b"B's value"
    a = start_node("a", tmp_path / "a", ["--namespace", "demo"])
    b = start_node("b", tmp_path / "b", ["--bootstrap", a.p2p_addr, "--namespace", "demo"])
    b_id, b_addr = b.peer_id, b.p2p_addr.rsplit("/p2p/", 1)[0]
    with nodes(a, b):
        wait_until(lambda: b.node_info().routing_table_size >= 1, 10, "b to join")
        provided = list(b.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=20))
        assert any(e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER and e.event.id == a.peer_id
                   for e in provided)
        put = list(b.dht.Put(pb.PutRequest(key=key, value=value), timeout=20))
        assert any(e.event.type == pb.QUERY_EVENT_TYPE_FINAL_PEER and e.event.id == a.peer_id
                   for e in put)
        # A holds B's provider record (its FindProvs answers from its store first)...
        assert found_provider(a, cid, b_id)
        # ...and an acknowledged Provide of A's own commits everything its writer
        # ran before (records held for others otherwise commit within
        # dhtd.state.db.COMMIT_DELAY): no wait on a clock.
        list(a.dht.Provide(pb.ProvideRequest(cids=[cid_for("a-own")]), timeout=20))
        b.stop()
        a.stop(signal.SIGKILL)

    a = start_node("a", tmp_path / "a", ["--namespace", "demo"])
    c = start_node("c", tmp_path / "c", ["--bootstrap", a.p2p_addr, "--namespace", "demo"])
    with nodes(a, c):
        wait_until(lambda: c.node_info().routing_table_size >= 1, 10, "c to join")
        found = list(c.dht.FindProvs(pb.FindProvsRequest(cid=cid, num_providers=1), timeout=10))
        assert [f.provider.id for f in found] == [b_id]
        assert b_addr in found[0].provider.addrs
        assert c.dht.Get(pb.GetRequest(key=key), timeout=10).value == value


def test_the_provide_and_put_sets_are_listed_paged_stopped_and_kept(tmp_path: Path) -> None:
    from tests.swarm import dev_node

    cids = [cid_for(f"listed-{i}") for i in range(5)]
    with dev_node("lister", tmp_path / "l") as node:
        list(node.dht.Provide(pb.ProvideRequest(cids=cids), timeout=20))
        list(node.dht.Put(pb.PutRequest(key=b"/demo/kept", value=b"v"), timeout=20))
        list(node.dht.Put(pb.PutRequest(key=b"/demo/dropped", value=b"w"), timeout=20))

        def provides(size: int, token: str) -> object:
            return node.node.ListProvides(pb.ListProvidesRequest(page_size=size, page_token=token),
                                          timeout=5)

        listed = list_all(provides, "cids", 2)
        # Listed as CIDv1 raw of the same multihash: the raw CIDs given come back as given.
        assert sorted(c.cid for c in listed) == sorted(cids)  # type: ignore[attr-defined]
        assert all(c.last_announced > 0 for c in listed)  # type: ignore[attr-defined]
        stopped = node.node.StopProviding(pb.StopProvidingRequest(
            cids=[cids[0], cids[1], cid_for("never-provided")]), timeout=5)
        assert stopped.stopped == 2
        with pytest.raises(grpc.RpcError) as err:
            provides(2, "not hex")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("page_token:")
        with pytest.raises(grpc.RpcError) as err:
            provides(1001, "")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        node.node.StopRepublishing(pb.StopRepublishingRequest(key=b"/demo/dropped"), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            node.node.StopRepublishing(pb.StopRepublishingRequest(key=b"/demo/dropped"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        data_dir = node.data_dir

    # Kept across a restart.
    with dev_node("lister2", data_dir) as node:
        left = list_all(lambda size, token: node.node.ListProvides(
            pb.ListProvidesRequest(page_size=size, page_token=token), timeout=5), "cids", 100)
        assert sorted(c.cid for c in left) == sorted(cids[2:])  # type: ignore[attr-defined]
        puts = node.node.ListPuts(pb.ListPutsRequest(), timeout=5)
        assert [(r.key, r.value) for r in puts.records] == [(b"/demo/kept", b"v")]
        assert puts.records[0].last_put > 0 and puts.next_page_token == ""


def test_a_full_disk_fails_new_commitments_clearly_and_reads_go_on(tmp_path: Path) -> None:
    """dhtd runs under a file-size limit (prlimit --fsize), as on a full disk: its
    files cannot grow past the limit."""
    from tests.swarm import dev_node

    data = tmp_path / "full"
    with dev_node("roomy", data) as node:  # creates identity.key and state.db
        list(node.dht.Provide(pb.ProvideRequest(cids=[cid_for("before-full")]), timeout=20))
    # Room to start (state.db-shm alone is 32 KiB), not to commit 1000 CIDs more: their
    # write-ahead log frames take about 60 KiB, so the commitment fails before any walk.
    limit = 48 * 1024
    node = start_node("full", data, ["--dev-peers", "4"],
                      wrap=["prlimit", f"--fsize={limit}", "--"])
    with nodes(node):
        wait_until(lambda: node.node_info().routing_table_size >= 1, 20, "the dev peers")
        many = [cid_for(f"full-{i}") for i in range(1000)]
        with pytest.raises(grpc.RpcError) as err:
            list(node.dht.Provide(pb.ProvideRequest(cids=many), timeout=60))
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.UNAVAILABLE), err.value
        assert "data dir" in err.value.details()
        # Reads go on: what was committed before is listed and found.
        listed = node.node.ListProvides(pb.ListProvidesRequest(page_size=1000), timeout=10)
        assert cid_for("before-full") in {c.cid for c in listed.cids}
        found = list(node.dht.FindProvs(pb.FindProvsRequest(cid=cid_for("before-full"),
                                                            num_providers=1), timeout=10))
        assert [f.provider.id for f in found] == [node.peer_id]
        assert node.proc.poll() is None  # and the node is still up


def test_a_read_only_data_dir_stops_dhtd_at_start_with_one_line(tmp_path: Path) -> None:
    """The data dir is bind-mounted read-only in a mount namespace of dhtd's own (a
    chmod would not stop root): dhtd refuses to start, in one line naming the dir."""
    from tests.swarm import dev_node

    data = tmp_path / "ro"
    with dev_node("writable", data):  # identity.key, state.db, records.db
        pass
    read_only = (f"mount --bind {data} {data} && mount -o remount,bind,ro {data} "
                 '&& exec "$@"')
    node = spawn_node("ro", data, wrap=["unshare", "--mount", "--propagation", "private",
                                        "sh", "-c", read_only, "sh"])
    assert node.proc.wait(30) != 0
    node.stop()
    errors = [line for line in node.lines if line.get("level") in ("error", "critical")]
    assert len(errors) == 1, node.log_text()
    assert str(data) in str(errors[0]["msg"]) and "Read-only file system" in str(
        errors[0]["msg"]), errors
