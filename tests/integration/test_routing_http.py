"""The Delegated Routing V1 HTTP API of a live dhtd, asked with a plain HTTP client.

One dhtd with 4 dev peers serves /routing/v1 on 127.0.0.1 (IPNS PUT allowed);
it provides CIDs, with a gateway address appended, so that providers, filters,
peers, closest peers and IPNS can be read back through HTTP, with the statuses
and headers of the spec and of boxo's server (someguy).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dht.v1 import dht_pb2 as pb
from dhtd.ids import LIBP2P_KEY, Cid, b58decode, peer_id_to_str
from tests.integration.test_swarm import cid_for
from tests.ipns import Ed25519Identity, ipns_record
from tests.swarm import Node, dev_node, start_node

pytestmark = pytest.mark.integration

GATEWAY = "/ip4/127.0.0.1/tcp/8080/http"
NDJSON = "application/x-ndjson"
IPNS = "application/vnd.ipfs.ipns-record"


@contextmanager
def routing_node(tmp: Path, name: str) -> Iterator[Node]:
    """A dev node serving the routing API on a free port, IPNS PUT on, and an HTTP
    gateway address announced beside its own."""
    args = ["--routing-http-addr", "127.0.0.1:0", "--routing-http-put-ipns", "true",
            "--announce-append", GATEWAY]
    with dev_node(name, tmp / "d", args) as started:
        yield started


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with routing_node(tmp_path_factory.mktemp("http"), "http") as started:
        yield started


def base(node: Node) -> str:
    return f"http://{node.info['routing_http_addr']}/routing/v1"


def provided(node: Node, text: str) -> str:
    cid = cid_for(text)
    list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=30))
    return cid


def test_providers_as_json_with_the_headers_of_the_spec(node: Node) -> None:
    cid = provided(node, "http providers")
    answer = httpx.get(f"{base(node)}/providers/{cid}", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["vary"] == "Accept"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["cache-control"] == (
        "public, max-age=300, stale-while-revalidate=172800, stale-if-error=172800")
    listen = [a.rsplit("/p2p/", 1)[0] for a in str(node.info["addrs"]).split(",")]
    assert answer.json()["Providers"][0] == {
        "Schema": "peer", "ID": node.peer_id, "Addrs": [*listen, GATEWAY],
        "Protocols": ["transport-ipfs-gateway-http"]}


def test_nothing_found_is_200_with_an_empty_list_cached_briefly(node: Node) -> None:
    answer = httpx.get(f"{base(node)}/providers/{cid_for('nobody has this')}", timeout=30)
    assert answer.status_code == 200
    assert answer.json() == {"Providers": []}
    assert answer.headers["cache-control"].startswith("public, max-age=15,")
    ndjson = httpx.get(f"{base(node)}/providers/{cid_for('nobody has this')}",
                       headers={"Accept": NDJSON}, timeout=30)
    assert (ndjson.status_code, ndjson.text) == (200, "")
    assert ndjson.headers["content-type"] == NDJSON


def test_ndjson_streams_each_record_as_it_is_found(node: Node) -> None:
    cid = provided(node, "http ndjson")
    started = time.monotonic()
    lines: list[tuple[float, dict[str, object]]] = []
    with httpx.stream("GET", f"{base(node)}/providers/{cid}",
                      headers={"Accept": f"{NDJSON}, application/json"}, timeout=30) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == NDJSON
        assert answer.headers["transfer-encoding"] == "chunked"
        for line in answer.iter_lines():
            lines.append((time.monotonic() - started, json.loads(line)))
    ended = time.monotonic() - started
    assert [r["ID"] for _, r in lines] == [node.peer_id]
    # This node's own record is known before the walk: it arrives, and the stream
    # goes on until the walk over the other peers has ended.
    assert lines[0][0] < ended


def test_filters_keep_matching_addresses_and_drop_what_matches_nothing(node: Node) -> None:
    cid = provided(node, "http filters")
    url = f"{base(node)}/providers/{cid}"

    def addrs(**params: str) -> list[list[str]]:
        answer = httpx.get(url, params=params, timeout=30)
        assert answer.status_code == 200
        return [r["Addrs"] for r in answer.json()["Providers"]]

    assert addrs(**{"filter-addrs": "http"}) == [[GATEWAY]]
    tcp_only = addrs(**{"filter-addrs": "!http,tcp"})
    assert len(tcp_only) == 1 and GATEWAY not in tcp_only[0] and tcp_only[0]
    assert addrs(**{"filter-addrs": "webtransport"}) == []
    assert addrs(**{"filter-protocols": "transport-ipfs-gateway-http"}) != []
    assert addrs(**{"filter-protocols": "transport-bitswap"}) == []
    assert addrs(**{"filter-protocols": "transport-bitswap,unknown"}) == []


def test_peers_by_base58_or_cid_and_bad_ids_named(node: Node) -> None:
    peer = node.dev_peer_ids()[0]
    as_cid = str(Cid(1, LIBP2P_KEY, b58decode(peer)))
    for text in (peer, as_cid):
        answer = httpx.get(f"{base(node)}/peers/{text}", timeout=30)
        assert answer.status_code == 200, answer.text
        (record,) = answer.json()["Peers"]
        assert record["ID"] == peer and record["Schema"] == "peer" and record["Addrs"]
    bad = httpx.get(f"{base(node)}/peers/not-a-peer", timeout=30)
    assert bad.status_code == 400
    assert bad.text.startswith("the path's peer-id: ")
    stranger = peer_id_to_str(b"\x00\x24" + bytes(range(36)))
    assert httpx.get(f"{base(node)}/peers/{stranger}", timeout=30).json() == {"Peers": []}


def test_closest_peers_of_a_cid(node: Node) -> None:
    answer = httpx.get(f"{base(node)}/dht/closest/peers/{cid_for('closest')}", timeout=30)
    assert answer.status_code == 200
    peers = answer.json()["Peers"]
    assert {p["ID"] for p in peers} == set(node.dev_peer_ids())  # all 4 (fewer than k)
    ndjson = httpx.get(f"{base(node)}/dht/closest/peers/{node.peer_id}",
                       headers={"Accept": NDJSON}, timeout=30)
    assert len(ndjson.text.splitlines()) == 4


def test_ipns_put_then_get_the_same_bytes(node: Node) -> None:
    owner = Ed25519Identity()
    name = str(Cid(1, LIBP2P_KEY, owner.peer_id))
    record = ipns_record(owner, ttl=120 * 10**9)
    url = f"{base(node)}/ipns/{name}"
    assert httpx.get(url, headers={"Accept": IPNS}, timeout=30).status_code == 404
    wrong = httpx.put(url, content=record, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert wrong.status_code == 406
    forged = ipns_record(owner, sign_with=Ed25519Identity())
    bad = httpx.put(url, content=forged, headers={"Content-Type": IPNS}, timeout=30)
    assert bad.status_code == 400 and "not valid for this name" in bad.text
    put = httpx.put(url, content=record, headers={"Content-Type": IPNS}, timeout=30)
    assert put.status_code == 200, put.text
    got = httpx.get(url, headers={"Accept": IPNS}, timeout=30)
    assert got.status_code == 200
    assert got.content == record
    assert got.headers["content-type"] == IPNS
    assert got.headers["cache-control"].startswith("public, max-age=120,")
    assert got.headers["etag"].startswith('"') and got.headers["expires"]
    older = ipns_record(owner, sequence=0, ttl=120 * 10**9)
    stale = httpx.put(url, content=older, headers={"Content-Type": IPNS}, timeout=30)
    assert stale.status_code == 400, stale.text
    assert httpx.get(url, headers={"Accept": IPNS}, timeout=30).content == record
    refused = httpx.get(url, headers={"Accept": "application/json"}, timeout=30)
    assert refused.status_code == 406 and IPNS in refused.text


def test_cors_preflight_and_unsupported_paths(node: Node) -> None:
    url = f"{base(node)}/providers/{cid_for('x')}"
    pre = httpx.options(url, headers={"Origin": "https://example.com",
                                      "Access-Control-Request-Method": "GET"}, timeout=30)
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert pre.headers["access-control-allow-methods"] == "GET, PUT, OPTIONS"
    assert "Accept" in pre.headers["access-control-allow-headers"]
    assert httpx.put(f"{base(node)}/providers", content=b"{}", timeout=30).status_code == 501
    assert httpx.delete(url, timeout=30).status_code == 501
    unknown = httpx.get(f"http://{node.info['routing_http_addr']}/nope", timeout=30)
    assert unknown.status_code == 400 and "/routing/v1/providers/{cid}" in unknown.text
    html = httpx.get(url, headers={"Accept": "text/html"}, timeout=30)
    assert html.status_code == 400 and "Accept" in html.text
    crowded = httpx.get(url + "?" + "&".join(f"f{i}=x" for i in range(17)), timeout=30)
    assert crowded.status_code == 400 and "query fields" in crowded.text
    bad_cid = httpx.get(f"{base(node)}/providers/bafyNOT", timeout=30)
    assert bad_cid.status_code == 400 and bad_cid.text.startswith("the path's CID: ")


def test_requests_are_counted_by_handler_method_and_code(node: Node) -> None:
    httpx.get(f"{base(node)}/providers/{cid_for('metrics')}", timeout=30)
    text = urllib.request.urlopen(f"http://{node.info['metrics_addr']}/metrics",
                                  timeout=10).read().decode()
    pattern = (r'^delegated_routing_server_http_request_duration_seconds_count\{'
               r'code="200",handler="/routing/v1/providers/\{cid\}",method="GET"\} (\S+)$')
    assert float(re.findall(pattern, text, re.M)[0]) >= 1
    assert "delegated_routing_server_http_requests_inflight" in text


def test_ipns_put_is_off_unless_the_operator_allows_it(tmp_path: Path) -> None:
    other = start_node("http-off", tmp_path / "d", ["--routing-http-addr", "127.0.0.1:0"])
    try:
        owner = Ed25519Identity()
        url = f"{base(other)}/ipns/{Cid(1, LIBP2P_KEY, owner.peer_id)}"
        answer = httpx.put(url, content=ipns_record(owner), headers={"Content-Type": IPNS},
                           timeout=30)
        assert answer.status_code == 501 and "--routing-http-put-ipns" in answer.text
        # No DHT peer yet: a lookup says so, and when to come back.
        busy = httpx.get(f"{base(other)}/providers/{cid_for('lonely')}", timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "10"
    finally:
        other.stop()


ALLOWED = {200, 204, 400, 404, 406, 413, 429, 431, 501, 503}


def test_random_requests_get_a_clear_status_and_leave_no_error_in_the_log(node: Node) -> None:
    """Random paths under each endpoint, Accept headers, methods and bodies: every
    answer is one of the documented statuses (never 500), and dhtd logs no error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.service.test_grpc_edge import bad_lines

    segments = st.one_of(
        st.sampled_from([cid_for("fuzz"), node.peer_id, "", "%00", "..", "k51", "Qm" + "x" * 44,
                         "bafy" + "a" * 2000]),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                       blacklist_characters="/?#%"), max_size=80),
    )
    prefixes = st.sampled_from(["/routing/v1/providers/", "/routing/v1/peers/",
                                "/routing/v1/dht/closest/peers/", "/routing/v1/ipns/",
                                "/routing/v1/", "/", "/routing/v2/providers/"])
    accepts = st.sampled_from(["", "application/json", NDJSON, IPNS, "*/*", "text/html",
                               "application/json;q=0.5, application/x-ndjson", ";;;,"])
    methods = st.sampled_from(["GET", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"])
    queries = st.sampled_from(["", "?filter-addrs=tcp", "?filter-protocols=!x,unknown",
                               "?filter-addrs=" + "a," * 500, "?a=%ff%fe",
                               "?" + "&".join(f"f{i}=1" for i in range(40))])
    bodies = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"x" * 12_000))
    before = len(bad_lines(node))

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(prefix=prefixes, segment=segments, accept=accepts, method=methods, query=queries,
           body=bodies)
    def run(prefix: str, segment: str, accept: str, method: str, query: str,
            body: bytes) -> None:
        headers = {"Accept": accept, "Content-Type": IPNS} if accept else {"Content-Type": IPNS}
        answer = httpx.request(method, f"http://{node.info['routing_http_addr']}{prefix}"
                               f"{segment}{query}", headers=headers, content=body, timeout=40)
        assert answer.status_code in ALLOWED, (method, prefix, segment, answer.status_code,
                                               answer.text[:200])

    run()
    assert bad_lines(node)[before:] == []
