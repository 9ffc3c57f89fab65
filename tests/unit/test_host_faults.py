"""The host against peers that are gone, on real sockets on 127.0.0.1: a dial has
its own timeout, dead addresses are remembered with backoff, a frozen connection
is found by yamux's keepalive or closed by Host.disconnect.

The dead addresses:
- a *tarpit* accepts TCP connections and never says a word;
- a *black hole* drops SYNs: a listening socket whose accept queue is full
  (backlog 0, one connection never accepted) makes Linux drop every further SYN,
  so the dialler retransmits until it gives up, as behind a firewall;
- a *refused* port has nothing listening;
- a *frozen* peer sits behind a relay that stops relaying, sockets open, as a
  stopped process's connections do.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from dhtd import p2p
from dhtd.kadmsg import new_message
from dhtd.lookup import PeerRecord, PeerRequestError
from dhtd.p2p import DialBackoff, Host, dial_key, yamux
from dhtd.wire.kad_pb2 import Message

PROTOCOL = "/ipfs/kad/1.0.0"
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]
KEY = b"\x12\x20" + b"k" * 32
# What a loaded 2-core machine may add to a bound measured on the wall clock.
SLACK = 1.5


def tcp_addr(port: int) -> bytes:
    return bytes(multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}").to_bytes())


def fake_peer() -> bytes:
    return p2p.peer_id_of(p2p.new_identity())


async def answer(sender: bytes, request: Message) -> Message:
    return new_message(request.type, request.key)


def request(host: Host, peer: bytes) -> Any:
    return host.request(peer, new_message(4, KEY))


@asynccontextmanager
async def host(pair: KeyPair | None = None, listen: list[bytes] = LISTEN,
               on_disconnect: Any = lambda peer: None) -> AsyncIterator[Host]:
    h = Host(pair or p2p.new_identity(), PROTOCOL)
    async with h.open(listen, answer, lambda peer: None, on_disconnect):
        yield h


# -- dead addresses ---------------------------------------------------------


class Tarpit:
    """Accepts every connection on 127.0.0.1 and never writes; counts them."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async def hold(stream: trio.SocketStream) -> None:
            self.accepted += 1
            await trio.sleep_forever()

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(hold, listeners)


@asynccontextmanager
async def tarpit() -> AsyncIterator[Tarpit]:
    pit = Tarpit()
    async with trio.open_nursery() as nursery:
        await nursery.start(pit.serve)
        yield pit
        nursery.cancel_scope.cancel()


@contextmanager
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 whose SYNs are dropped (see the module doc)."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # fills the accept queue
        yield port
    finally:
        filler.close()
        listener.close()


def refused_port() -> int:
    """A port on 127.0.0.1 with nothing listening (the OS picked it free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@asynccontextmanager
async def dead_address(kind: str) -> AsyncIterator[bytes]:
    if kind == "tarpit":
        async with tarpit() as pit:
            yield tcp_addr(pit.port)
    else:
        with black_hole() as port:
            yield tcp_addr(port)


def test_a_black_hole_is_one_on_this_machine() -> None:
    """The emulation the tests rely on: a connect to it hangs."""
    with black_hole() as port, socket.socket() as s:
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.connect(("127.0.0.1", port))


# -- the dial timeout --------------------------------------------------------


def test_the_dial_timeout_is_five_seconds_and_backoff_starts_at_five() -> None:
    assert p2p.DIAL_TIMEOUT == 5.0
    assert (p2p.DIAL_BACKOFF_BASE, p2p.DIAL_BACKOFF_MAX) == (5.0, 300.0)
    assert p2p.MAX_BACKOFF_ADDRS == 4096


@pytest.mark.parametrize("via", ["request", "connect"])
@pytest.mark.parametrize("kind", ["tarpit", "black_hole"])
def test_a_dial_to_a_dead_address_fails_at_the_dial_timeout(
        monkeypatch: pytest.MonkeyPatch, kind: str, via: str) -> None:
    """Before: a tarpit held a request for its whole 10 s timeout (py-libp2p's
    handshake timeout, then 3 retries), a black hole for the kernel's SYN retries."""
    monkeypatch.setattr(p2p, "DIAL_TIMEOUT", 1.0)

    async def main() -> None:
        async with host() as a, dead_address(kind) as addr:
            peer = fake_peer()
            start = trio.current_time()
            with pytest.raises(PeerRequestError, match=r"dial to \S+ timed out after 1s"):
                with trio.fail_after(10):
                    if via == "request":
                        a.learn([PeerRecord(peer, (addr,))])
                        await request(a, peer)
                    else:
                        await a.connect(peer, addr)
            took = trio.current_time() - start
            assert 1.0 <= took < 1.0 + SLACK
            assert a.dial_failures["timeout"] == 1 and a.dial_attempts == 1
            assert not a.is_connected(peer)

    trio.run(main)


def test_forty_fake_peers_at_one_tarpit_cost_one_dial_and_one_timeout() -> None:
    """Two hostile peers named 40 made-up peers at one tarpit (issue 22): asked at
    once, they wait on one dial, all fail at DIAL_TIMEOUT (5 s), and the next one
    fails at once."""
    async def main() -> None:
        async with host() as a, tarpit() as pit:
            addr = tcp_addr(pit.port)
            fakes = [fake_peer() for _ in range(41)]
            a.learn([PeerRecord(f, (addr,)) for f in fakes])
            failed: list[float] = []
            start = trio.current_time()

            async def ask(peer: bytes) -> None:
                with pytest.raises(PeerRequestError):
                    await request(a, peer)
                failed.append(trio.current_time() - start)

            with trio.fail_after(5.0 + 2 * SLACK):
                async with trio.open_nursery() as nursery:
                    for peer in fakes[:40]:
                        nursery.start_soon(ask, peer)
            assert len(failed) == 40 and max(failed) < 5.0 + SLACK
            assert pit.accepted == 1 and a.dial_attempts == 1
            assert sum(a.dial_failures.values()) == 40
            assert a.dial_backoff(fakes[40])
            before = trio.current_time()
            with pytest.raises(PeerRequestError, match="dial backoff"):
                await request(a, fakes[40])
            assert trio.current_time() - before < 0.5  # no dial: at once
            assert pit.accepted == 1 and a.dial_attempts == 1

    trio.run(main)


def test_a_peer_with_a_dead_and_a_live_address_connects_without_waiting_for_the_dead(
        ) -> None:
    async def main() -> None:
        async with host() as a, host() as b, tarpit() as pit:
            a.learn([PeerRecord(b.self_id, (tcp_addr(pit.port), b.listen_addrs()[0]))])
            start = trio.current_time()
            with trio.fail_after(p2p.DIAL_TIMEOUT):
                assert (await request(a, b.self_id)).key == KEY
            assert trio.current_time() - start < 1.0 + SLACK
            # The tarpit's dial was cut short by the winner: not a failure of its own.
            assert not a._backoff.blocked(f"127.0.0.1:{pit.port}", trio.current_time())
            assert a.dial_failures == dict.fromkeys(p2p.DIAL_FAILURE_REASONS, 0)

    trio.run(main)


# -- backoff -----------------------------------------------------------------


async def refused_once(a: Host) -> tuple[KeyPair, bytes, bytes]:
    """A peer (its key, ID and address) that ``a`` asked once at a port where
    nothing listened: the dial was refused."""
    pair = p2p.new_identity()
    peer, addr = p2p.peer_id_of(pair), tcp_addr(refused_port())
    a.learn([PeerRecord(peer, (addr,))])
    with pytest.raises(PeerRequestError, match=r"dial to \S+ refused"):
        await request(a, peer)
    return pair, peer, addr


def test_a_refused_address_fails_at_once_then_is_backed_off_until_an_explicit_connect(
        ) -> None:
    """Before: py-libp2p retried a refused address three times (0.1, 0.2, 0.4 s
    apart), and every request to the peer dialled it again."""
    async def main() -> None:
        async with host() as a:
            start = trio.current_time()
            pair, peer, addr = await refused_once(a)
            assert trio.current_time() - start < 0.5
            assert a.dial_failures["refused"] == 1 and a.dial_attempts == 1
            assert a.dial_backoff(peer)
            # The peer comes back at that address: requests still fail at once,
            # without a dial, until the backoff ends...
            async with host(pair, [addr]):
                with pytest.raises(PeerRequestError, match="dial backoff"):
                    await request(a, peer)
                assert a.dial_failures["backoff"] == 1 and a.dial_attempts == 1
                # ...or an explicit connect (bootstrap, the Connect RPC) dials anyway.
                await a.connect(peer, addr)
                assert not a.dial_backoff(peer) and len(a._backoff) == 0
                assert (await request(a, peer)).key == KEY

    trio.run(main)


def test_the_backoff_ends_and_a_successful_dial_clears_it(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(p2p, "DIAL_BACKOFF_BASE", 0.5)

    async def main() -> None:
        async with host() as a:
            pair, peer, addr = await refused_once(a)
            async with host(pair, [addr]):
                with trio.fail_after(5):
                    while a.dial_backoff(peer):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                assert (await request(a, peer)).key == KEY
                assert len(a._backoff) == 0 and a.dial_attempts == 2

    trio.run(main)


def test_backoff_doubles_from_5s_to_5min_and_restarts_after_a_quiet_spell() -> None:
    backoff = DialBackoff()
    now = 1000.0
    waits = []
    for _ in range(8):
        waits.append(backoff.failed("a:1", now))
        assert backoff.blocked("a:1", now + waits[-1] - 0.01)
        assert not backoff.blocked("a:1", now + waits[-1])
        now += waits[-1]
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300]
    # Quiet for more than 5 min after its backoff ended: it starts again at 5 s.
    assert backoff.failed("a:1", now + 300.01) == 5
    backoff.clear("a:1")
    assert not backoff.blocked("a:1", now) and len(backoff) == 0
    assert backoff.failed("a:1", now) == 5


def test_backoff_remembers_at_most_4096_addresses_the_oldest_forgotten() -> None:
    backoff = DialBackoff()
    for i in range(4097):
        backoff.failed(f"10.0.{i // 256}.{i % 256}:1", 0.0)
    assert len(backoff) == 4096
    assert not backoff.blocked("10.0.0.0:1", 1.0)  # the first, forgotten
    assert backoff.blocked("10.0.16.0:1", 1.0)  # the last


@pytest.mark.parametrize(("addr", "key"), [
    ("/ip4/1.2.3.4/tcp/4001", "1.2.3.4:4001"),
    ("/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWGC6TvWhfapngX6wvJHMYvKpDMXPb3ZnCZ6dMoaMtimQ5",
     "1.2.3.4:4001"),
    ("/ip6/2001:db8::1/tcp/4001", "[2001:db8::1]:4001"),
    ("/dns4/example.com/tcp/443", "example.com:443"),
    ("/ip4/1.2.3.4/udp/4001/quic-v1", None),
    ("/ip4/1.2.3.4/tcp/4001/ws", None),
])
def test_backoff_is_kept_per_host_and_port_of_tcp_addresses(addr: str, key: str | None
                                                            ) -> None:
    assert dial_key(multiaddr.Multiaddr(addr)) == key


def test_loopback_addresses_are_dialled_only_when_a_peer_has_no_other() -> None:
    a = Host(p2p.new_identity(), PROTOCOL)
    peer = fake_peer()
    loopback, other = tcp_addr(4001), multiaddr.Multiaddr("/ip4/192.0.2.1/tcp/4001").to_bytes()

    async def main() -> None:
        a.learn([PeerRecord(peer, (loopback,))])
        assert [key for key, _ in a._dial_targets(peer)[1]] == ["127.0.0.1:4001"]
        a.learn([PeerRecord(peer, (loopback, other))])
        assert [key for key, _ in a._dial_targets(peer)[1]] == ["192.0.2.1:4001"]

    trio.run(main)


# -- frozen connections ------------------------------------------------------


class Relay:
    """A TCP relay on 127.0.0.1 to ``port``. freeze() stops every connection it
    carries (nothing more is relayed either way; the sockets stay open); later
    connections are relayed again."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._frozen: list[trio.Event] = []

    def freeze(self) -> None:
        for event in self._frozen:
            event.set()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, down: trio.SocketStream) -> None:
        frozen = trio.Event()
        self._frozen.append(frozen)
        up = await trio.open_tcp_stream("127.0.0.1", self.target)
        async with up, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, down, up, frozen)
            nursery.start_soon(self._pump, up, down, frozen)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, frozen: trio.Event
                    ) -> None:
        try:
            while not frozen.is_set():
                data = await src.receive_some(65536)
                if frozen.is_set():
                    break
                if not data:
                    await dst.send_eof()
                    return
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep_forever()


@asynccontextmanager
async def through_relay(on_disconnect: Any = lambda peer: None
                        ) -> AsyncIterator[tuple[Host, Host, Relay]]:
    """a connected to b through a relay (b's address known to a only as the relay's)."""
    async with host(on_disconnect=on_disconnect) as a, host() as b, trio.open_nursery() as n:
        port = int(multiaddr.Multiaddr(b.listen_addrs()[0]).value_for_protocol("tcp"))
        relay = Relay(port)
        await n.start(relay.serve)
        await a.connect(b.self_id, tcp_addr(relay.port))
        yield a, b, relay
        n.cancel_scope.cancel()


def muxed_conns(h: Host, peer: bytes) -> list[Any]:
    return [c.muxed_conn for c in h._host.get_network().get_connections(ID(peer))]


def test_a_frozen_peer_loses_its_connection_within_the_keepalive_interval_and_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the connection stayed open for ever (yamux only answered pings)."""
    monkeypatch.setattr(yamux, "KEEPALIVE_INTERVAL", 1.0)
    monkeypatch.setattr(yamux, "KEEPALIVE_TIMEOUT", 1.0)

    async def main() -> None:
        gone: dict[bytes, trio.Event] = {}

        def disconnected(peer: bytes) -> None:
            gone.setdefault(peer, trio.Event()).set()

        async with through_relay(disconnected) as (a, b, relay):
            assert (await request(a, b.self_id)).key == KEY
            event = gone.setdefault(b.self_id, trio.Event())
            relay.freeze()
            frozen_at = trio.current_time()
            with trio.fail_after(15):
                await event.wait()
            took = trio.current_time() - frozen_at
            # Silent since the answer: pinged 1 s later, closed 1 s after that.
            assert 1.0 <= took < 2.0 + SLACK
            assert not a.is_connected(b.self_id)
            with trio.fail_after(p2p.DIAL_TIMEOUT + SLACK):  # dialled afresh
                assert (await request(a, b.self_id)).key == KEY

    trio.run(main)


def test_disconnect_closes_a_frozen_connection_and_the_next_request_dials_afresh() -> None:
    """Before: the next request went to the idle stream on the frozen connection
    and waited there for its timeout."""
    async def main() -> None:
        async with through_relay() as (a, b, relay):
            assert (await request(a, b.self_id)).key == KEY
            (old,) = muxed_conns(a, b.self_id)
            assert b.self_id in a._idle
            relay.freeze()
            assert a.disconnect(b.self_id) is None  # returns at once
            assert b.self_id not in a._idle
            with trio.fail_after(p2p.DIAL_TIMEOUT + SLACK):
                assert (await request(a, b.self_id)).key == KEY
            assert old.is_closed
            assert all(conn is not old for conn in muxed_conns(a, b.self_id))

    trio.run(main)


def test_disconnect_never_raises_and_is_a_no_op_without_connections() -> None:
    a = Host(p2p.new_identity(), PROTOCOL)
    a.disconnect(fake_peer())  # not open

    async def main() -> None:
        async with host() as a, host() as b:
            a.disconnect(fake_peer())
            a.disconnect(b"not a peer id")
            await a.connect(b.self_id, b.listen_addrs()[0])
            a.disconnect(b.self_id)
            a.disconnect(b.self_id)  # a second call while the first closes
            with trio.fail_after(p2p.DISCONNECT_TIMEOUT):
                while a._closing:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert not a.is_connected(b.self_id)

    trio.run(main)
