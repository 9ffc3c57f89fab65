"""Multiaddr text <-> bytes, for the edges (config, gRPC). Uses the multiaddr package only."""

from __future__ import annotations

import multiaddr

from dhtd.errors import InvalidArgument, excerpt
from dhtd.ids import parse_peer_id, strip_and_bound

# Longest multiaddr text we try to parse. A real dial address is far shorter: a
# DNS name is at most 253 characters, a peer ID about 60, and even a
# /webtransport address with two /certhash parts stays well under 400. The cap
# bounds parsing work and keeps a huge `addr` out of memory-hungry parsing.
MAX_ADDR_CHARS = 1024


def format_addr(addr: bytes) -> str:
    """A binary multiaddr as text; an unparseable one as ``<invalid multiaddr HEX>``."""
    try:
        return str(multiaddr.Multiaddr(addr))
    except Exception:
        return f"<invalid multiaddr {addr.hex()}>"


def _parse(text: str, field: str) -> multiaddr.Multiaddr:
    """The multiaddr in ``text``; InvalidArgument if it is empty, longer than
    MAX_ADDR_CHARS, or not a multiaddr. The reason quotes at most ECHO_CHARS of it."""
    text = strip_and_bound(text, field, MAX_ADDR_CHARS)
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise InvalidArgument(field, f"not a multiaddr: {_reason(exc, text)}") from None


def _reason(exc: Exception, text: str) -> str:
    """The multiaddr package's reason without the copies of ``text`` it wraps around it
    ("Invalid MultiAddr '<text>': <reason> (string: <text>)"), cut to ECHO_CHARS."""
    lines = str(exc).splitlines()
    reason = lines[0] if lines else type(exc).__name__
    reason = reason.removeprefix(f"Invalid MultiAddr '{text}': ")
    reason = reason.removesuffix(f" (string: {text})")
    return excerpt(reason)


def protocol_names(addr: str | bytes) -> list[str]:
    """The names of a multiaddr's protocols, e.g. ['ip4', 'tcp', 'https'] (empty for
    one that does not parse)."""
    try:
        return [p.name for p in multiaddr.Multiaddr(addr).protocols()]
    except Exception:
        return []


def parse_dial_addr(text: str, field: str = "addr") -> tuple[bytes, bytes]:
    """Splits ``/ip4/…/tcp/N/p2p/<id>`` into (peer ID multihash, binary transport addr)."""
    addr = _parse(text, field)
    names = [p.name for p in addr.protocols()]
    if not names or names[-1] != "p2p":
        raise InvalidArgument(field, "must end in /p2p/<peer id>")
    if len(names) < 2:
        raise InvalidArgument(field, "needs a transport address before /p2p/<peer id>")
    peer_text = addr.value_for_protocol("p2p")
    peer = parse_peer_id(peer_text, field)
    transport = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_text}"))
    return peer, bytes(transport.to_bytes())


def parse_listen_addr(text: str, field: str = "listen") -> bytes:
    """A TCP listen multiaddr (``/ip4/<ip>/tcp/<port>`` or ip6) as bytes."""
    addr = _parse(text, field)
    names = [p.name for p in addr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise InvalidArgument(field, "must be /ip4/<ip>/tcp/<port> or /ip6/<ip>/tcp/<port>")
    return bytes(addr.to_bytes())


# The first protocol of an announced address: where it is (Kubo's
# Addresses.Announce takes any multiaddr; ours must at least say where).
ANNOUNCE_FIRST = ("ip4", "ip6", "dns", "dns4", "dns6")


def parse_announce_addr(text: str, field: str = "announce") -> bytes:
    """An address to announce (``--announce``, ``--announce-append``) as bytes: a
    multiaddr that starts with /ip4, /ip6, /dns, /dns4 or /dns6 and has no /p2p/
    (the peer ID is added where one is needed). Anything after the host is taken
    as the operator wrote it: /tcp/4001, /tcp/443/tls/http, /tcp/443/https ..."""
    addr = _parse(text, field)
    names = [p.name for p in addr.protocols()]
    if names[0] not in ANNOUNCE_FIRST:
        raise InvalidArgument(field, "must start with /ip4, /ip6, /dns, /dns4 or /dns6")
    if len(names) < 2:
        raise InvalidArgument(field, "needs a transport after the host, e.g. /tcp/4001 "
                              "or /tcp/443/https")
    if "p2p" in names:
        raise InvalidArgument(field, "must not contain /p2p/ (this node's ID is implied)")
    return bytes(addr.to_bytes())


def loopback_dial_addr(listen: bytes) -> bytes:
    """Where a local process reaches a listen address: 0.0.0.0 / :: become loopback."""
    addr = multiaddr.Multiaddr(listen)
    text = str(addr)
    text = text.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/").replace("/ip6/::/", "/ip6/::1/")
    return bytes(multiaddr.Multiaddr(text).to_bytes())
