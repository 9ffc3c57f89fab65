"""The Delegated Routing V1 HTTP API (ipfs/specs, http-routing-v1), served from
this node's DHT: the same lookups as the gRPC API, through the same bridge.

| endpoint | answer |
|---|---|
| ``GET /routing/v1/providers/{cid}`` | the CID's providers |
| ``GET /routing/v1/peers/{peer-id}`` | the peer's addresses (FindPeer) |
| ``GET /routing/v1/dht/closest/peers/{key}`` | the peers closest to a CID or peer ID (IPIP-476) |
| ``GET /routing/v1/ipns/{name}`` | the IPNS record (``application/vnd.ipfs.ipns-record``) |
| ``PUT /routing/v1/ipns/{name}`` | publishes one, if the operator allowed it |

Promises, as boxo's server and someguy keep them:

- JSON unless ``Accept`` asks for ``application/x-ndjson``; then records are
  written and flushed one by one as the DHT finds them. JSON carries at most
  :data:`MAX_JSON_RECORDS`, counted after the IPIP-484 filters
  (``filter-addrs``, ``filter-protocols``).
- Nothing found is 200 with an empty list (IPIP-513), cached briefly; results are
  cached longer (:data:`CACHE_WITH_RESULTS`). ``Vary: Accept`` always.
- Every answer allows any origin (CORS), and ``OPTIONS`` answers a preflight.
- Each lookup is bounded by ``timeout`` (25 s by default, under the 30 s Helia
  waits); a client that disconnects cancels it. Past ``max_concurrent``
  requests at once: 429 with ``Retry-After``.
- Bad input is 400 with a text naming what was wrong; a wrong ``Accept`` for
  IPNS 406; what is not supported 501. No answer carries a traceback.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from dhtd.addrs import format_addr, protocol_names
from dhtd.bridge import Bridge
from dhtd.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    InvalidRecord,
    NotFound,
    Unavailable,
)
from dhtd.ids import LIBP2P_KEY, Cid, parse_cid, parse_peer_id, peer_id_to_str
from dhtd.lookup import EventType, PeerRecord, QueryEvent
from dhtd.node import DhtNode
from dhtd.records import ipns_timing

from .server import Request, Response

JSON = "application/json"
NDJSON = "application/x-ndjson"
IPNS_RECORD = "application/vnd.ipfs.ipns-record"

# The spec: application/json responses SHOULD be limited to 100 records.
MAX_JSON_RECORDS = 100
# Ours: records one NDJSON stream carries at most (providers a key keeps are far
# fewer; this bounds a stream that filters keep running).
MAX_STREAM_RECORDS = 1000
# The IPNS record spec: a record is at most 10 KiB.
MAX_IPNS_RECORD_BYTES = 10 * 1024
# someguy's routing timeout: 25 s, because Helia gives up at 30 s.
DEFAULT_TIMEOUT = 25.0
# Requests served at once (ours); one more gets 429 with Retry-After.
DEFAULT_MAX_CONCURRENT = 64
RETRY_AFTER = 1  # seconds
# boxo's Cache-Control policy: results for 5 minutes, nothing found for 15 s, and
# stale answers while they are within the Amino DHT's 48 h record lifetime.
CACHE_WITH_RESULTS = 300
CACHE_EMPTY = 15
CACHE_STALE = 48 * 3600
# IPNS: without a TTL in the record (the IPNS spec's default is 1 h; boxo uses it).
DEFAULT_IPNS_TTL = 3600
# The Routing V1 protocol names (IPIP-484 filters match them).
BITSWAP = "transport-bitswap"
GATEWAY_HTTP = "transport-ipfs-gateway-http"

CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, PUT, OPTIONS"),
]
PREFLIGHT = [
    *CORS,
    ("Access-Control-Allow-Headers", "Content-Type, Accept"),
    ("Access-Control-Max-Age", "86400"),
]


class HttpError(Exception):
    """Ends a request with ``status`` and a one-line text."""

    def __init__(self, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = list(headers)


# Domain errors -> HTTP statuses, in one table (someguy maps them the same way).
STATUS_OF: dict[type[Exception], int] = {
    InvalidArgument: 400,
    InvalidRecord: 400,
    # (a Put older than the record held: the spec's PUT statuses are 200, 400 and 406)
    FailedPrecondition: 400,
    NotFound: 404,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


def status_of(exc: Exception) -> int:
    for kind, status in STATUS_OF.items():
        if isinstance(exc, kind):
            return status
    raise exc


@dataclass(frozen=True)
class Route:
    method: str
    prefix: str  # the path up to the one parameter
    handler: str  # the metrics label: the path pattern


ROUTES = (
    Route("GET", "/routing/v1/providers/", "/routing/v1/providers/{cid}"),
    Route("GET", "/routing/v1/peers/", "/routing/v1/peers/{peer-id}"),
    Route("GET", "/routing/v1/dht/closest/peers/", "/routing/v1/dht/closest/peers/{key}"),
    Route("GET", "/routing/v1/ipns/", "/routing/v1/ipns/{name}"),
    Route("PUT", "/routing/v1/ipns/", "/routing/v1/ipns/{name}"),
)
# Paths of the spec this server does not serve (writes of provider and peer records).
UNSUPPORTED = ("/routing/v1/providers", "/routing/v1/peers")


def parse_filter(query: dict[str, list[str]], name: str) -> list[str]:
    """An IPIP-484 filter: comma-separated, case-insensitive, empty entries dropped."""
    return [item for text in query.get(name, []) for item in text.lower().split(",") if item]


def filter_record(record: dict[str, Any], addrs_filter: list[str],
                  protocols_filter: list[str]) -> dict[str, Any] | None:
    """The record with only the addresses ``addrs_filter`` lets through (IPIP-484), or
    None if the filters drop it. ``unknown`` matches a record with no addresses (or
    no protocols); ``!name`` excludes what has it; what is left must match one of
    the other names, when there is one. (boxo drops every address when all its
    address filters are exclusions; the IPIP's own example, ``!quic-v1,!tcp``,
    means to keep the rest, and so does this server.)"""
    protocols: list[str] = record["Protocols"]
    if protocols_filter and not _passes(protocols, protocols_filter):
        return None
    addrs: list[str] = record["Addrs"]
    if not addrs_filter or (not addrs and "unknown" in addrs_filter):
        return record
    kept = [a for a in addrs if _passes(protocol_names(a), addrs_filter, unknown=False)]
    if not kept:
        return None
    return {**record, "Addrs": kept}


def _passes(names: Sequence[str], filters: list[str], unknown: bool = True) -> bool:
    """Whether ``names`` (an address's protocols, or a record's) pass ``filters``:
    none excluded, and one included if any inclusion is given (``unknown`` counts
    as an inclusion that an empty ``names`` meets, when ``unknown`` applies)."""
    if any(f.startswith("!") and f[1:] in names for f in filters):
        return False
    wanted = [f for f in filters if not f.startswith("!")]
    if not wanted:
        return True
    if unknown and not names and "unknown" in wanted:
        return True
    return any(f in names for f in wanted)


def _accepts(request: Request) -> str:
    """JSON or NDJSON, from Accept (boxo's rule: NDJSON if listed, else JSON if listed
    or */* or no Accept); HttpError 400 if it lists neither."""
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return JSON
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if NDJSON in types:
        return NDJSON
    if types & {JSON, "*/*", "application/*"}:
        return JSON
    raise HttpError(400, f"Accept lists neither {JSON} nor {NDJSON}")


def _cache(max_age: int, stale: int = CACHE_STALE) -> tuple[str, str]:
    return ("Cache-Control",
            f"public, max-age={max_age}, stale-while-revalidate={stale}, stale-if-error={stale}")


Find = Callable[[Callable[[PeerRecord], None], float], Awaitable[Any]]


class Routes:
    """The HTTP application: one call per request (served by
    :class:`dhtd.httproute.server.HttpServer`)."""

    def __init__(self, node: DhtNode, bridge: Bridge, *, timeout: float = DEFAULT_TIMEOUT,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT, ipns_put: bool = False,
                 started: Callable[[str], None] = lambda handler: None,
                 finished: Callable[[str, str, int, float, int], None] = lambda *a: None,
                 ) -> None:
        self.node = node
        self.bridge = bridge
        self.timeout = timeout
        self.max_concurrent = max_concurrent
        self.ipns_put = ipns_put
        self.in_flight = 0
        # Told of every request, by handler pattern, and of its (method, handler,
        # status, seconds, body bytes) when it ends (dhtd.metrics).
        self._started = started
        self._finished = finished

    async def __call__(self, request: Request, response: Response) -> None:
        started = time.perf_counter()
        route = self._route(request)
        handler = route.handler if route else "other"
        method = request.method if request.method in ("GET", "PUT", "OPTIONS") else "other"
        self._started(handler)
        try:
            await self._dispatch(request, response, route)
        except HttpError as exc:
            await self._error(response, exc)
        finally:
            # (a request cancelled before its answer began is counted as 499, as nginx does)
            self._finished(method, handler, response.status or 499,
                           time.perf_counter() - started, response.sent_bytes)

    def _route(self, request: Request) -> Route | None:
        for route in ROUTES:
            if route.method == request.method and request.path.startswith(route.prefix):
                return route
        return None

    async def _dispatch(self, request: Request, response: Response, route: Route | None) -> None:
        if request.method == "OPTIONS":
            await response.send(204, PREFLIGHT, b"")
            return
        if route is None:
            known = any(request.path.startswith(r.prefix) for r in ROUTES)
            if known or request.path.rstrip("/") in UNSUPPORTED:
                raise HttpError(501, f"{request.method} {request.path} is not supported here")
            raise HttpError(400, f"unknown path {request.path}: this server answers "
                            + ", ".join(sorted({r.handler for r in ROUTES})))
        if self.in_flight >= self.max_concurrent:
            raise HttpError(429, f"more than {self.max_concurrent} requests at once; retry",
                            [("Retry-After", str(RETRY_AFTER))])
        self.in_flight += 1
        try:
            param = request.path[len(route.prefix):]
            if not param or "/" in param:
                raise HttpError(400, f"{route.handler}: give exactly one path parameter")
            kind = route.handler
            if kind.endswith("{cid}"):
                await self._providers(request, response, param)
            elif kind.endswith("{peer-id}"):
                await self._peers(request, response, param)
            elif kind.endswith("{key}"):
                await self._closest(request, response, param)
            elif request.method == "GET":
                await self._get_ipns(request, response, param)
            else:
                await self._put_ipns(request, response, param)
        finally:
            self.in_flight -= 1

    async def _error(self, response: Response, exc: HttpError) -> None:
        if response.started:
            return  # a stream already began: it just ends
        headers = [*CORS, ("Content-Type", "text/plain; charset=utf-8"),
                   ("Vary", "Accept"), *exc.headers]
        await response.send(exc.status, headers, (exc.text + "\n").encode())

    # -- records ------------------------------------------------------------

    @staticmethod
    def record(peer: PeerRecord, spoken: Sequence[str]) -> dict[str, Any]:
        """The Peer Schema record of a peer: its addresses, and the Routing V1
        protocols they or its identify (``spoken``) say it speaks."""
        addrs = [format_addr(a) for a in peer.addrs]
        protocols = []
        if any(n in ("http", "https") for a in addrs for n in protocol_names(a)):
            protocols.append(GATEWAY_HTTP)
        if any(p.startswith("/ipfs/bitswap") for p in spoken):
            protocols.append(BITSWAP)
        return {"Addrs": addrs, "ID": peer_id_to_str(peer.id), "Protocols": protocols,
                "Schema": "peer"}

    async def _records(self, request: Request, response: Response, find: Find,
                       field: str) -> None:
        """Streams or collects the records ``find`` puts, filtered, within the timeout."""
        query = _query(request)
        addrs_filter = parse_filter(query, "filter-addrs")
        protocols_filter = parse_filter(query, "filter-protocols")
        media = _accepts(request)
        limit = MAX_STREAM_RECORDS if media == NDJSON else MAX_JSON_RECORDS
        timeout = self.timeout
        host = self.node.host

        async def work(put: Callable[[tuple[PeerRecord, Sequence[str]]], None]) -> Any:
            # (on the node's side: the peerstore is read where it is written)
            return await find(lambda peer: put((peer, host.protocols_of(peer.id))), timeout)

        sent: list[dict[str, Any]] = []
        records = self._filtered(work, addrs_filter, protocols_filter, limit)
        if media == NDJSON:
            async for record in records:
                if not response.started:
                    await response.start(200, [*CORS, ("Content-Type", NDJSON), ("Vary", "Accept"),
                                               _cache(CACHE_WITH_RESULTS), _modified()])
                await response.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                sent.append(record)
            if not response.started:
                await response.start(200, [*CORS, ("Content-Type", NDJSON), ("Vary", "Accept"),
                                           _cache(CACHE_EMPTY), _modified()])
            await response.end()
            return
        async for record in records:
            sent.append(record)
        body = json.dumps({field: sent}, separators=(",", ":")).encode()
        await response.send(200, [*CORS, ("Content-Type", JSON), ("Vary", "Accept"),
                                  _cache(CACHE_WITH_RESULTS if sent else CACHE_EMPTY),
                                  _modified()], body)

    async def _filtered(
        self, work: Callable[[Callable[[tuple[PeerRecord, Sequence[str]]], None]], Awaitable[Any]],
        addrs_filter: list[str], protocols_filter: list[str], limit: int,
    ) -> AsyncIterator[dict[str, Any]]:
        count = 0
        stream = self.bridge.stream(work)
        try:
            async for peer, spoken in stream:
                record = filter_record(self.record(peer, spoken), addrs_filter, protocols_filter)
                if record is None:
                    continue
                yield record
                count += 1
                if count >= limit:
                    return
        except (NotFound, DeadlineExceeded):
            return  # nothing (more) found in time: what was found is the answer
        except Unavailable as exc:
            if count == 0:
                raise HttpError(503, f"the DHT is unavailable: {exc}",
                                [("Retry-After", "10")]) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    # -- endpoints ----------------------------------------------------------------

    async def _providers(self, request: Request, response: Response, text: str) -> None:
        cid = _cid(text)
        node = self.node

        async def find(put: Callable[[PeerRecord], None], timeout: float) -> Any:
            return await node.find_providers(cid.multihash, MAX_STREAM_RECORDS, put, timeout)

        await self._records(request, response, find, "Providers")

    async def _peers(self, request: Request, response: Response, text: str) -> None:
        peer = _peer(text)
        node = self.node

        async def find(put: Callable[[PeerRecord], None], timeout: float) -> Any:
            put(await node.find_peer(peer, timeout))

        await self._records(request, response, find, "Peers")

    async def _closest(self, request: Request, response: Response, text: str) -> None:
        key = _key(text)
        node = self.node

        async def find(put: Callable[[PeerRecord], None], timeout: float) -> Any:
            def final(event: QueryEvent) -> None:
                if event.type == EventType.FINAL_PEER and event.responses:
                    put(event.responses[0])

            return await node.query(key, final, timeout)

        await self._records(request, response, find, "Peers")

    async def _get_ipns(self, request: Request, response: Response, text: str) -> None:
        accept = request.headers.get("accept", "").lower()
        if accept.strip() and IPNS_RECORD not in accept and "*/*" not in accept:
            raise HttpError(406, f"IPNS records are served as {IPNS_RECORD}: retry with "
                            f"Accept: {IPNS_RECORD}")
        name = _peer(text, "name")
        key = b"/ipns/" + name
        timeout = self.timeout
        node = self.node
        try:
            value = await self.bridge.call(lambda: node.get_value(key, timeout))
        except (NotFound, DeadlineExceeded):
            raise HttpError(404, "no IPNS record found for this name",
                            [_cache(CACHE_EMPTY)]) from None
        except Unavailable as exc:
            raise HttpError(503, f"the DHT is unavailable: {exc}",
                            [("Retry-After", "10")]) from None
        ttl, eol = ipns_timing(value)
        stale = max(0, eol - int(time.time())) if eol else CACHE_STALE
        headers = [*CORS, ("Content-Type", IPNS_RECORD), ("Vary", "Accept"),
                   _cache(ttl or DEFAULT_IPNS_TTL, stale), _modified(),
                   ("Etag", f'"{hashlib.sha256(value).hexdigest()[:32]}"'),
                   ("Content-Disposition",
                    f'attachment; filename="{Cid(1, LIBP2P_KEY, name)}.ipns-record"')]
        if eol:
            headers.append(("Expires", formatdate(eol, usegmt=True)))
        await response.send(200, headers, value)

    async def _put_ipns(self, request: Request, response: Response, text: str) -> None:
        if not self.ipns_put:
            raise HttpError(501, "publishing IPNS records is off on this node "
                            "(the operator enables it with --routing-http-put-ipns)")
        if IPNS_RECORD not in request.headers.get("content-type", "").lower():
            raise HttpError(406, f"send the record as Content-Type: {IPNS_RECORD}")
        name = _peer(text, "name")
        key = b"/ipns/" + name
        if len(request.body) > MAX_IPNS_RECORD_BYTES:
            raise HttpError(413, f"an IPNS record is at most {MAX_IPNS_RECORD_BYTES} bytes")
        try:
            self.node.validators.validate(key, request.body)
        except InvalidRecord as exc:
            raise HttpError(400, f"the record is not valid for this name: {exc}") from None
        timeout = self.timeout
        node = self.node
        value = request.body
        try:
            await self.bridge.call(lambda: node.put_value(key, value, lambda e: None, timeout))
        except (Unavailable, DeadlineExceeded) as exc:
            raise HttpError(503, f"no peer took the record: {exc}",
                            [("Retry-After", "10")]) from None
        except (InvalidArgument, InvalidRecord, FailedPrecondition) as exc:
            raise HttpError(status_of(exc), str(exc)) from None
        await response.send(200, [*CORS, ("Vary", "Accept")], b"")


# Ours: query fields a request may carry (the API has two).
MAX_QUERY_FIELDS = 16


def _query(request: Request) -> dict[str, list[str]]:
    try:
        return parse_qs(request.query, keep_blank_values=False,
                        max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise HttpError(400, f"more than {MAX_QUERY_FIELDS} query fields") from None


def _modified() -> tuple[str, str]:
    return ("Last-Modified", formatdate(usegmt=True))


def _cid(text: str) -> Cid:
    try:
        return parse_cid(text, "cid")
    except InvalidArgument as exc:
        raise HttpError(400, f"the path's CID: {exc.reason}") from None


def _peer(text: str, what: str = "peer-id") -> bytes:
    """A peer ID in any form someguy takes: base58, CIDv1 libp2p-key, or another
    CIDv1 of the same multihash (uplifted, as boxo does)."""
    try:
        return parse_peer_id(text, what)
    except InvalidArgument as first:
        try:
            return parse_cid(text, what).multihash
        except InvalidArgument:
            raise HttpError(400, f"the path's {what}: {first.reason}") from None


def _key(text: str) -> bytes:
    """IPIP-476's key: a CID (its multihash) or a peer ID."""
    try:
        return parse_peer_id(text, "key")
    except InvalidArgument:
        pass
    try:
        return parse_cid(text, "key").multihash
    except InvalidArgument as exc:
        raise HttpError(400, f"the path's key is neither a CID nor a peer ID: {exc.reason}") \
            from None

