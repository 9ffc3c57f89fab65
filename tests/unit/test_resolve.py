"""DNS multiaddrs are resolved to IP multiaddrs at dial time (no real DNS here)."""

from __future__ import annotations

import socket
from typing import Any

import multiaddr
import pytest
import trio

from dhtd import p2p
from dhtd.lookup import PeerRequestError


def fake_getaddrinfo(table: dict[tuple[str, int], list[str]]) -> Any:
    async def lookup(host: str, port: object, family: int = 0, type: int = 0) -> list[Any]:
        ips = table.get((host, family))
        if not ips:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, type, 6, "", (ip, 0)) for ip in ips]

    return lookup


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        ("node", socket.AF_INET): ["127.0.0.5", "127.0.0.6"],
        ("node", socket.AF_INET6): ["::1"],
    }
    monkeypatch.setattr(trio.socket, "getaddrinfo", fake_getaddrinfo(table))


def resolve(text: str) -> list[str]:
    return [str(a) for a in trio.run(p2p.resolve, multiaddr.Multiaddr(text))]


def test_dns4_gives_ipv4_only(dns: None) -> None:
    assert resolve("/dns4/node/tcp/4001") == ["/ip4/127.0.0.5/tcp/4001", "/ip4/127.0.0.6/tcp/4001"]


def test_dns6_and_dns(dns: None) -> None:
    assert resolve("/dns6/node/tcp/4001") == ["/ip6/::1/tcp/4001"]
    assert resolve("/dns/node/tcp/4001") == [
        "/ip4/127.0.0.5/tcp/4001", "/ip4/127.0.0.6/tcp/4001", "/ip6/::1/tcp/4001"]


def test_ip_addresses_pass_through(dns: None) -> None:
    assert resolve("/ip4/127.0.0.1/tcp/1") == ["/ip4/127.0.0.1/tcp/1"]


def test_unknown_name_is_a_peer_request_error(dns: None) -> None:
    with pytest.raises(PeerRequestError, match="cannot resolve 'ghost'"):
        resolve("/dns4/ghost/tcp/4001")
