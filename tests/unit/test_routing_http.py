"""The routing HTTP server and application (dhtd.httproute) over real sockets on
127.0.0.1, with a node that is a stand-in: what only a stand-in can force (a
lookup that never ends, 250 providers, a client that vanishes) is tested here;
the real DHT answers in tests/integration/test_routing_http.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from dhtd.addrs import parse_announce_addr
from dhtd.httproute import HttpServer, Routes
from dhtd.httproute.routes import filter_record
from dhtd.ids import RAW, Cid, peer_id_to_str
from dhtd.lookup import PeerRecord

SLOW = Cid(1, RAW, b"\x12\x20" + bytes(32))
MANY = Cid(1, RAW, b"\x12\x20" + bytes([1]) * 32)
HTTP = parse_announce_addr("/ip4/127.0.0.1/tcp/8080/http")
TCP = parse_announce_addr("/ip4/127.0.0.1/tcp/4001")


def peer(i: int) -> bytes:
    return b"\x00\x24" + i.to_bytes(36, "big")


class StandIn:
    """The parts of DhtNode the routes use."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.timeouts: list[float] = []  # what each lookup was given
        self.host = self
        self.validators = self

    def protocols_of(self, peer_id: bytes) -> tuple[str, ...]:
        return ()

    async def find_providers(self, key: bytes, count: int, put: Callable[[PeerRecord], None],
                             timeout: float) -> int:
        self.timeouts.append(timeout)
        if key == SLOW.multihash:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return 0
        for i in range(250):  # every third has an HTTP address
            put(PeerRecord(peer(i), (HTTP,) if i % 3 == 0 else (TCP,)))
        return 250


class DirectBridge:
    """Bridge.call and Bridge.stream, for work that is itself asyncio."""

    async def call(self, work: Callable[[], Awaitable[Any]]) -> Any:
        return await work()

    async def stream(self, work: Callable[[Callable[[Any], None]], Awaitable[Any]]
                     ) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        end = object()

        async def run() -> None:
            try:
                await work(queue.put_nowait)
            finally:
                queue.put_nowait(end)

        task = asyncio.ensure_future(run())
        try:
            while (item := await queue.get()) is not end:
                yield item
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


Scenario = Callable[[str, StandIn], Awaitable[None]]


def serve(scenario: Scenario, **options: Any) -> None:
    async def main() -> None:
        node = StandIn()
        routes = Routes(node, DirectBridge(), **options)  # type: ignore[arg-type]
        server = HttpServer(routes, max_body=10 * 1024)
        port = await server.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(scenario(f"http://127.0.0.1:{port}", node), 30)
        finally:
            node.release.set()
            await server.close()

    asyncio.run(main())


def test_past_the_cap_a_request_gets_429_with_retry_after() -> None:
    async def scenario(url: str, node: StandIn) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            held = asyncio.ensure_future(client.get(f"{url}/routing/v1/providers/{SLOW}"))
            await asyncio.sleep(0.2)
            refused = await client.get(f"{url}/routing/v1/providers/{MANY}")
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            node.release.set()
            assert (await held).status_code == 200
            assert (await client.get(f"{url}/routing/v1/providers/{MANY}")).status_code == 200

    serve(scenario, max_concurrent=1)


def test_a_client_that_disconnects_cancels_its_lookup() -> None:
    async def scenario(url: str, node: StandIn) -> None:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"GET /routing/v1/providers/{SLOW} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(0.2)
        assert not node.cancelled.is_set()
        sock.close()
        await asyncio.wait_for(node.cancelled.wait(), 5)

    serve(scenario)


def test_the_json_limit_counts_records_after_the_filters() -> None:
    async def scenario(url: str, node: StandIn) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            plain = (await client.get(f"{url}/routing/v1/providers/{MANY}")).json()
            assert len(plain["Providers"]) == 100
            http = (await client.get(f"{url}/routing/v1/providers/{MANY}",
                                     params={"filter-addrs": "http"})).json()["Providers"]
            assert len(http) == 84  # every third of 250
            assert {p["Addrs"][0] for p in http} == {"/ip4/127.0.0.1/tcp/8080/http"}
            assert http[0]["ID"] == peer_id_to_str(peer(0)) and http[1]["ID"] == \
                peer_id_to_str(peer(3))
            stream = await client.get(f"{url}/routing/v1/providers/{MANY}",
                                      headers={"Accept": "application/x-ndjson"})
            assert len(stream.text.splitlines()) == 250  # a stream is not cut at 100

    serve(scenario)


def test_oversized_heads_and_bodies_are_refused() -> None:
    async def scenario(url: str, node: StandIn) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            big_head = await client.get(f"{url}/routing/v1/providers/{MANY}",
                                        headers={"X-Filler": "x" * 20_000})
            assert big_head.status_code == 431
            big_body = await client.put(f"{url}/routing/v1/ipns/{MANY}",
                                        content=b"x" * 20_000,
                                        headers={"Content-Type":
                                                 "application/vnd.ipfs.ipns-record"})
            assert big_body.status_code == 413

    serve(scenario, ipns_put=True)


def test_one_connection_serves_request_after_request() -> None:
    async def scenario(url: str, node: StandIn) -> None:
        opened: list[object] = []
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):
                answer = await client.get(f"{url}/routing/v1/providers/{MANY}")
                assert answer.status_code == 200
                opened.append(answer.extensions.get("network_stream"))
        assert len({id(s) for s in opened if s is not None}) == 1

    serve(scenario)


@pytest.mark.parametrize(("addrs_filter", "protocols_filter", "kept"), [
    ([], [], ["/ip4/1.2.3.4/tcp/1", "/dns4/g.example/tcp/443/https"]),
    (["tcp"], [], ["/ip4/1.2.3.4/tcp/1", "/dns4/g.example/tcp/443/https"]),
    (["https"], [], ["/dns4/g.example/tcp/443/https"]),
    (["!https"], [], ["/ip4/1.2.3.4/tcp/1"]),  # only exclusions: the rest is kept (the IPIP)
    (["!https", "!tcp"], [], None),
    (["!https", "tcp"], [], ["/ip4/1.2.3.4/tcp/1"]),
    (["quic-v1"], [], None),
    ([], ["transport-bitswap"], None),
    ([], ["transport-ipfs-gateway-http"], ["/ip4/1.2.3.4/tcp/1", "/dns4/g.example/tcp/443/https"]),
    ([], ["unknown"], None),
    ([], ["!transport-ipfs-gateway-http"], None),
    ([], ["!transport-bitswap"], ["/ip4/1.2.3.4/tcp/1", "/dns4/g.example/tcp/443/https"]),
])
def test_ipip_484_filters(addrs_filter: list[str], protocols_filter: list[str],
                          kept: list[str] | None) -> None:
    record = {"Schema": "peer", "ID": "x", "Protocols": ["transport-ipfs-gateway-http"],
              "Addrs": ["/ip4/1.2.3.4/tcp/1", "/dns4/g.example/tcp/443/https"]}
    got = filter_record(record, addrs_filter, protocols_filter)
    assert (got["Addrs"] if got else None) == kept


def test_unknown_matches_records_that_lack_addresses_or_protocols() -> None:
    bare = {"Schema": "peer", "ID": "x", "Protocols": [], "Addrs": []}
    assert filter_record(bare, ["unknown"], []) == bare
    assert filter_record(bare, [], ["unknown"]) == bare
    assert filter_record(bare, ["tcp"], []) is None
    assert filter_record(bare, [], ["transport-bitswap"]) is None


def test_each_lookup_is_bounded_by_the_routing_timeout() -> None:
    async def scenario(url: str, node: StandIn) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await client.get(f"{url}/routing/v1/providers/{MANY}")
        assert node.timeouts == [7.5]

    serve(scenario, timeout=7.5)


def test_a_connection_that_sends_nothing_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from dhtd.httproute import server as server_module

    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.3)

    async def scenario(url: str, node: StandIn) -> None:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /routing/v1/provi")  # half a request line, then silence
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()

    serve(scenario)
