"""dhtd.blocks: CAR files, block checks and links, the DAG walk, sources, and the
recursive provide's outcomes (over a fake node; real processes in
tests/integration/test_recursive_provide.py)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import cbor2
import pytest
import trio

from dhtd.blocks.car import MAX_SECTION_BYTES, CarError, CarReader, read_cid
from dhtd.blocks.dag import BadBlock, links, verify
from dhtd.blocks.provide import NO_SOURCE, provide_dags
from dhtd.blocks.sources import CarDirectory, RootNotFound, SourceUnavailable, parse_source
from dhtd.blocks.walk import MAX_DAG_BLOCKS, DagTooLarge, MissingBlock, walk
from dhtd.errors import DataLoss, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from dhtd.ids import RAW, Cid
from dhtd.lookup import EventType, QueryEvent
from tests.dag import (
    DAG_CBOR,
    Block,
    _varint,
    car_v1,
    car_v2,
    dag_cbor,
    dag_pb,
    link,
    raw,
    sample_dag,
    sha256_mh,
)
from tests.gateway import gateway


class Bytes:
    """A ByteSource over bytes, ``step`` at a time (to cut sections anywhere)."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.pos, self.step = data, 0, step

    async def read(self, max_bytes: int) -> bytes:
        chunk = self.data[self.pos:self.pos + min(max_bytes, self.step)]
        self.pos += len(chunk)
        return chunk


async def read_all(data: bytes) -> tuple[tuple[Cid, ...], list[Block]]:
    reader = CarReader(Bytes(data))
    header = await reader.header()
    return header.roots, [block async for block in reader.blocks()]


# --- CAR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [car_v1, car_v2])
def test_a_car_gives_its_roots_and_blocks_in_order(write: Callable[..., bytes]) -> None:
    dag = sample_dag()
    roots, blocks = trio.run(read_all, write([dag.root], dag.blocks))
    assert roots == (dag.root,) and blocks == dag.blocks


@pytest.mark.parametrize(("data", "error"), [
    (b"", "the input is empty: not a CAR"),
    (_varint(3) + b"abc", "the header is not a CAR header"),
    (_varint(10**6) + b"x", "a header of 1000000 bytes (at most 65536)"),
    (car_v1([], [])[:-1], "the CAR ends inside its header"),
])
def test_what_is_not_a_car_is_told_apart(data: bytes, error: str) -> None:
    with pytest.raises(CarError, match=error.replace("(", r"\(").replace(")", r"\)")):
        trio.run(read_all, data)


def test_a_car_of_another_version_or_with_a_foreign_root_is_refused() -> None:
    header = cbor2.dumps({"roots": [], "version": 3})
    with pytest.raises(CarError, match="CAR version 3 is not supported"):
        trio.run(read_all, _varint(len(header)) + header)
    header = cbor2.dumps({"roots": [b"not a link"], "version": 1})
    with pytest.raises(CarError, match=r"roots must be CID links \(tag 42\)"):
        trio.run(read_all, _varint(len(header)) + header)


def test_sections_are_bounded_and_whole() -> None:
    cid, data = raw(b"x")
    good = car_v1([cid], [(cid, data)])
    with pytest.raises(CarError, match="the CAR ends inside a section"):
        trio.run(read_all, good[:-1])
    huge = car_v1([cid], []) + _varint(MAX_SECTION_BYTES + 1)
    with pytest.raises(CarError,
                       match=r"a section of 2097409 bytes \(blocks are at most 2097152\)"):
        trio.run(read_all, huge)
    with pytest.raises(CarError, match="a section's CID"):
        trio.run(read_all, car_v1([cid], []) + _varint(3) + b"\x05\x01\x02")


def test_a_carv2_is_read_within_its_data_size() -> None:
    cid, data = raw(b"x")
    other, more = raw(b"y")
    v2 = car_v2([cid], [(cid, data), (other, more)], padding=0)
    last = len(_varint(len(other.to_bytes() + more))) + len(other.to_bytes() + more)
    with pytest.raises(CarError, match="ends before its data size"):
        trio.run(read_all, v2[:-last])  # whole sections, but fewer than it says
    with pytest.raises(CarError, match="the CAR ends inside a section"):
        trio.run(read_all, v2[:-1])
    with pytest.raises(CarError, match="points into its header"):
        bad = bytearray(v2)
        bad[11 + 16:11 + 24] = (20).to_bytes(8, "little")
        trio.run(read_all, bytes(bad))


def test_binary_cids_of_both_versions_are_read_with_their_length() -> None:
    v0 = Cid(0, 0x70, sha256_mh(b"a"))
    v1 = Cid(1, RAW, sha256_mh(b"b"))
    data = v0.to_bytes() + v1.to_bytes() + b"rest"
    first, end = read_cid(data)
    second, end2 = read_cid(data, end)
    assert (first, second, data[end2:]) == (v0, v1, b"rest")
    for bad, why in ((v1.to_bytes()[:-1], "cut short"), (b"\x02\x55", "version 2"),
                     (v0.to_bytes()[:-1], "cut short")):
        with pytest.raises(ValueError, match=why):
            read_cid(bad)


# --- blocks: checks and links -------------------------------------------------------------


def test_a_block_must_hash_to_its_cid() -> None:
    cid, data = raw(b"content")
    verify(cid, data)
    with pytest.raises(BadBlock, match="do not hash to its CID") as bad:
        verify(cid, b"tampered")
    assert bad.value.mismatch and bad.value.cid == cid
    other = Cid(1, RAW, b"\x13\x40" + hashlib.sha512(b"x").digest())  # sha2-512
    verify(other, b"x")
    blake2b = Cid(1, RAW, b"\xa0\xe4\x02\x20" + hashlib.blake2b(b"x", digest_size=32).digest())
    verify(blake2b, b"x")
    unknown = Cid(1, RAW, b"\x99\x01\x02ab")
    with pytest.raises(BadBlock, match="hash function 0x99 is not supported") as bad:
        verify(unknown, b"x")
    assert not bad.value.mismatch


def test_links_of_each_codec_are_read_in_order() -> None:
    dag = sample_dag()
    by_cid = dict(dag.blocks)
    a, b, sub, c = dag.cids[2], dag.cids[3], dag.cids[4], dag.cids[5]
    assert links(dag.cids[1], by_cid[dag.cids[1]]) == [a, b, sub]
    assert links(sub, by_cid[sub]) == [a, c]  # a CIDv0 dag-pb node
    assert links(dag.root, by_cid[dag.root]) == [dag.cids[1], dag.cids[6], a]
    assert links(a, by_cid[a]) == []


def test_malformed_blocks_say_what_is_wrong() -> None:
    bad_pb = b"\x12\x03\x0a\x01\xff"  # a link whose Hash is one byte
    cid = Cid(1, 0x70, sha256_mh(bad_pb))
    with pytest.raises(BadBlock, match="not valid dag-pb"):
        links(cid, bad_pb)
    stray = b"\x18\x01"  # field 3, a varint: not part of a PBNode
    with pytest.raises(BadBlock, match="field 3 is not part of a PBNode"):
        links(Cid(1, 0x70, sha256_mh(stray)), stray)
    foreign = cbor2.dumps(cbor2.CBORTag(99, 1))
    with pytest.raises(BadBlock, match="tag 99 is not allowed in dag-cbor"):
        links(Cid(1, DAG_CBOR, sha256_mh(foreign)), foreign)
    json = Cid(1, 0x0129, sha256_mh(b"{}"))
    with pytest.raises(BadBlock, match=r"codec 0x129 cannot be walked"):
        links(json, b"{}")


# --- the walk --------------------------------------------------------------------------------


async def blocks_of(blocks: Sequence[Block], read: list[Cid] | None = None
                    ) -> AsyncIterator[Block]:
    for block in blocks:
        if read is not None:
            read.append(block[0])
        yield block


async def walked(blocks: Sequence[Block], root: Cid, **kw: int) -> list[Cid]:
    return [cid async for cid in walk(blocks_of(blocks), root, **kw)]


def test_the_walk_yields_every_reachable_cid_once_whatever_the_order() -> None:
    dag = sample_dag()
    other = raw(b"not in this DAG")
    assert trio.run(walked, dag.blocks, dag.root) == dag.cids
    shuffled = [dag.blocks[i] for i in (5, 2, 6, 3, 0, 4, 1)] + [other, dag.blocks[2]]
    got = trio.run(walked, shuffled, dag.root)
    assert sorted(got, key=str) == sorted(dag.cids, key=str) and len(got) == 7


def test_the_walk_stops_reading_once_the_dag_is_complete() -> None:
    dag = sample_dag()
    read: list[Cid] = []

    async def main() -> None:
        extra = [raw(b"after %d" % i) for i in range(3)]
        async for _ in walk(blocks_of(dag.blocks + extra, read), dag.root):
            pass

    trio.run(main)
    assert read == dag.cids


def walk_to_fault(blocks: Sequence[Block], root: Cid) -> tuple[list[Cid], Exception]:
    """What the walk yielded, and what it raised at the end."""
    got: list[Cid] = []

    async def main() -> None:
        async for cid in walk(blocks_of(blocks), root):
            got.append(cid)

    with pytest.raises((MissingBlock, BadBlock)) as fault:
        trio.run(main)
    return got, fault.value


def test_a_missing_block_ends_the_walk_after_everything_reachable_without_it() -> None:
    dag = sample_dag()
    got, missing = walk_to_fault([blk for blk in dag.blocks if blk[0] != dag.cids[3]], dag.root)
    assert isinstance(missing, MissingBlock)
    assert missing.cid == dag.cids[3] and missing.missing == 1
    assert f"(linked from {dag.cids[1]})" in str(missing)
    assert got == [c for c in dag.cids if c != dag.cids[3]]


def test_a_bad_block_ends_the_walk_after_everything_reachable_without_it() -> None:
    dag = sample_dag()
    got, bad = walk_to_fault(
        [(cid, b"tampered" if cid == dag.cids[4] else data) for cid, data in dag.blocks], dag.root)
    assert isinstance(bad, BadBlock) and bad.cid == dag.cids[4] and bad.mismatch
    # c is reachable without sub (through meta, so after it); only sub is left out.
    root, directory, a, b, _, c, meta = dag.cids
    assert got == [root, directory, a, b, meta, c]


def test_an_inline_identity_cid_is_followed_not_provided() -> None:
    leaf = raw(b"leaf")
    inline_data = dag_pb([(leaf[0], "leaf")])[1]
    inline = Cid(1, 0x70, b"\x00" + _varint(len(inline_data)) + inline_data)
    root = dag_cbor({"x": link(inline)})
    assert trio.run(walked, [root, leaf], root[0]) == [root[0], leaf[0]]


def test_the_walk_tracks_a_bounded_number_of_blocks() -> None:
    assert MAX_DAG_BLOCKS == 1_000_000  # as docs/limits.md states it
    leaves = [raw(b"leaf %d" % i) for i in range(10)]
    root = dag_cbor([link(cid) for cid, _ in leaves])
    with pytest.raises(DagTooLarge, match="more than 5 blocks"):
        trio.run(lambda: walked([root, *leaves], root[0], max_blocks=5))
    assert len(trio.run(lambda: walked([root, *leaves], root[0], max_blocks=11))) == 11


# --- sources --------------------------------------------------------------------------------


def test_block_source_texts_are_checked(tmp_path: Path) -> None:
    assert parse_source(f"file://{tmp_path}").name == f"file://{tmp_path}"
    assert parse_source("http://127.0.0.1:8080/").name == "http://127.0.0.1:8080"
    for text, why in ((f"file://{tmp_path}/none", "is not a directory"),
                      ("file://host/dir", "names a local directory"),
                      ("http://", "needs a host"),
                      ("http://h/?x=1", "without ?query"),
                      ("ftp://h", "is file:///dir")):
        with pytest.raises(ValueError, match=why.replace("?", r"\?")):
            parse_source(text)


def test_a_directory_reads_the_cars_that_name_the_root_first(tmp_path: Path) -> None:
    dag, other = sample_dag("one"), sample_dag("two")
    (tmp_path / "a.car").write_bytes(car_v1([other.root], other.blocks))
    (tmp_path / "b.car").write_bytes(car_v2([dag.root], dag.blocks))
    (tmp_path / "c.txt").write_bytes(b"not a CAR, not read")

    async def main() -> list[Cid]:
        source = CarDirectory(tmp_path)
        return [cid async for cid, _ in source.blocks(dag.root)]

    assert trio.run(main) == dag.cids + other.cids


# --- recursive provide, over a fake node ----------------------------------------------------


class FakeNode:
    """What provide_dags needs of DhtNode: provide(), table, self_id."""

    def __init__(self, peers: int = 3, refuse: frozenset[bytes] = frozenset()) -> None:
        self.table = list(range(peers))
        self.self_id = b"self"
        self.batches: list[list[bytes]] = []
        self.refuse = refuse

    async def provide(self, keys: Sequence[bytes], emit: Callable[[int, QueryEvent], None],
                      timeout: float, strict: bool = True) -> list[int]:
        assert not strict and timeout > 0
        if not self.table:
            raise Unavailable("no peers")
        self.batches.append(list(keys))
        for i, key in enumerate(keys):
            if key not in self.refuse:
                emit(i, QueryEvent(EventType.FINAL_PEER, b"peer"))
        return [0 if k in self.refuse else 1 for k in keys]


class ListSource:
    def __init__(self, name: str, blocks: Sequence[Block] = (), missing: bool = False,
                 down: bool = False) -> None:
        self.name, self._blocks, self.missing, self.down = name, blocks, missing, down

    async def blocks(self, root: Cid) -> AsyncIterator[Block]:
        if self.down:
            raise SourceUnavailable(f"{self.name} is down")
        if self.missing:
            raise RootNotFound(f"{self.name} does not have {root}")
        for block in self._blocks:
            yield block


def provided(node: FakeNode, sources: Sequence[object], roots: Sequence[Cid],
             ) -> list[tuple[Cid, EventType]]:
    events: list[tuple[Cid, EventType]] = []

    async def main() -> None:
        await provide_dags(node, sources, roots,  # type: ignore[arg-type]
                           lambda c, e: events.append((c, e.type)), None, 60.0)

    trio.run(main)
    return events


def test_recursive_provide_announces_every_cid_in_batches() -> None:
    dag = sample_dag()
    node = FakeNode()
    events = provided(node, [ListSource("s", dag.blocks)], [dag.root])
    assert [c for c, _ in events] == dag.cids
    assert [k for batch in node.batches for k in batch] == [c.multihash for c in dag.cids]


class SlowSource(ListSource):
    """Yields a block, then lets everything else run: the walk hands the announcer
    one CID at a time, as a source slower than the network would."""

    async def blocks(self, root: Cid) -> AsyncIterator[Block]:
        for block in self._blocks:
            await trio.sleep(0.001)
            yield block


def test_a_batch_waits_for_the_walk_so_a_large_dag_is_one_sweep() -> None:
    """A batch is what the walk found within BATCH_LINGER (0.5 s) after its first CID,
    up to PROVIDE_BATCH: 200 CIDs found 1 ms apart are one batch, not 200 (each
    below --provide-batch-min, which would be a walk per CID)."""
    leaves = [raw(b"leaf %d" % i) for i in range(199)]
    root = dag_cbor([link(cid) for cid, _ in leaves])
    node = FakeNode()
    provided(node, [SlowSource("slow", [root, *leaves])], [root[0]])
    assert [len(batch) for batch in node.batches] == [200]


def test_sources_are_tried_in_order_until_one_has_the_root() -> None:
    dag = sample_dag()
    node = FakeNode()
    sources = [ListSource("gone", missing=True), ListSource("other", [raw(b"x")]),
               ListSource("good", dag.blocks)]
    assert [c for c, _ in provided(node, sources, [dag.root])] == dag.cids


def expect(error: type[Exception], match: str, node: FakeNode, sources: Sequence[object],
           roots: Sequence[Cid]) -> list[tuple[Cid, EventType]]:
    events: list[tuple[Cid, EventType]] = []

    async def main() -> None:
        await provide_dags(node, sources, roots,  # type: ignore[arg-type]
                           lambda c, e: events.append((c, e.type)), None, 60.0)

    with pytest.raises(error, match=match):
        trio.run(main)
    return events


def test_each_failure_has_its_status() -> None:
    dag = sample_dag()
    expect(FailedPrecondition, "--block-source", FakeNode(), [], [dag.root])
    assert NO_SOURCE.count("--block-source") == 2
    expect(NotFound, f"the root {dag.root} is in none of the block sources \\(a, b\\)",
           FakeNode(), [ListSource("a", missing=True), ListSource("b", [raw(b"x")])], [dag.root])
    expect(Unavailable, "a is down", FakeNode(),
           [ListSource("a", down=True), ListSource("b", missing=True)], [dag.root])
    expect(Unavailable, "no peers", FakeNode(peers=0), [ListSource("a", dag.blocks)], [dag.root])
    # Partway: the reachable CIDs, then a QUERY_ERROR naming the bad one.
    without_b = [blk for blk in dag.blocks if blk[0] != dag.cids[3]]
    events = expect(FailedPrecondition, "is missing from the source", FakeNode(),
                    [ListSource("a", without_b)], [dag.root])
    assert events[-1] == (dag.cids[3], EventType.QUERY_ERROR)
    assert [c for c, _ in events[:-1]] == [c for c in dag.cids if c != dag.cids[3]]
    tampered = [(c, b"bad" if c == dag.cids[2] else d) for c, d in dag.blocks]
    events = expect(DataLoss, "do not hash to its CID", FakeNode(),
                    [ListSource("a", tampered)], [dag.root])
    assert events[-1] == (dag.cids[2], EventType.QUERY_ERROR)


def test_too_large_a_dag_and_refused_records_are_told(monkeypatch: pytest.MonkeyPatch) -> None:
    dag = sample_dag()
    events = expect(Unavailable, "no peer accepted the provider record of 1 of 7 CIDs",
                    FakeNode(refuse=frozenset({dag.cids[3].multihash})),
                    [ListSource("a", dag.blocks)], [dag.root])
    assert len(events) == 6
    monkeypatch.setattr("dhtd.blocks.walk.MAX_DAG_BLOCKS", 3)
    events = expect(ResourceExhausted, "more than 3 blocks", FakeNode(),
                    [ListSource("a", dag.blocks)], [dag.root])
    assert events[-1] == (dag.root, EventType.QUERY_ERROR)


# --- a trustless gateway, over real HTTP on 127.0.0.1 --------------------------------------


def gateway_blocks(url: str, root: Cid, timeout: float = 5.0) -> list[Cid]:
    async def main() -> list[Cid]:
        source = parse_source(url, timeout)
        return [cid async for cid in walk(source.blocks(root), root)]

    return trio.run(main)


def test_a_gateway_is_asked_for_the_dag_as_one_car() -> None:
    dag = sample_dag("gw")
    with gateway() as served:
        served.add(dag.root, car_v1([dag.root], dag.blocks))
        assert gateway_blocks(served.url, dag.root) == dag.cids
        assert served.requests == [f"/ipfs/{dag.root}?format=car&dag-scope=all"]
        with pytest.raises(RootNotFound, match="does not have"):
            gateway_blocks(served.url, sample_dag("absent").root)


def test_a_gateway_that_is_down_slow_or_wrong_is_unavailable() -> None:
    dag = sample_dag("gw")
    with gateway() as served:
        served.stall(dag.root)
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match=r"did not answer within 0\.5 s"):
            gateway_blocks(served.url, dag.root, timeout=0.5)
        assert time.monotonic() - started < 5  # the read timeout, not the stall's end
        served.stalled.clear()
        served.add(dag.root, b"\x05hello")  # not a CAR
        with pytest.raises(SourceUnavailable, match=f"{served.url}: the header is not"):
            gateway_blocks(served.url, dag.root)
        url = served.url
    with pytest.raises(SourceUnavailable, match=url):  # closed: nobody listens there
        gateway_blocks(url, dag.root)
