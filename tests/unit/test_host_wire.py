"""Two real libp2p hosts (TCP on 127.0.0.1, noise, dhtd's yamux) in one process:
kad requests run over dhtd's muxer, reuse one stream, and keep the peer's
connection protected from trimming while in use and for BUSY_HOLD after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamReset

from dhtd import p2p
from dhtd.ids import encode_uvarint
from dhtd.kadmsg import new_message
from dhtd.lookup import PeerRecord, PeerRequestError
from dhtd.p2p import Host, multistream
from dhtd.p2p.yamux import Yamux, _Noise
from dhtd.wire.kad_pb2 import Message

PROTOCOL = "/ipfs/kad/1.0.0"
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]
KEY = b"\x12\x20" + b"k" * 32


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[Host, Host, list[bytes]]]:
    served: list[bytes] = []

    async def answer(sender: bytes, request: Message) -> Message:
        served.append(sender)
        return new_message(request.type, request.key)

    a = Host(p2p.new_identity(), PROTOCOL)
    b = Host(p2p.new_identity(), PROTOCOL)
    async with b.open(LISTEN, answer, lambda _: None), a.open(LISTEN, answer, lambda _: None):
        await a.connect(b.self_id, b.listen_addrs()[0])
        yield a, b, served


async def within(seconds: float, done: Callable[[], bool]) -> None:
    """Re-checks ``done`` (state a host's own tasks change) until it holds; fails
    after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if done():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"not within {seconds}s")


def muxed_conns(host: Host, peer: bytes) -> list[Any]:
    return [c.muxed_conn for c in host._host.get_network().get_connections(ID(peer))]


def test_requests_run_over_dhtds_yamux_on_one_reused_stream() -> None:
    async def main() -> None:
        async with two_hosts() as (a, b, served):
            for _ in range(20):
                answer = await a.request(b.self_id, new_message(4, KEY))
                assert answer.key == KEY
            assert served == [a.self_id] * 20
            (conn,) = muxed_conns(a, b.self_id)
            assert isinstance(conn, Yamux)
            assert isinstance(conn._io, _Noise)  # the fast noise path, not the fallback
            # ChaChaPoly called straight on the AEAD (a closure), not through the noise
            # library (the fallback: a bound method of its NoiseConnection).
            assert not hasattr(conn._io._encrypt, "__self__")
            assert not hasattr(conn._io._decrypt, "__self__")
            kad_streams = [s for s in conn._streams.values() if s.stream_id % 2 == 1]
            assert len(kad_streams) == 1  # every request on the same stream
            assert isinstance(muxed_conns(b, a.self_id)[0], Yamux)

    trio.run(main)


def test_a_busy_peer_stays_protected_for_busy_hold_after_its_last_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hold = 0.5
    monkeypatch.setattr(p2p, "BUSY_HOLD", hold)

    async def main() -> None:
        async with two_hosts() as (a, b, _):
            network = a._host.get_network()

            def protected() -> bool:
                return bool(network.is_protected(ID(b.self_id), p2p._BUSY_TAG))

            assert not protected()
            await a.request(b.self_id, new_message(4, KEY))
            done = trio.current_time()
            assert protected()  # still, right after the request
            with trio.fail_after(10 * hold):
                while protected():  # noqa: ASYNC110
                    await trio.sleep(hold / 10)
            assert trio.current_time() - done >= hold
            await a.request(b.self_id, new_message(4, KEY))
            assert protected()  # protected again by the next request

    trio.run(main)


def test_an_answer_larger_than_the_socket_buffer_arrives_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB: past a loopback buffer
    waited: list[int] = []
    send_rest = _Noise.send_rest

    async def counted(self: _Noise, rest: Any) -> None:
        waited.append(len(rest))
        await send_rest(self, rest)

    monkeypatch.setattr(_Noise, "send_rest", counted)

    async def main() -> None:
        async def answer(sender: bytes, request: Message) -> Message:
            reply = new_message(request.type, request.key)
            reply.record.value = big
            return reply

        a = Host(p2p.new_identity(), PROTOCOL)
        b = Host(p2p.new_identity(), PROTOCOL)
        async with b.open(LISTEN, answer, lambda _: None), a.open(LISTEN, None, lambda _: None):
            await a.connect(b.self_id, b.listen_addrs()[0])
            for _ in range(3):
                reply = await a.request(b.self_id, new_message(4, KEY))
                assert reply.record.value == big
        assert waited  # the kernel took part at once; the rest waited for the socket

    trio.run(main)


@pytest.mark.parametrize("partial", [False, True])
def test_idle_and_trickling_inbound_streams_are_ended_by_the_reaper(
        monkeypatch: pytest.MonkeyPatch, partial: bool) -> None:
    monkeypatch.setattr(p2p, "STREAM_IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(p2p, "FRAME_READ_TIMEOUT", 0.6)
    monkeypatch.setattr(p2p, "REAP_INTERVAL", 0.1)

    async def main() -> None:
        async with two_hosts() as (a, b, served):
            stream = await a._host.new_stream(ID(b.self_id), [PROTOCOL])
            # One whole request first: the stream is served, then left idle or
            # left inside a second request that never completes.
            request = new_message(4, KEY).SerializeToString()
            await stream.write(encode_uvarint(len(request)) + request)
            assert Message.FromString(await p2p._Framed(stream).read_frame()).key == KEY
            if partial:
                await stream.write(encode_uvarint(1000) + bytes(10))
            start = trio.current_time()
            ended = "closed"
            with trio.fail_after(10):
                try:
                    while await stream.read(1024):
                        pass
                except EOFError:  # py-libp2p's NetStream says EOF this way
                    pass
                except Exception:
                    ended = "reset"
            took = trio.current_time() - start
            limit = p2p.FRAME_READ_TIMEOUT if partial else p2p.STREAM_IDLE_TIMEOUT
            assert limit <= took < limit + 1.0
            # An idle stream is closed (EOF); a trickling one is reset.
            assert ended == ("reset" if partial else "closed")
            assert not b._serving
            assert served == [a.self_id]

    trio.run(main)


def test_an_add_provider_never_goes_to_an_idle_stream_the_server_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server closes a stream idle for STREAM_IDLE_TIMEOUT with a FIN. An
    ADD_PROVIDER has no answer, so written to that stream it would be lost without
    an error: the next one goes to a new stream, and the server gets it."""
    monkeypatch.setattr(p2p, "STREAM_IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(p2p, "REAP_INTERVAL", 0.1)
    monkeypatch.setattr(p2p, "IDLE_STREAM_REUSE", 60.0)  # only the FIN counts here

    async def main() -> None:
        async with two_hosts() as (a, b, served):
            await a.request(b.self_id, new_message(4, KEY))
            (idle,) = a._idle[b.self_id]
            await within(5, lambda: idle.io.remote_closed)
            await a.send(b.self_id, new_message(2, KEY))  # ADD_PROVIDER
            await within(5, lambda: len(served) == 2)
            assert a._idle[b.self_id][0] is not idle

    trio.run(main)


def test_an_idle_stream_is_not_reused_past_idle_stream_reuse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the server's FIN could be on its way: a stream unused for
    IDLE_STREAM_REUSE is closed, and the next message opens a new one."""
    monkeypatch.setattr(p2p, "IDLE_STREAM_REUSE", 0.3)

    async def main() -> None:
        async with two_hosts() as (a, b, served):
            await a.request(b.self_id, new_message(4, KEY))
            (first,) = a._idle[b.self_id]
            await a.request(b.self_id, new_message(4, KEY))
            assert a._idle[b.self_id] == [first]  # reused at once
            await trio.sleep(0.4)  # the time that makes it stale
            await a.send(b.self_id, new_message(2, KEY))
            assert a._idle[b.self_id][0] is not first
            await within(5, lambda: len(served) == 3)

    trio.run(main)


def test_learning_the_same_addresses_again_skips_the_peerstore_until_the_refresh() -> None:
    host = Host(p2p.new_identity(), PROTOCOL)
    store = host._host.get_peerstore()
    peer = p2p.peer_id_of(p2p.new_identity())
    addr = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
    other = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4002").to_bytes()
    writes: list[bytes] = []
    add_addrs = store.add_addrs

    def counted(pid: ID, addrs: Any, ttl: int) -> None:
        writes.append(pid.to_bytes())
        add_addrs(pid, addrs, ttl)

    store.add_addrs = counted

    async def main() -> None:
        host.learn([PeerRecord(peer, (addr,))])
        assert host.addrs_of(peer) == (addr,) and len(writes) == 1
        host.learn([PeerRecord(peer, (addr,))])  # heard again: nothing to write
        assert len(writes) == 1
        host.learn([PeerRecord(peer, (other,))])  # new addresses go in at once
        assert len(writes) == 2
        await trio.sleep(p2p.LEARNED_REFRESH)  # the TTL is refreshed in time
        host.learn([PeerRecord(peer, (other,))])
        assert len(writes) == 3
        # The peerstore evicts it (its cap): heard again, it goes back in at once.
        store.clear_peerdata(ID(peer))
        host._unlearn(peer)
        host.learn([PeerRecord(peer, (other,))])
        assert len(writes) == 4 and host.addrs_of(peer)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_capped_peerstore_tells_the_host_what_it_evicted() -> None:
    evicted: list[bytes] = []
    me = ID(p2p.peer_id_of(p2p.new_identity()))
    store = p2p._GuardedPeerStore(me, set(), evicted.append)
    store.max_peers = 3
    addr = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")
    peers = [ID(p2p.peer_id_of(p2p.new_identity())) for _ in range(5)]
    for pid in peers:
        store.add_addrs(pid, [addr], 3600)
        store._enforce_peer_limit()
    assert len(evicted) == 2 and all(ID(p) in peers for p in evicted)


def test_a_new_kad_stream_negotiates_in_the_same_write_as_its_first_request() -> None:
    """Lazy multistream-select: header, proposal and request in one yamux frame;
    the listener's header and answer in one, with the kad answer right behind."""
    async def main() -> None:
        async with two_hosts() as (a, b, _):
            (conn,) = muxed_conns(a, b.self_id)
            sent: list[bytes] = []
            send = conn._send

            async def spy(data: bytes) -> None:
                sent.append(bytes(data))
                await send(data)

            conn._send = spy
            await a.request(b.self_id, new_message(4, KEY))
            negotiation = multistream.encode(multistream.HEADER, PROTOCOL)
            (first,) = [f for f in sent if f[12:].startswith(negotiation)]
            assert len(first) > 12 + len(negotiation)  # the request is in it too
            stream_id = first[4:8]
            assert [f for f in sent if f[4:8] == stream_id and f[1] == 0] == [first]

    trio.run(main)


def test_a_peer_without_the_kad_protocol_refuses_the_lazy_proposal() -> None:
    async def main() -> None:
        a = Host(p2p.new_identity(), PROTOCOL)
        b = Host(p2p.new_identity(), PROTOCOL)
        async with b.open(LISTEN, None, lambda _: None), a.open(LISTEN, None, lambda _: None):
            await a.connect(b.self_id, b.listen_addrs()[0])
            with pytest.raises(PeerRequestError, match=r"does not speak /ipfs/kad/1\.0\.0"):
                await a.request(b.self_id, new_message(4, KEY))

    trio.run(main)


def test_an_inbound_stream_gets_na_for_unknown_protocols_and_a_bounded_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with two_hosts() as (a, b, _):
            (conn,) = muxed_conns(a, b.self_id)
            stream = await conn.open_stream()
            proposals = [f"/unknown/{i}" for i in range(multistream.MAX_PROPOSALS)]
            await stream.write(multistream.encode(multistream.HEADER, *proposals))
            got = b""
            with trio.fail_after(5):
                while True:
                    try:
                        got += await stream.read(4096)
                    except Exception:  # closed once the proposals are used up
                        break
            nas = [multistream.NA] * multistream.MAX_PROPOSALS
            assert got == multistream.encode(multistream.HEADER, *nas)
            # The connection is fine: the next kad request goes through.
            assert (await a.request(b.self_id, new_message(4, KEY))).key == KEY

    trio.run(main)


def test_an_inbound_stream_that_names_no_protocol_is_reset_at_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p2p, "NEGOTIATE_TIMEOUT", 0.3)

    async def main() -> None:
        async with two_hosts() as (a, b, _):
            (conn,) = muxed_conns(a, b.self_id)
            stream = await conn.open_stream()
            await stream.write(multistream.encode(multistream.HEADER))  # and nothing more
            start = trio.current_time()
            with trio.fail_after(5), pytest.raises(MuxedStreamReset):
                while True:
                    await stream.read(4096)  # the header comes back, then the reset
            assert trio.current_time() - start < 2

    trio.run(main)


def test_notices_run_inline_a_raising_notifee_is_contained_and_stream_notices_skipped() -> None:
    heard: list[str] = []

    class Loud:
        async def connected(self, network: Any, conn: Any) -> None:
            raise RuntimeError("notifee bug")

        async def opened_stream(self, network: Any, stream: Any) -> None:
            heard.append("opened_stream")

    class Quiet:
        async def connected(self, network: Any, conn: Any) -> None:
            heard.append("connected")

    class Network:
        notifees = [Loud(), Quiet()]

    notify = p2p._inline_notices(Network())

    async def main() -> None:
        await notify("connected", object())
        await notify("opened_stream", object())

    trio.run(main)
    assert heard == ["connected"]
