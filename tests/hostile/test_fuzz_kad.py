"""Fuzzing the kad wire of a live dhtd with hypothesis: raw frames on a real kad
stream, from a real libp2p host (tests/hostile/peer.py).

Each example is a few frames on one stream, then the end of the stream:
* kad messages built field by field: every message type and unknown ones, keys
  of any size and shape (peer IDs, CIDs' multihashes, /pk/, /ipns/ and /demo/
  keys, junk), records with odd fields, closer and provider peers with odd IDs
  and addresses, cluster levels;
* length prefixes that lie (longer than the body, over dhtd's cap, truncated or
  over-long varints) and bodies of random bytes.

Promises checked (issue 8): each stream ends (an answer, a close or a reset)
within ANSWER_WITHIN of its last byte; afterwards the node is alive, answers Info,
holds its RSS bound, logs no dhtd error and no traceback, and still answers an
honest request. Examples are derandomized and bounded (about 20 s); a longer run
reads ``FUZZ_EXAMPLES``::

    scripts/fuzz 2000     (both fuzzers; FUZZ_EXAMPLES=2000 for this file alone)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtd.ids import encode_uvarint
from dhtd.kadmsg import MessageType, new_message
from dhtd.wire.kad_pb2 import Record
from tests.hostile.peer import Peer, run
from tests.hostile.test_hostile import assert_healthy
from tests.swarm import Node, dev_node

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# dhtd answers, closes or resets a stream this soon after its last byte: a frame
# cut by the end of the stream is a reset at once; no frame waits for the reaper.
ANSWER_WITHIN = 5.0
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

peer_ids = st.one_of(
    st.binary(min_size=34, max_size=34).map(lambda b: b"\x12\x20" + b[2:]),
    st.binary(max_size=80),
)
keys = st.one_of(
    peer_ids,
    st.binary(max_size=40).map(lambda b: b"/pk/" + b),
    st.binary(max_size=40).map(lambda b: b"/ipns/" + b),
    st.binary(max_size=40).map(lambda b: b"/demo/" + b),
    st.binary(min_size=200, max_size=3000),
)
addrs = st.lists(st.one_of(
    st.just(bytes.fromhex("047f000001060009")),  # /ip4/127.0.0.1/tcp/9
    st.binary(max_size=60),
), max_size=6)


@st.composite
def kad_messages(draw: st.DrawFn) -> bytes:
    message = new_message(draw(st.sampled_from([*MessageType.values(), 7, 99])), draw(keys))
    if draw(st.booleans()):
        message.record.CopyFrom(Record(key=draw(keys), value=draw(st.binary(max_size=300)),
                                       timeReceived=draw(st.text(max_size=40))))
    for field in (message.closerPeers, message.providerPeers):
        for _ in range(draw(st.integers(0, 4))):
            entry = field.add()
            entry.id = draw(peer_ids)
            entry.addrs.extend(draw(addrs))
            entry.connection = draw(st.integers(0, 3))
    message.clusterLevelRaw = draw(st.integers(-(2**31), 2**31 - 1))
    return message.SerializeToString()


frames = st.one_of(
    kad_messages().map(lambda body: encode_uvarint(len(body)) + body),
    # A length that says more than follows (the stream then ends inside the frame).
    st.tuples(st.integers(1, 200), st.binary(max_size=100)).map(
        lambda t: encode_uvarint(len(t[1]) + t[0]) + t[1]),
    # Over dhtd's request cap (128 KiB), and far over.
    st.sampled_from([encode_uvarint(200_000), encode_uvarint(2**40)]),
    # Varints: truncated, over-long, not minimal.
    st.sampled_from([b"\x80", b"\xff" * 11, b"\x80\x00"]),
    # A random body behind an honest length.
    st.binary(max_size=500).map(lambda body: encode_uvarint(len(body)) + body),
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with dev_node("fuzzed", tmp_path_factory.mktemp("fuzzed")) as n:
        yield n


async def send_then_end(peer: Peer, data: list[bytes]) -> None:
    stream = await peer.stream()
    try:
        await stream.write(b"".join(data))
        await stream.close()  # our side ends: a frame cut here is never finished
    except Exception:
        return  # dhtd reset the stream already (a frame over the cap)
    with trio.fail_after(ANSWER_WITHIN):
        while True:
            try:
                if not await stream.read(65536):
                    return
            except Exception:  # reset, or closed: ended either way
                return


@FUZZ
@given(data=st.lists(frames, min_size=1, max_size=4))
def test_any_kad_frames_end_their_stream_and_leave_the_node_whole(
        node: Node, data: list[bytes]) -> None:
    run(node.p2p_addr, lambda peer: send_then_end(peer, data), timeout=30)


def test_after_the_fuzzing_the_node_is_whole_and_serves(node: Node) -> None:
    async def honest(peer: Peer) -> bytes:
        answer = await peer.request(new_message(MessageType.FIND_NODE, peer.id))
        return bytes(answer.key)

    # Runs after the fuzzing test in this module (pytest keeps file order).
    assert run(node.p2p_addr, honest) != b""
    assert_healthy(node)
