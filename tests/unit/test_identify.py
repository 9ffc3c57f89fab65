"""dhtd.p2p.identify: a connected peer that speaks kad joins the routing table
however slow its identify is (within IDENTIFY_TIMEOUT), waiters wake the moment
identify ends, what a peer sends is bounded, and the answer is built once.

The regression behind the timing promises: a watch that gave up after the
caller's 5 s left two nodes starting at once out of each other's tables on a
loaded machine (the js interop module's flaky failures). The py-libp2p host is
faked (its peerstore is real); the timing runs under MockClock.
"""

from __future__ import annotations

from typing import Any

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, PeerStoreError

from dhtd.ids import decode_uvarint, encode_uvarint
from dhtd.kadmsg import MAX_ADDRS_PER_PEER
from dhtd.p2p import identify, multistream
from dhtd.p2p.identify import Identifier

KAD = "/ipfs/kad/1.0.0"
PAIR = create_new_key_pair()
PEER_ID = ID.from_pubkey(PAIR.public_key)
PEER = PEER_ID.to_bytes()
# Stated literally: the promise is about these numbers, not the constants' names.
CALLER_WAIT = 5.0
WATCH = 30.0


def addr(port: int) -> bytes:
    return bytes(multiaddr.Multiaddr(f"/ip4/10.0.0.1/tcp/{port}").to_bytes())


def message(protocols: tuple[str, ...] = (KAD,), addrs: int = 1, key: Any = PAIR) -> bytes:
    body = Identify(public_key=key.public_key.serialize(),
                    listen_addrs=[addr(4000 + i) for i in range(addrs)],
                    protocols=list(protocols)).SerializeToString()
    return encode_uvarint(len(body)) + body


class FakeStream:
    """The identify side of a peer: answers the negotiation, then sends ``data``
    at time ``at`` (never, when None)."""

    def __init__(self, data: bytes, at: float | None) -> None:
        self.data, self.at, self.closed = data, at, False
        self.written = b""
        self.negotiation = multistream.encode(multistream.HEADER, identify.IDENTIFY)

    async def write(self, data: bytes) -> None:
        self.written += data

    def set_protocol(self, protocol: str) -> None:
        self.protocol = protocol

    async def read(self, n: int) -> bytes:
        if self.negotiation:
            out, self.negotiation = self.negotiation, b""
            return out
        if self.at is None:
            await trio.sleep_forever()
        await trio.sleep_until(self.at)
        out, self.data = self.data[:n], self.data[n:]
        return out

    async def close(self) -> None:
        self.closed = True


class FakeHost:
    """The parts of py-libp2p's host identify uses: the peer answers with ``data``
    at time ``at`` (never, when None)."""

    def __init__(self, data: bytes = b"", at: float | None = 0.0) -> None:
        self.store = PeerStore()
        self.data, self.at = data, at
        self.opened = 0
        self.handlers: dict[str, Any] = {}

    def get_peerstore(self) -> PeerStore:
        return self.store

    def get_network(self) -> FakeHost:
        return self

    def set_stream_handler(self, protocol: str, handler: Any) -> None:
        self.handlers[protocol] = handler

    async def new_stream(self, peer: ID) -> FakeStream:
        self.opened += 1
        self.stream = FakeStream(self.data, self.at)
        return self.stream


def run_identify(host: FakeHost, connections: int = 1, connected: bool = True
                 ) -> list[tuple[float, bytes]]:
    """Schedules identify of PEER for ``connections`` new connections; returns when
    each on_kad_peer call came."""
    added: list[tuple[float, bytes]] = []
    ident = Identifier(host, KAD)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ident.start(nursery, lambda peer: added.append((trio.current_time(), peer)))
            for _ in range(connections):
                ident.schedule(PEER_ID)
            await trio.sleep(2 * WATCH)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return added


def test_a_peer_whose_identify_ends_after_the_callers_wait_joins_when_it_ends() -> None:
    added = run_identify(FakeHost(message(), at=CALLER_WAIT + 3))
    assert added == [(CALLER_WAIT + 3, PEER)]  # at once: nothing polls


def test_identify_gives_up_at_its_timeout() -> None:
    assert run_identify(FakeHost(message(), at=WATCH + 1)) == []
    assert run_identify(FakeHost(message(), at=None)) == []


def test_a_peer_that_does_not_speak_kad_is_not_added() -> None:
    assert run_identify(FakeHost(message(protocols=("/ipfs/ping/1.0.0",)))) == []


def test_many_connections_of_one_peer_make_one_exchange() -> None:
    host = FakeHost(message(), at=1)
    assert [peer for _, peer in run_identify(host, connections=5)] == [PEER]
    assert host.opened == 1
    # The header and the proposal went in one write.
    assert host.stream.written == multistream.encode(multistream.HEADER, identify.IDENTIFY)


def test_a_peer_identified_before_is_handed_on_at_once_on_a_new_connection() -> None:
    host = FakeHost(message())
    host.store.set_protocols(PEER_ID, [KAD])
    assert run_identify(host) == [(0.0, PEER)]
    assert host.opened == 0


def wait_for(host: FakeHost, timeout: float, connected: Any = lambda peer: True,
             leave_at: float | None = None) -> tuple[bool, float]:
    ident = Identifier(host, KAD)
    out: list[tuple[bool, float]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ident.start(nursery, lambda peer: None)
            ident.schedule(PEER_ID)
            if leave_at is not None:
                async def leave() -> None:
                    await trio.sleep_until(leave_at)
                    gone.set()
                    ident.disconnected(PEER)
                nursery.start_soon(leave)
            out.append((await ident.wait(PEER, timeout, lambda p: not gone.is_set()),
                        trio.current_time()))
            nursery.cancel_scope.cancel()

    gone = trio.Event()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out[0]


def test_a_callers_wait_is_bounded_by_its_own_timeout_and_wakes_at_the_end() -> None:
    assert wait_for(FakeHost(message(), at=CALLER_WAIT + 3), CALLER_WAIT) == (False, CALLER_WAIT)
    assert wait_for(FakeHost(message(), at=CALLER_WAIT + 3), WATCH) == (True, CALLER_WAIT + 3)


def test_a_wait_ends_when_the_peer_disconnects() -> None:
    assert wait_for(FakeHost(message(), at=None), WATCH, leave_at=2.0) == (False, 2.0)


def test_a_failed_identify_wakes_its_waiters() -> None:
    assert wait_for(FakeHost(b"\xff" * 12, at=1.0), WATCH) == (False, 1.0)


def test_what_the_peer_sends_is_bounded() -> None:
    host = FakeHost(message(protocols=(*(f"/p/{i}" for i in range(500)), "x" * 300),
                            addrs=MAX_ADDRS_PER_PEER + 10))
    run_identify(host)
    assert len(host.store.get_protocols(PEER_ID)) == identify.MAX_PROTOCOLS
    assert len(host.store.addrs(PEER_ID)) == MAX_ADDRS_PER_PEER
    assert host.store.pubkey(PEER_ID) == PAIR.public_key


def test_a_message_over_the_cap_is_refused() -> None:
    body = Identify(protocols=[KAD], agent_version="x" * identify.MAX_IDENTIFY_BYTES)
    data = body.SerializeToString()
    host = FakeHost(encode_uvarint(len(data)) + data)
    assert run_identify(host) == []
    assert PEER_ID not in host.store.peer_ids()


def test_a_public_key_of_someone_else_is_not_stored() -> None:
    host = FakeHost(message(key=create_new_key_pair()))
    assert [peer for _, peer in run_identify(host)] == [PEER]  # the rest still counts
    with pytest.raises(PeerStoreError):
        host.store.pubkey(PEER_ID)


class AnswerStream:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.muxed_conn = self

    def get_remote_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 4242)

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close(self) -> None:
        self.closed = True


def test_the_answer_is_built_once_and_names_where_each_peer_is_seen_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []

    def build(host: Any, observed: Any) -> Identify:
        built.append(1)
        return Identify(protocols=[KAD], agent_version="dhtd")

    monkeypatch.setattr(identify, "_mk_identify_protobuf", build)
    ident = Identifier(FakeHost(), KAD)
    streams = [AnswerStream(), AnswerStream()]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ident.start(nursery, lambda peer: None)
            for stream in streams:
                await ident.serve(stream)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert built == [1]
    for stream in streams:
        assert stream.closed
        length, start = decode_uvarint(stream.written)
        answer = Identify.FromString(stream.written[start:start + length])
        assert list(answer.protocols) == [KAD]
        assert answer.observed_addr == multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4242").to_bytes()


class SigningHost(FakeHost):
    def get_id(self) -> ID:
        return PEER_ID

    def get_private_key(self) -> Any:
        return PAIR.private_key


def test_the_answer_names_the_announced_addresses_and_waits_for_some(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """py-libp2p's own list ends every address in /p2p/<id>, which go-libp2p stores
    and passes on, then cannot dial (a Go peer could not FindPeer dhtd across a hop):
    the answer carries the host's announced addresses, in its listen addresses and
    in its signed peer record, and is not kept while there are none yet."""
    own = bytes(multiaddr.Multiaddr(f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_ID}").to_bytes())

    def build(host: Any, observed: Any) -> Identify:
        return Identify(protocols=[KAD], listen_addrs=[own])

    monkeypatch.setattr(identify, "_mk_identify_protobuf", build)
    asked: list[int] = []
    bound = [addr(4001)]

    def announced() -> list[bytes]:
        asked.append(1)
        return [] if len(asked) == 1 else list(bound)

    ident = Identifier(SigningHost(), KAD, announced)
    answers: list[Identify] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ident.start(nursery, lambda peer: None)
            for _ in range(3):
                stream = AnswerStream()
                await ident.serve(stream)
                length, start = decode_uvarint(stream.written)
                answers.append(Identify.FromString(stream.written[start:start + length]))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(asked) == 2  # the empty answer was not kept; the second one was
    assert list(answers[0].listen_addrs) == []
    for answer in answers[1:]:
        assert list(answer.listen_addrs) == bound
        envelope = answer.signedPeerRecord
        assert envelope and own not in envelope and bound[0] in envelope
