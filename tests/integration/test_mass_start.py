"""A mass start and churn, as issue 8 asks for them (the long version, with CPU
figures: bench/mass_start.py, which this shares its network with).

102 DHT nodes in 6 dhtd processes (one main node and 16 dev peers each), started
at the same moment, each process bootstrapped to one other only (a ring). Within
60 s of the last start, FindProvs, Get and FindPeer across processes succeed at
least 19 of 20 times, and Query finds on average at least 19 of the true 20
closest. Then a third of the processes are killed with SIGKILL while lookups run:
no call outlives its deadline, the survivors' lookups succeed 19 of 20 again, and
within DEAD_GONE_WITHIN no survivor's walk toward a dead node meets any of the
other dead ones (they left the routing tables the walks start from, and those of
every peer the walks asked).
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from bench.mass_start import CALL_TIMEOUT, Network, measure, network
from dht.v1 import dht_pb2 as pb
from tests.swarm import wait_until

PROCESSES = 6
DEV_PEERS = 16
WITHIN = 60.0
NEED = 19
ROUNDS = 20
# Ours: the survivors' liveness checks (dhtd.refresh: a closed connection is
# checked after 1 s, a ping gets 5 s, the maintainer wakes every 5 s) drop a
# killed peer in about 10 s; twice that, stated here.
DEAD_GONE_WITHIN = 20.0
# A call may end this much after its deadline (the client's clock, the server's
# last message): anything later outlived it.
DEADLINE_SLACK = 0.5


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("mass"), PROCESSES, DEV_PEERS) as started:
        yield started


def converged(figures: dict[str, float]) -> bool:
    return (all(figures[k] >= NEED for k in ("findprovs", "get", "findpeer"))
            and figures["query_overlap"] >= NEED)


def live(net: Network) -> Network:
    procs = [p for p in net.procs if p.proc.poll() is None]
    ids = [p.peer_id for p in procs] + [d for p in procs for d in p.dev_peer_ids()]
    return Network(procs, ids, net.started, net.ready)


def test_a_mass_start_converges_within_60_s(net: Network) -> None:
    assert len(net.peer_ids) == PROCESSES * (1 + DEV_PEERS) >= 100
    rng = random.Random(8)
    history = []
    for attempt in range(100):
        figures = measure(net, rng, f"start{attempt}", ROUNDS)
        at = time.monotonic() - net.started
        history.append((round(at, 1), figures))
        if converged(figures) or at > WITHIN:
            break
    at, figures = history[-1]
    assert converged(figures) and at <= WITHIN, history


def test_churn_a_third_killed_mid_workload(net: Network) -> None:
    victims = net.procs[: PROCESSES // 3]
    survivors = net.procs[PROCESSES // 3:]
    dead = {p.peer_id for p in victims} | {d for p in victims for d in p.dev_peer_ids()}
    durations: list[float] = []
    stop = threading.Event()

    def workload() -> None:  # lookups from survivors, before, during and after the kill
        rng = random.Random(9)
        for i in range(10_000):
            if stop.is_set():
                return
            node = survivors[i % len(survivors)]
            start = time.monotonic()
            with contextlib.suppress(grpc.RpcError):
                list(node.dht.Query(pb.QueryRequest(peer_id=rng.choice(net.peer_ids)),
                                    timeout=CALL_TIMEOUT))
            durations.append(time.monotonic() - start)

    worker = threading.Thread(target=workload, daemon=True)
    worker.start()
    try:
        wait_until(lambda: len(durations) >= 5, 60, "the workload to run")
        for victim in victims:
            victim.proc.send_signal(signal.SIGKILL)
        for victim in victims:
            victim.proc.wait(timeout=10)
        killed = time.monotonic()
        after = live(net)
        figures = measure(after, random.Random(10), "churn", ROUNDS)
        assert converged(figures), figures

        def no_walk_meets_the_dead() -> bool:
            # Walks toward each dead main node: its dead dev peers are the nearest
            # to it, so a table still holding them names them. (The target itself
            # is named by whoever still has its addresses, as a FIND_NODE for a
            # peer ID answers in go-libp2p-kad-dht too: not a table entry.)
            for node in survivors:
                for target in [p.peer_id for p in victims]:
                    events = node.dht.Query(pb.QueryRequest(peer_id=target),
                                            timeout=CALL_TIMEOUT)
                    if any(e.event.id in dead - {target} for e in events):
                        return False
            return True

        wait_until(no_walk_meets_the_dead, DEAD_GONE_WITHIN + killed - time.monotonic(),
                   "the survivors' walks to stop meeting dead peers")
    finally:
        stop.set()
        worker.join(timeout=2 * CALL_TIMEOUT)
    assert durations and max(durations) <= CALL_TIMEOUT + DEADLINE_SLACK, max(durations)
