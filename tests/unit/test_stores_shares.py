"""Shares: the fair accounting under both record stores (dhtd.stores.shares).

What it promises (its module doc): no owner over its share; a total that never
passes the capacity; a full store evicts the oldest entries of its biggest owner,
never taking it below what the newcomer will hold, and refuses (evicting nothing)
when no owner holds more; exempt entries (owner None) are never refused, evicted
nor counted; expiry by age, collected oldest first; O(log owners) per admission.
"""

from __future__ import annotations

import gc
import math
import time
import tracemalloc
from dataclasses import dataclass

import pytest

from dhtd.stores import StoreFull
from dhtd.stores.shares import Shares

NOW = 1_750_000_000.0
HOUR = 3600.0

FULL = "the store is full and no peer holds more than this one"


def shares(capacity: int, per_owner: int = 1_000, max_age: float = HOUR) -> Shares[str]:
    return Shares(capacity=capacity, per_owner=per_owner, max_age=max_age)


Holding = tuple[bytes, int, int] | str


def fill(store: Shares[str], *holdings: Holding) -> None:
    """Admits, per (owner, count, cost), entries "<owner><i>", one second apart;
    a string "-<entry>" removes that entry."""
    t = NOW
    for holding in holdings:
        if isinstance(holding, str):
            assert store.remove(holding.removeprefix("-"))
            continue
        owner, count, cost = holding
        for i in range(count):
            store.admit(f"{owner.decode()}{i}", owner, cost, t)
            t += 1


def usages(store: Shares[str], *owners: bytes) -> dict[bytes, int]:
    return {owner: store.usage(owner) for owner in owners}


# --- construction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "per_owner", "max_age", "message"),
    [
        (0, 1, HOUR, "capacity and per_owner must be at least 1"),
        (1, 0, HOUR, "capacity and per_owner must be at least 1"),
        (-5, -5, HOUR, "capacity and per_owner must be at least 1"),
        (1, 1, 0.0, "max_age must be positive"),
        (1, 1, -1.0, "max_age must be positive"),
        (1, 1, math.nan, "max_age must be positive"),
    ],
)
def test_nonsense_limits_are_refused(
    capacity: int, per_owner: int, max_age: float, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        Shares(capacity=capacity, per_owner=per_owner, max_age=max_age)


def test_the_smallest_limits_are_accepted() -> None:
    store: Shares[str] = Shares(capacity=1, per_owner=1, max_age=0.5)
    assert store.admit("e", b"a", 1, NOW) == []
    assert store.live("e", NOW + 0.49) and not store.live("e", NOW + 0.5)


# --- shares, replacement ---------------------------------------------------------------------


def test_the_share_refusal_names_the_share() -> None:
    store = shares(capacity=100, per_owner=3)
    fill(store, (b"a", 3, 1))
    with pytest.raises(StoreFull) as refused:
        store.admit("x", b"a", 1, NOW)
    assert str(refused.value) == "this peer's share of the store is used up (3 units)"
    assert usages(store, b"a") == {b"a": 3} and store.get("x") is None


@dataclass(frozen=True)
class Replace:
    """A store filled with ``holdings``, then ``entry`` admitted again."""

    name: str
    capacity: int
    per_owner: int
    holdings: tuple[tuple[bytes, int, int], ...]
    entry: str
    owner: bytes | None
    cost: int
    evicted: list[str]
    after: dict[bytes, int]


REPLACEMENTS = [
    Replace("an owner at its full share replaces its own entry",
            capacity=100, per_owner=3, holdings=((b"a", 3, 1),),
            entry="a1", owner=b"a", cost=1, evicted=[], after={b"a": 3}),
    Replace("an owner at its full share shrinks its own entry",
            capacity=100, per_owner=4, holdings=((b"a", 2, 2),),
            entry="a0", owner=b"a", cost=1, evicted=[], after={b"a": 3}),
    Replace("an owner grows its own entry up to its share",
            capacity=100, per_owner=4, holdings=((b"a", 2, 1),),
            entry="a0", owner=b"a", cost=3, evicted=[], after={b"a": 4}),
    Replace("in a full store, replacing an entry at the same cost evicts nothing",
            capacity=6, per_owner=6, holdings=((b"a", 4, 1), (b"b", 2, 1)),
            entry="b0", owner=b"b", cost=1, evicted=[], after={b"a": 4, b"b": 2}),
    Replace("in a full store, taking over another owner's entry at its cost evicts nothing",
            capacity=6, per_owner=6, holdings=((b"a", 4, 1), (b"b", 2, 1)),
            entry="a3", owner=b"b", cost=1, evicted=[], after={b"a": 3, b"b": 3}),
    Replace("taking over the biggest owner's oldest entry evicts its next oldest",
            capacity=10, per_owner=10, holdings=((b"a", 6, 1), (b"b", 4, 1)),
            entry="a0", owner=b"c", cost=2, evicted=["a1"],
            after={b"a": 4, b"b": 4, b"c": 2}),
    Replace("an exempt entry taken over by an owner now counts, so room is made",
            capacity=4, per_owner=4, holdings=((b"a", 4, 1),),
            entry="mine", owner=b"b", cost=1, evicted=["a0"], after={b"a": 3, b"b": 1}),
    Replace("this node takes over an owner's entry: the owner is paid back",
            capacity=4, per_owner=4, holdings=((b"a", 4, 1),),
            entry="a2", owner=None, cost=50, evicted=[], after={b"a": 3}),
]


@pytest.mark.parametrize("case", REPLACEMENTS, ids=lambda c: c.name)
def test_replacing_an_entry(case: Replace) -> None:
    store = shares(case.capacity, case.per_owner)
    store.admit("mine", None, 1, NOW - 10)
    fill(store, *case.holdings)
    assert store.admit(case.entry, case.owner, case.cost, NOW + 100) == case.evicted
    found = store.get(case.entry)
    assert found is not None
    assert (found.owner, found.cost, found.received_at) == (case.owner, case.cost, NOW + 100)
    assert usages(store, *case.after) == case.after
    assert store.total == sum(case.after.values()) <= case.capacity
    for gone in case.evicted:
        assert store.get(gone) is None


def test_a_refused_replacement_keeps_the_old_entry() -> None:
    store = shares(capacity=100, per_owner=4)
    fill(store, (b"a", 2, 2))
    with pytest.raises(StoreFull, match="share"):
        store.admit("a0", b"a", 3, NOW + 100)
    found = store.get("a0")
    assert found is not None and (found.owner, found.cost, found.received_at) == (b"a", 2, NOW)
    assert store.usage(b"a") == 4


# --- a full store ------------------------------------------------------------------------


@dataclass(frozen=True)
class Evict:
    """A store of ``capacity`` filled by ``holdings``; then ``cost`` admitted for the
    newcomer b"n" evicts ``evicted`` (None: refused, nothing evicted)."""

    name: str
    capacity: int
    holdings: tuple[Holding, ...]
    cost: int
    evicted: list[str] | None


EVICTIONS = [
    Evict("one entry from the biggest owner",
          capacity=10, holdings=((b"a", 6, 1), (b"b", 4, 1)), cost=1, evicted=["a0"]),
    Evict("as many of the biggest's oldest as the newcomer needs",
          capacity=6, holdings=((b"a", 4, 1), (b"b", 2, 1)), cost=2, evicted=["a0", "a1"]),
    Evict("never below what the newcomer will hold: then the next biggest",
          capacity=9, holdings=((b"a", 5, 1), (b"b", 4, 1)), cost=3,
          evicted=["a0", "a1", "b0"]),
    Evict("the biggest by cost, not by count",
          capacity=8, holdings=((b"b", 2, 1), (b"a", 1, 5), (b"c", 1, 1)), cost=1,
          evicted=["a0"]),
    Evict("the biggest now, not the biggest before removals",
          capacity=3, holdings=((b"a", 3, 1), "-a0", "-a1", (b"b", 2, 1)), cost=1,
          evicted=["b0"]),
    Evict("an owner that grew and shrank is taken from once per need",
          capacity=9, holdings=((b"a", 6, 1), "-a5", (b"b", 4, 1)), cost=3,
          evicted=["a0", "a1", "b0"]),
    Evict("refused when no owner holds more than the newcomer would",
          capacity=4, holdings=((b"a", 2, 1), (b"b", 2, 1)), cost=2, evicted=None),
    Evict("refused when evicting down to the newcomer does not make room",
          capacity=5, holdings=((b"a", 5, 1),), cost=3, evicted=None),
    Evict("refused when the entry is bigger than the whole store",
          capacity=5, holdings=(), cost=6, evicted=None),
    Evict("refused when the owners are no bigger than the newcomer, however many",
          capacity=6, holdings=((b"a", 1, 1), (b"b", 1, 1), (b"c", 1, 1), (b"d", 1, 1),
                                (b"e", 1, 1), (b"f", 1, 1)), cost=1, evicted=None),
]


@pytest.mark.parametrize("case", EVICTIONS, ids=lambda c: c.name)
def test_a_full_store_evicts_fairly_or_refuses(case: Evict) -> None:
    store = shares(case.capacity, per_owner=100)
    fill(store, *case.holdings)
    store.admit("mine", None, 1_000, NOW + 50)  # exempt: counts nothing, never evicted
    owners = [h[0] for h in case.holdings if not isinstance(h, str)]
    before = usages(store, *owners)
    held = len(store)
    if case.evicted is None:
        with pytest.raises(StoreFull) as refused:
            store.admit("new", b"n", case.cost, NOW + 100)
        assert str(refused.value) == FULL
        assert usages(store, *owners) == before and len(store) == held
        assert store.get("new") is None and store.usage(b"n") == 0
        return
    assert store.admit("new", b"n", case.cost, NOW + 100) == case.evicted
    assert len(store) == held + 1 - len(case.evicted)
    assert store.total <= case.capacity and store.usage(b"n") == case.cost
    for gone in case.evicted:
        assert store.get(gone) is None
    freed = sum(h[2] for h in case.holdings if not isinstance(h, str)
                for i in range(h[1]) if f"{h[0].decode()}{i}" in case.evicted)
    assert sum(usages(store, *owners).values()) == sum(before.values()) - freed
    assert store.get("mine") is not None


def test_the_biggest_owner_is_found_after_any_number_of_changes() -> None:
    """However many admissions came before (the heap of owners is rebuilt from time
    to time), a full store still evicts from its biggest owner."""
    for changes in range(2, 150):
        store = shares(capacity=changes + 1)
        fill(store, (b"a", changes, 1), (b"b", 1, 1))
        assert store.admit("new", b"n", 1, NOW + 1_000) == ["a0"], changes


def test_evictions_go_on_taking_from_the_biggest_as_it_changes() -> None:
    """A run of newcomers in a full store: each takes the oldest entry of whoever is
    biggest at the time, until no one holds more than a newcomer."""
    store = shares(capacity=12, per_owner=12)
    fill(store, (b"a", 6, 1), (b"b", 4, 1), (b"c", 2, 1))
    owners = (b"a", b"b", b"c")
    taken: dict[bytes, int] = {owner: 0 for owner in owners}
    for i in range(9):
        held = usages(store, *owners)
        evicted = store.admit(f"n{i}", b"n%d" % i, 1, NOW + 100 + i)
        assert len(evicted) == 1, (i, evicted)
        owner = evicted[0][:1].encode()
        assert held[owner] == max(held.values()), (i, evicted, held)
        assert evicted[0] == f"{owner.decode()}{taken[owner]}"  # its oldest
        taken[owner] += 1
    assert usages(store, *owners) == {b"a": 1, b"b": 1, b"c": 1} and store.total == 12
    with pytest.raises(StoreFull, match=f"^{FULL}$"):
        store.admit("last", b"last", 1, NOW + 200)


# --- entries, costs, expiry ------------------------------------------------------------------


def test_exempt_entries_are_never_refused_evicted_nor_counted() -> None:
    store = shares(capacity=3, per_owner=2)
    store.admit("mine-0", None, 10, NOW)
    fill(store, (b"a", 2, 1), (b"b", 1, 1))
    assert store.admit("mine-1", None, 10, NOW) == []
    assert store.total == 3 and len(store) == 5
    assert store.admit("c0", b"c", 1, NOW + 5) == ["a0"]
    assert store.get("mine-0") is not None and store.get("mine-1") is not None


def test_zero_cost_entries_are_held_and_counted_as_nothing() -> None:
    store = shares(capacity=1, per_owner=1)
    assert store.admit("free", b"a", 0, NOW) == []
    assert store.usage(b"a") == 0 and store.total == 0 and len(store) == 1
    assert store.admit("paid", b"a", 1, NOW) == []
    assert store.remove("free") and store.get("free") is None
    assert store.usage(b"a") == 1
    assert store.remove("paid") and store.usage(b"a") == 0 and store.total == 0
    assert store.admit("free", b"a", 0, NOW) == []
    assert store.remove("free") and len(store) == 0


def test_remove_says_whether_the_entry_was_held_and_frees_its_cost() -> None:
    store = shares(capacity=10)
    fill(store, (b"a", 2, 3))
    assert store.remove("a0") is True
    assert store.remove("a0") is False
    assert store.remove("never") is False
    assert store.get("a0") is None and store.usage(b"a") == 3 and store.total == 3
    assert store.remove("a1") is True
    assert store.usage(b"a") == 0 and store.total == 0 and len(store) == 0


def test_removed_entries_are_not_evicted_again() -> None:
    """Entries gone by removal or collection leave their owner's eviction order."""
    store = shares(capacity=6, per_owner=6)
    fill(store, (b"a", 5, 1))
    assert store.collect(NOW + HOUR, 1) == ["a0"]
    assert store.remove("a1")
    fill(store, (b"b", 3, 1))
    assert store.admit("new", b"n", 1, NOW + HOUR) == ["a2"]


@pytest.mark.parametrize(
    ("age", "live"),
    [(0.0, True), (HOUR - 0.001, True), (HOUR, False), (HOUR + 1, False)],
)
def test_an_entry_lives_for_max_age(age: float, live: bool) -> None:
    store = shares(capacity=10)
    store.admit("e", b"a", 1, NOW)
    store.admit("mine", None, 1, NOW)
    assert store.live("e", NOW + age) is live
    assert store.live("mine", NOW + age) is live
    assert store.live("unknown", NOW + age) is False
    assert store.collect(NOW + age, 10) == ([] if live else ["e", "mine"])


def test_a_readmitted_entry_expires_from_its_new_reception() -> None:
    store = shares(capacity=10)
    fill(store, (b"a", 3, 1))
    store.admit("a0", b"a", 1, NOW + 10)
    assert store.collect(NOW + HOUR + 5, 10) == ["a1", "a2"]
    assert store.live("a0", NOW + HOUR + 5)
    assert store.collect(NOW + HOUR + 10, 10) == ["a0"]
    assert store.usage(b"a") == 0


def test_a_departed_peer_costs_no_memory() -> None:
    """Peers come and go by the thousand: once a peer holds nothing, the store keeps
    nothing of it (no per-peer bookkeeping grows without bound)."""
    store = shares(capacity=10)
    store.admit("warm-up", b"warm-up", 1, NOW)
    store.remove("warm-up")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5_000):
            store.admit(f"e{i}", b"peer-%d" % i, 1, NOW)
            assert store.remove(f"e{i}")
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown


def test_an_eviction_does_not_visit_every_owner() -> None:
    """The biggest owner comes from a heap, O(log owners): a store of 50 times more
    owners must not make an eviction anywhere near 50 times slower. (The bound is
    loose: planning an eviction copies the per-owner usages, a cheap step but one
    linear in the owners, against the module's O(log owners).)"""

    def eviction_cost(owners: int) -> float:
        best = math.inf
        for _ in range(3):
            store = shares(capacity=owners + 1_000, per_owner=1_000)
            fill(store, (b"big", 1_000, 1))
            for i in range(owners):
                store.admit(f"s{i}", b"small-%d" % i, 1, NOW + 5_000)
            t0 = time.perf_counter()
            for i in range(500):
                assert store.admit(f"n{i}", b"new-%d" % i, 1, NOW + 6_000) == [f"big{i}"]
            best = min(best, time.perf_counter() - t0)
        return best

    few, many = eviction_cost(100), eviction_cost(5_000)
    assert many < few * 15, (few, many)


def test_a_victim_gives_up_several_entries_but_never_drops_below_the_newcomer() -> None:
    """V holds 8, W 7, N 1 of a store of 16. N adds an entry of cost 4 (it will hold 5):
    4 units must go. V gives its 3 oldest (down to 5, N's size, no further), then W
    its oldest."""
    shares: Shares[str] = Shares(16, 16, math.inf)
    for i in range(8):
        shares.admit(f"v{i}", b"V", 1, float(i))
    for i in range(7):
        shares.admit(f"w{i}", b"W", 1, float(10 + i))
    shares.admit("n0", b"N", 1, 20.0)
    assert shares.admit("n1", b"N", 4, 21.0) == ["v0", "v1", "v2", "w0"]
    assert (shares.usage(b"V"), shares.usage(b"W"), shares.usage(b"N")) == (5, 6, 5)
