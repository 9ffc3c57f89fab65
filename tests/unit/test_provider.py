"""Unit tests for dhtd.provider.cycle: the reprovide cycle and its status."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from dhtd.errors import Unavailable
from dhtd.ids import kad_key
from dhtd.lookup import EventType, PeerRecord, QueryEvent
from dhtd.provider import EARLY, Cycle, ProvideSet, Reprovider, check_period
from dhtd.provider import cycle as cycle_module

KEYS = [b"\x12\x20" + kad_key(b"cycle %d" % i) for i in range(30)]
IN_KAD_ORDER = sorted(KEYS, key=kad_key)


class Announcer:
    """Stands in for DhtNode.provide: records each chunk, fails the keys in ``failing``."""

    def __init__(self, keys: ProvideSet) -> None:
        self.keys = keys
        self.chunks: list[list[bytes]] = []
        self.failing: set[bytes] = set()
        self.down = False

    def flat(self) -> list[bytes]:
        return [key for chunk in self.chunks for key in chunk]

    async def __call__(self, keys: Sequence[bytes], timeout: float) -> list[int]:
        if self.down:
            raise Unavailable("no peers")
        self.chunks.append(list(keys))
        counts = [0 if k in self.failing else 20 for k in keys]
        self.keys.announced([k for k, n in zip(keys, counts, strict=True) if n],
                            trio.current_time())
        return counts


def reprovider(keys: ProvideSet, announcer: Announcer, interval: float = 800.0,
               busy: frozenset[bytes] = frozenset()) -> Reprovider:
    return Reprovider(keys=keys, provide=announcer, ready=lambda: True, busy=busy.__contains__,
                      clock=trio.current_time, interval=lambda: interval, timeout=60.0)


def test_a_cycle_announces_due_and_nearly_due_keys_in_keyspace_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys due, or due within interval * EARLY, are announced in Kademlia-key order,
    CHUNK at a time; later keys, and keys a Provide is announcing, are left alone."""
    monkeypatch.setattr(cycle_module, "CHUNK", 4)

    async def main() -> None:
        keys = ProvideSet()
        await keys.add(KEYS, 0.0)
        # The cycle runs at 1000 with an interval of 800:
        keys.announced(KEYS[:10], 150.0)  # due
        keys.announced(KEYS[10:20], 300.0)  # due within EARLY * 800 = 100 s
        keys.announced(KEYS[20:], 301.0)  # not yet
        announcer = Announcer(keys)
        busy = frozenset(KEYS[:2])
        cycles = reprovider(keys, announcer, busy=busy)
        await trio.sleep(1000)
        ended = await cycles.cycle(trio.current_time() - 800 + 800 * EARLY)
        wanted = [k for k in IN_KAD_ORDER if k in KEYS[:20]]
        assert announcer.flat() == [k for k in wanted if k not in busy]
        assert all(len(c) <= 4 for c in announcer.chunks)
        assert (ended.due, ended.done, ended.failed, ended.error) == (20, 18, 0, "")
        assert ended.started == 1000 and ended.ended == 1000
        assert cycles.last == ended and cycles.current is None
        assert all(keys[k] == 1000 for k in KEYS[2:20])
        assert keys[KEYS[0]] == 150.0 and keys[KEYS[20]] == 301.0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_loop_starts_a_cycle_when_a_key_falls_due_as_its_status_said() -> None:
    """Nothing is announced before a key is an interval old; the status's next cycle
    time is when the cycle starts; failed keys are due again at the next check."""

    async def main() -> None:
        keys = ProvideSet()
        await keys.add(KEYS[:5], 0.0)
        keys.announced(KEYS[:5], 0.0)
        announcer = Announcer(keys)
        announcer.failing = {KEYS[0]}
        cycles = reprovider(keys, announcer, interval=100.0)
        assert check_period(100.0) == 10.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cycles.run)
            await trio.sleep(1)
            status = cycles.status()
            assert (status.keys, status.interval, status.current, status.last) == (
                5, 100.0, None, None)
            assert status.next_cycle == 100.0
            await trio.sleep(98.5)
            assert announcer.chunks == []
            await trio.sleep(1)
            assert sorted(announcer.flat()) == sorted(KEYS[:5])
            last = cycles.status().last
            assert last is not None and (last.started, last.done, last.failed) == (100, 4, 1)
            # The failed key is still due: the next check announces it again, alone.
            assert cycles.status().next_cycle == 110.0
            await trio.sleep(10)
            assert announcer.chunks[-1] == [KEYS[0]]
            announcer.failing.clear()
            await trio.sleep(10)
            assert announcer.chunks[-1] == [KEYS[0]]
            assert cycles.status().next_cycle == 200.0 and len(announcer.chunks) == 3
            assert (cycles.cycles, cycles.announced, cycles.failures) == (3, 5, 2)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cycle_that_loses_its_peers_ends_with_the_reason_and_is_retried() -> None:
    async def main() -> None:
        keys = ProvideSet()
        await keys.add(KEYS[:3], 0.0)
        announcer = Announcer(keys)
        announcer.down = True
        cycles = reprovider(keys, announcer, interval=10.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cycles.run)
            await trio.sleep(10.5)  # due at 10 (checked every second)
            last = cycles.status().last
            assert last is not None and last.error == "no peers" and last.done == 0
            announcer.down = False
            await trio.sleep(1)
            last = cycles.status().last
            assert last is not None and (last.error, last.done) == ("", 3)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_check_period_is_a_tenth_of_the_interval_within_a_second_and_an_hour() -> None:
    assert check_period(4.5) == 1.0
    assert check_period(100.0) == 10.0
    assert check_period(22 * 3600.0) == 3600.0


def test_a_cycle_is_timed_from_its_start_to_its_end_or_now() -> None:
    assert Cycle(started=10.0, due=0, ended=15.0).duration(100.0) == 5.0
    assert Cycle(started=10.0, due=0).duration(12.5) == 2.5


def test_the_next_cycle_is_predicted_before_the_loop_ever_ran() -> None:
    """A node that just started says its next cycle is the first check (counted from
    0 until the loop runs) at or after the oldest key falls due."""

    async def main() -> None:
        keys = ProvideSet()
        await keys.add(KEYS[:2], 0.0)
        keys.announced(KEYS[:2], 5.0)
        cycles = reprovider(keys, Announcer(keys), interval=100.0)
        assert cycles.next_cycle() == 110.0  # checks every 10 s: 0, 10, ..., 110 >= 105
        assert reprovider(ProvideSet(), Announcer(keys)).next_cycle() is None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_chunk_of_busy_keys_does_not_end_the_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first chunk holds only keys a Provide is announcing: they are skipped and
    the cycle goes on to the next chunk. The running cycle is reported meanwhile."""
    monkeypatch.setattr(cycle_module, "CHUNK", 2)

    async def main() -> None:
        keys = ProvideSet()
        await keys.add(KEYS[:6], 0.0)
        busy = frozenset([k for k in IN_KAD_ORDER if k in KEYS[:6]][:2])  # the first chunk
        seen: list[object] = []

        class Watching(Announcer):
            async def __call__(self, chunk: Sequence[bytes], timeout: float) -> list[int]:
                seen.append(cycles.status().current)
                return await super().__call__(chunk, timeout)

        announcer = Watching(keys)
        cycles = reprovider(keys, announcer, busy=busy)
        await trio.sleep(1000)
        ended = await cycles.cycle(trio.current_time())
        assert announcer.flat() == [k for k in IN_KAD_ORDER if k in KEYS[:6] and k not in busy]
        assert ended.done == 4 and ended.due == 6
        assert seen and all(c is not None and c.due == 6 for c in seen)  # type: ignore[attr-defined]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --- provider/batch.py: many keys in one sweep ---------------------------------------------


NETWORK = [PeerRecord(b"\x00\x24" + kad_key(b"peer %d" % i), (b"addr %d" % i,))
           for i in range(12)]


def test_a_batched_announcement_sends_each_key_to_its_k_nearest_and_reports_each_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """k = 3 of 12 peers: each key goes to its own 3 nearest, with SENDING_QUERY then
    FINAL_PEER (naming the peer, with its record) or QUERY_ERROR (with the reason);
    a peer whose send failed gets none of its later keys; at most ``lookups``
    lookups run at once; the loop over the plan yields every CHECKPOINT keys."""
    from dhtd import sweep
    from dhtd.provider import batch

    monkeypatch.setattr(sweep, "CHECKPOINT", 100)
    yields = [0]

    async def counted() -> None:
        yields[0] += 1
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(batch, "_checkpoint", counted)
    keys = [b"\x12\x20" + kad_key(b"batch key %d" % i) for i in range(199)]
    broken = NETWORK[0].id
    sent: list[tuple[bytes, bytes]] = []
    events: list[tuple[bytes, QueryEvent]] = []
    running = [0, 0]  # now, most at once

    def nearest(target: bytes, k: int) -> list[PeerRecord]:
        at = int.from_bytes(kad_key(target), "big")
        return sorted(NETWORK, key=lambda p: int.from_bytes(kad_key(p.id), "big") ^ at)[:k]

    async def closest(target: bytes) -> tuple[list[PeerRecord], list[bytes]]:
        running[0] += 1
        running[1] = max(running)
        await trio.sleep(0.01)
        running[0] -= 1
        return nearest(target, 3), []

    async def send(peer: bytes, key: bytes) -> None:
        sent.append((peer, key))
        await trio.lowlevel.checkpoint()
        if peer == broken:
            raise ConnectionResetError("gone")

    async def main() -> dict[bytes, int]:
        return await batch.announce(keys, closest, send, lambda k, e: events.append((k, e)),
                                    k=3, lookups=2)

    taken = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert running[1] <= 2
    assert yields[0] == 1  # 199 keys, a yield every 100th: at the 100th only
    first_broken = next(k for p, k in sent if p == broken)
    assert [k for p, k in sent if p == broken] == [first_broken]
    for key in keys:
        mine = nearest(key, 3)
        got = [(e.type, e.peer, e.responses, e.extra) for k, e in events if k == key]
        want = []
        for peer in sorted(mine, key=lambda p: [q.id for q in NETWORK].index(p.id)):
            want.append((EventType.SENDING_QUERY, peer.id, (), ""))
            if peer.id == broken:
                want.append((EventType.QUERY_ERROR, peer.id, (), "gone"))
            else:
                want.append((EventType.FINAL_PEER, peer.id, (peer,), ""))
        assert sorted(got, key=repr) == sorted(want, key=repr), key
        assert taken[key] == sum(1 for p in mine if p.id != broken)
