"""ProvideMany (CIDs streamed in batches) and ProvideStatus, on real dhtd processes.

One dhtd with 4 dev peers takes 6,000 CIDs in 3 messages from the Python client:
progress arrives per batch (committed, then announced), other RPCs answer
meanwhile, another dhtd finds sampled CIDs, and the set survives kill -9. The
reprovide cycle then runs on its own (--reprovide-interval 8), and
ProvideStatus, dhtctl provide-status and the metrics report it. Errors: a bad
message ends the call with INVALID_ARGUMENT and keeps the batches before it; a
node without peers answers UNAVAILABLE; a cancelled call stops its work.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd_client import Client, InvalidArgumentError, ProvideProgress, UnavailableError
from tests.integration.test_swarm import cid_for
from tests.swarm import Node, dev_node, start_node, wait_until

pytestmark = pytest.mark.integration

CIDS = 6000
BATCH = 2000
INTERVAL = 8.0  # --reprovide-interval: checked every second
DHTCTL = Path(sys.executable).parent / "dhtctl"


def many(prefix: str, count: int) -> list[str]:
    return [cid_for(f"{prefix} {i}") for i in range(count)]


def metric(node: Node, name: str) -> float:
    text = urllib.request.urlopen(f"http://{node.info['metrics_addr']}/metrics",
                                  timeout=10).read().decode()
    found = re.findall(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found[0])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("many")
    with dev_node("many", tmp / "a", ["--reprovide-interval", str(INTERVAL)]) as started:
        yield started


def test_a_stream_of_batches_is_committed_then_announced_batch_by_batch(
        node: Node, tmp_path: Path) -> None:
    cids = many("stream", CIDS)
    pulled: list[int] = []

    def source() -> Iterator[str]:  # a generator: the client never holds the list whole
        for i, cid in enumerate(cids):
            pulled.append(i)
            yield cid

    slowest = [0.0]
    done = threading.Event()

    def ask_meanwhile() -> None:
        with Client(node.grpc_addr, timeout=30) as other:
            while not done.is_set():
                started = time.monotonic()
                other.info()
                slowest[0] = max(slowest[0], time.monotonic() - started)

    asker = threading.Thread(target=ask_meanwhile)
    with Client(node.grpc_addr, timeout=300) as client:
        asker.start()
        try:
            seen = list(client.provide_many(source(), batch_size=BATCH))
        finally:
            done.set()
            asker.join()
        status = client.provide_status()
    assert len(pulled) == CIDS
    # Twice per batch: committed (before announcing), then announced.
    assert len(seen) == 2 * CIDS // BATCH
    for n, (committed, announced) in enumerate(zip(seen[::2], seen[1::2], strict=True), 1):
        assert committed.committed == n * BATCH and committed.batches == n - 1
        assert committed.announced + committed.failed == (n - 1) * BATCH
        assert announced.committed == n * BATCH and announced.batches == n
        assert announced.announced + announced.failed == n * BATCH
    assert seen[-1] == ProvideProgress(received=CIDS, committed=CIDS, announced=CIDS, failed=0,
                                       batches=CIDS // BATCH)
    assert slowest[0] < 1.0, f"Info took {slowest[0]:.2f}s during the stream"
    assert status.cids == CIDS
    assert metric(node, "dht_provide_set_cids") == CIDS

    # Another dhtd, bootstrapped from this one, finds sampled CIDs.
    other = start_node("finder", tmp_path / "finder", ["--bootstrap", node.p2p_addr])
    try:
        wait_until(lambda: other.node_info().routing_table_size >= 4, 20, "the finder's table")
        for cid in random.Random(7).sample(cids, 10):
            found = [r.provider.id for r in other.dht.FindProvs(
                pb.FindProvsRequest(cid=cid, num_providers=1), timeout=30)]
            assert found == [node.peer_id]
    finally:
        other.stop()


def test_the_reprovide_cycle_runs_and_is_reported(node: Node) -> None:
    """Every streamed CID is announced again within a few intervals (the batches were
    announced seconds apart, so more than one cycle may take them), and the status,
    dhtctl and the metrics say so."""
    reprovided = 'dht_reprovide_keys_total{outcome="announced"}'
    wait_until(lambda: metric(node, reprovided) >= CIDS, 120,
               "the reprovide cycles to announce every streamed CID again")
    with Client(node.grpc_addr, timeout=30) as client:
        status = client.provide_status()
    assert status.last is not None and status.last.error == "" and status.last.done > 0
    assert status.last.done + status.last.failed <= status.last.due
    assert status.reprovide_interval == INTERVAL and status.cycles >= 1
    assert status.next_cycle > status.last.started
    assert metric(node, "dht_reprovide_cycles_total") >= 1
    assert metric(node, 'dht_reprovide_keys_total{outcome="failed"}') == 0
    shown = subprocess.run(
        [str(DHTCTL), "--addr", node.grpc_addr, "--json",
         "provide-status"], capture_output=True, text=True, check=True, timeout=60)
    report = json.loads(shown.stdout)
    assert report["cids"] >= CIDS and report["last"]["done"] > 0
    assert report["reprovide_interval"] == INTERVAL
    # Sweeps wait for every store: nothing was left to run in the background.
    assert (report["background_stores"], report["background_failed"]) == (0, 0)


def test_dhtctl_streams_a_file_of_cids(node: Node, tmp_path: Path) -> None:
    cids = many("dhtctl", 250)
    listing = tmp_path / "cids.txt"
    listing.write_text("\n".join(cids) + "\n\n")
    shown = subprocess.run(
        [str(DHTCTL), "--addr", node.grpc_addr,
         "provide-many", str(listing), "--batch", "100"],
        capture_output=True, text=True, check=True, timeout=120)
    assert shown.stdout.strip() == ("250 CIDs in the provide set: 250 announced, 0 reached no "
                                    "peer yet (the reprovide cycle retries them)")


def test_a_bad_message_ends_the_call_and_keeps_the_batches_before_it(node: Node) -> None:
    good = many("kept", 50)
    with Client(node.grpc_addr, timeout=60) as client:
        before = client.provide_status().cids
        batches = [*good, *many("after", 20)]
        batches[60] = "not-a-cid"
        with pytest.raises(InvalidArgumentError,
                           match=r"^INVALID_ARGUMENT: message 1: cids\[10\]: not a CID"):
            list(client.provide_many(batches, batch_size=50))
        assert client.provide_status().cids == before + 50
        assert list(client.provide_many(iter([]))) == []  # no message: nothing to do
    with pytest.raises(grpc.RpcError) as err:
        list(node.dht.ProvideMany(iter([pb.ProvideManyRequest()]), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "message 0: cids: is empty: give at least one CID"
    too_many = pb.ProvideManyRequest(cids=many("too many", 10_001))
    with pytest.raises(grpc.RpcError) as err:
        list(node.dht.ProvideMany(iter([too_many]), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10000 per message" in (err.value.details() or "")


def test_a_cancelled_stream_stops_its_work(node: Node) -> None:
    with Client(node.grpc_addr, timeout=120) as client:
        stream = client.provide_many(many("cancelled", 10_000), batch_size=10_000)
        first = next(stream)  # committed
        assert first.committed == 10_000
        stream.close()
        wait_until(lambda: client.info().queries_in_flight == 0, 10,
                   "the cancelled announcement to stop")


def test_the_streamed_set_survives_kill_9(tmp_path: Path) -> None:
    cids = many("durable", 1000)
    with dev_node("durable", tmp_path / "d") as first, Client(first.grpc_addr) as client:
        progress = list(client.provide_many(cids, batch_size=500))
        assert progress[-1].committed == 1000
        first.stop(signal.SIGKILL)
    with dev_node("durable2", tmp_path / "d") as second, Client(second.grpc_addr) as client:
        assert client.provide_status().cids == 1000
        # (cid_for makes CIDv1 raw CIDs, as ListProvides names them)
        assert sorted(c.cid for c in client.list_provides(page_size=1000)) == sorted(cids)


def test_a_node_without_peers_refuses_at_once(tmp_path: Path) -> None:
    lonely = start_node("lonely", tmp_path / "l")
    try:
        with Client(lonely.grpc_addr, timeout=30) as client:
            with pytest.raises(UnavailableError, match="no DHT peers yet"):
                list(client.provide_many(many("lonely", 10)))
            assert client.provide_status().cids == 0
    finally:
        lonely.stop()
