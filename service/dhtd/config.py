"""dhtd's configuration: one validated object, from flags and DHTD_* variables.

Every flag ``--some-flag`` also reads ``DHTD_SOME_FLAG``; a flag given on the
command line wins. Repeatable flags take a comma-separated list in their
variable. :func:`load` checks everything at once and raises
:class:`ConfigError` with one line per bad setting.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dhtd
from dhtd.addrs import parse_announce_addr, parse_dial_addr, parse_listen_addr
from dhtd.blocks.sources import DEFAULT_SOURCE_TIMEOUT, parse_source
from dhtd.errors import InvalidArgument

DEFAULT_GRPC_ADDR = "127.0.0.1:50051"
DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"
DEFAULT_PROTOCOL_PREFIX = "/ipfs"
# The server-side cap on one DHT operation (the issue's --query-timeout default).
DEFAULT_QUERY_TIMEOUT = 60.0
# In-flight RPCs get this long to finish on SIGTERM before they are cancelled.
DEFAULT_SHUTDOWN_GRACE = 10.0
# /metrics, /healthz and /readyz (the OpenTelemetry Prometheus exporter's usual port).
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
# How often provided CIDs are announced again (go-libp2p-kad-dht / Kubo: 22 h).
DEFAULT_REPROVIDE_INTERVAL = 22 * 3600.0
# dhtd.node.REPUBLISH_INTERVAL: records this node Put are put again twice a day.
DEFAULT_REPUBLISH_INTERVAL = 12 * 3600.0
# How often the routing table is refreshed (dhtd.refresh; go-libp2p-kad-dht: 10 min).
DEFAULT_REFRESH_INTERVAL = 600.0
# The connection budget (dhtd.p2p.ConnectionBudget), after go-libp2p's connmgr:
# Kubo's defaults are 32/96 with a 20 s grace, go-libp2p's own 160/192 with 1 min.
# A DHT server talks to many peers (a lookup alone dials dozens), so the marks sit
# near go-libp2p's; the grace is Kubo's.
DEFAULT_CONN_LOW_WATER = 128
DEFAULT_CONN_HIGH_WATER = 192
DEFAULT_CONN_GRACE = 20.0
# dhtd.node.PROVIDE_BATCH_MIN: a Provide or reprovide round of this many CIDs or
# more is announced in one sweep (a few lookups per keyspace region).
DEFAULT_PROVIDE_BATCH_MIN = 32
# Holders a Provide or Put waits for (dhtd.node.MIN_HOLDERS says why 5).
DEFAULT_MIN_HOLDERS = 5
# Ours: --block-source given more often is a mistake (each is tried in turn).
MAX_BLOCK_SOURCES = 16
# Ours: addresses one node announces (--announce plus --announce-append); a peer
# keeps at most 32 addresses of another (dhtd.kadmsg), go-libp2p about as many.
MAX_ANNOUNCE_ADDRS = 16
# The Delegated Routing V1 HTTP API: someguy's routing timeout (Helia waits 30 s),
# and requests at once (ours; dhtd.httproute.routes).
DEFAULT_ROUTING_HTTP_TIMEOUT = 25.0
DEFAULT_ROUTING_HTTP_MAX_CONCURRENT = 64
# Upper bound for --dev-peers: each in-process peer costs a libp2p host.
MAX_DEV_PEERS = 64
# dht.v1 calls in flight at once (server streams until they end); one more gets
# RESOURCE_EXHAUSTED at once. Each call runs at most one walk with alpha = 10 kad
# requests in flight, so 256 calls mean at most 2,560 kad streams and 256 walks'
# worth of memory: far above what an app behind a sidecar needs, well inside what
# one process serves. A bootstrap or gateway node may raise it.
DEFAULT_MAX_CONCURRENT_RPCS = 256
# Upper bound for --max-concurrent-rpcs: past this the cap would not bound memory.
MAX_MAX_CONCURRENT_RPCS = 100_000
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# Namespaces with their own validators, always open (go-libp2p and js-libp2p do the same).
BUILTIN_NAMESPACES = ("pk", "ipns")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """One line per bad setting."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Config:
    grpc_host: str
    grpc_port: int
    listen: tuple[bytes, ...]
    bootstrap: tuple[tuple[bytes, bytes], ...]
    data_dir: Path
    server_mode: bool
    protocol_prefix: str
    namespaces: tuple[str, ...]
    query_timeout: float
    log_level: str
    log_format: str
    dev_peers: int
    shutdown_grace: float
    metrics_addr: tuple[str, int] | None = None
    reprovide_interval: float = DEFAULT_REPROVIDE_INTERVAL
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    conn_low_water: int = DEFAULT_CONN_LOW_WATER
    conn_high_water: int = DEFAULT_CONN_HIGH_WATER
    conn_grace: float = DEFAULT_CONN_GRACE
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    republish_interval: float = DEFAULT_REPUBLISH_INTERVAL
    db_recover: bool = False
    # The Delegated Routing V1 HTTP API (dhtd.httproute): where it listens (None:
    # off), its routing timeout, requests at once, and whether PUT /ipns is allowed.
    routing_http_addr: tuple[str, int] | None = None
    routing_http_timeout: float = DEFAULT_ROUTING_HTTP_TIMEOUT
    routing_http_max_concurrent: int = DEFAULT_ROUTING_HTTP_MAX_CONCURRENT
    routing_http_put_ipns: bool = False
    provide_batch_min: int = DEFAULT_PROVIDE_BATCH_MIN
    min_holders: int = DEFAULT_MIN_HOLDERS
    block_sources: tuple[str, ...] = ()
    # What identify and provider records carry instead of (announce) or beside
    # (announce_append) the listen addresses: binary multiaddrs.
    announce: tuple[bytes, ...] = ()
    announce_append: tuple[bytes, ...] = ()
    block_source_timeout: float = DEFAULT_SOURCE_TIMEOUT

    @property
    def protocol_id(self) -> str:
        return f"{self.protocol_prefix}/kad/1.0.0"

    @property
    def grpc_addr(self) -> str:
        host = f"[{self.grpc_host}]" if ":" in self.grpc_host else self.grpc_host
        return f"{host}:{self.grpc_port}"


def default_data_dir(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "dhtd")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(flag: str, default: str | None = None) -> str | None:
        return environ.get("DHTD_" + flag.upper().replace("-", "_"), default)

    def env_list(flag: str, default: list[str]) -> list[str]:
        value = env(flag)
        return _split(value) if value is not None else default

    p = argparse.ArgumentParser(
        prog="dhtd",
        description="The libp2p / IPFS Kademlia DHT, served over gRPC. "
        "Every flag also reads DHTD_<FLAG> (e.g. DHTD_GRPC_ADDR); lists are comma-separated.",
    )
    p.add_argument("--version", action="version", version=f"dhtd {dhtd.__version__}")
    p.add_argument("--grpc-addr", default=env("grpc-addr", DEFAULT_GRPC_ADDR),
                   help="host:port the gRPC API listens on (default %(default)s)")
    p.add_argument("--listen", action="append", default=None,
                   help=f"libp2p listen multiaddr, repeatable (default {DEFAULT_LISTEN})")
    p.add_argument("--bootstrap", action="append", default=None,
                   help="peer to join through: /ip4/<ip>/tcp/<port>/p2p/<peer id>, repeatable")
    p.add_argument("--data-dir", default=env("data-dir", default_data_dir(environ)),
                   help="where the node key lives (default %(default)s)")
    p.add_argument("--mode", default=env("mode", "server"),
                   help="server (answer kad requests) or client (default %(default)s)")
    p.add_argument("--protocol-prefix", default=env("protocol-prefix", DEFAULT_PROTOCOL_PREFIX),
                   help="kad protocol prefix; another one makes a private DHT "
                   "(default %(default)s, giving /ipfs/kad/1.0.0)")
    p.add_argument("--namespace", action="append", default=None,
                   help="open a record namespace (last write wins), repeatable")
    p.add_argument("--query-timeout", default=env("query-timeout", str(DEFAULT_QUERY_TIMEOUT)),
                   help="cap on one DHT operation, seconds (default %(default)s)")
    p.add_argument("--log-level", default=env("log-level", "info"),
                   help="debug, info, warning or error (default %(default)s)")
    p.add_argument("--log-format", default=env("log-format", "json"),
                   help="json or text (default %(default)s)")
    p.add_argument("--dev-peers", default=env("dev-peers", "0"),
                   help="also start N local DHT peers on 127.0.0.1, bootstrapped to this node")
    p.add_argument("--shutdown-grace", default=env("shutdown-grace", str(DEFAULT_SHUTDOWN_GRACE)),
                   help="seconds in-flight RPCs get on SIGTERM (default %(default)s)")
    p.add_argument("--reprovide-interval",
                   default=env("reprovide-interval", str(DEFAULT_REPROVIDE_INTERVAL)),
                   help="seconds between announcements of each provided CID "
                   "(default %(default)s, 22 h as go-libp2p)")
    p.add_argument("--republish-interval",
                   default=env("republish-interval", str(DEFAULT_REPUBLISH_INTERVAL)),
                   help="seconds between Puts again of each record this node Put, until "
                   "StopRepublishing (default %(default)s, 12 h; holders keep records 48 h)")
    p.add_argument("--db-recover", default=env("db-recover", "false"),
                   help="true: a corrupt state.db in the data dir is moved aside (to "
                   "state.db.corrupt-<time>) and dhtd starts with empty state; false "
                   "(default): dhtd refuses to start and says so")
    p.add_argument("--max-concurrent-rpcs",
                   default=env("max-concurrent-rpcs", str(DEFAULT_MAX_CONCURRENT_RPCS)),
                   help="dht.v1 calls in flight at once (streams included); one more gets "
                   "RESOURCE_EXHAUSTED at once; health and reflection are not counted "
                   "(default %(default)s)")
    p.add_argument("--refresh-interval",
                   default=env("refresh-interval", str(DEFAULT_REFRESH_INTERVAL)),
                   help="seconds between routing-table refreshes and liveness checks "
                   "(default %(default)s, as go-libp2p)")
    p.add_argument("--conn-low-water", default=env("conn-low-water", str(DEFAULT_CONN_LOW_WATER)),
                   help="connections kept when trimming (default %(default)s)")
    p.add_argument("--conn-high-water",
                   default=env("conn-high-water", str(DEFAULT_CONN_HIGH_WATER)),
                   help="connections above which the oldest unprotected ones are closed "
                   "down to --conn-low-water (default %(default)s)")
    p.add_argument("--conn-grace", default=env("conn-grace", str(DEFAULT_CONN_GRACE)),
                   help="seconds a new connection is never trimmed (default %(default)s)")
    p.add_argument("--provide-batch-min",
                   default=env("provide-batch-min", str(DEFAULT_PROVIDE_BATCH_MIN)),
                   help="a Provide or reprovide round of this many CIDs or more is announced "
                   "in one sweep (a few lookups per keyspace region, then each peer gets all "
                   "its records on one stream) instead of a walk per CID; 0: never "
                   "(default %(default)s)")
    p.add_argument("--min-holders", default=env("min-holders", str(DEFAULT_MIN_HOLDERS)),
                   help="a Provide or Put ends OK once this many of the key's 20 closest "
                   "peers took the record; the other stores go on in the background. 1 to "
                   "20; 20 waits for every store. A request's min_holders overrides it "
                   "(default %(default)s)")
    p.add_argument("--block-source", action="append", default=None,
                   help="where recursive Provide reads DAGs: file:///dir (CAR files) or "
                   "http(s)://host:port (an IPFS trustless gateway); repeatable, tried in order")
    p.add_argument("--block-source-timeout",
                   default=env("block-source-timeout", str(DEFAULT_SOURCE_TIMEOUT)),
                   help="seconds a block source may take to connect or to send more, "
                   "before it counts as unavailable (default %(default)s)")
    p.add_argument("--announce", action="append", default=None,
                   help="announce this address instead of the listen addresses, in identify "
                   "and provider records, as Kubo's Addresses.Announce: e.g. "
                   "/dns4/dht.example.com/tcp/4001 for a Kubernetes Service; repeatable")
    p.add_argument("--announce-append", action="append", default=None,
                   help="announce this address beside the listen addresses (or beside "
                   "--announce), as Kubo's Addresses.AppendAnnounce: e.g. "
                   "/dns4/gw.example.com/tcp/443/https for a trustless gateway serving "
                   "the provided content; repeatable")
    p.add_argument("--routing-http-addr", default=env("routing-http-addr", "off"),
                   help="host:port for the Delegated Routing V1 HTTP API (/routing/v1/...), "
                   "for web pages, Helia and any HTTP client; 'off' disables "
                   "(default %(default)s). Bind 127.0.0.1 unless others should reach it")
    p.add_argument("--routing-http-timeout",
                   default=env("routing-http-timeout", str(DEFAULT_ROUTING_HTTP_TIMEOUT)),
                   help="seconds one routing request's lookup may take (default "
                   "%(default)s, under the 30 s HTTP clients such as Helia wait)")
    p.add_argument("--routing-http-max-concurrent",
                   default=env("routing-http-max-concurrent",
                               str(DEFAULT_ROUTING_HTTP_MAX_CONCURRENT)),
                   help="routing requests answered at once; one more gets 429 with "
                   "Retry-After (default %(default)s)")
    p.add_argument("--routing-http-put-ipns", default=env("routing-http-put-ipns", "false"),
                   help="true: PUT /routing/v1/ipns/{name} publishes a (validated) IPNS "
                   "record on the DHT; false: it answers 501 (default %(default)s)")
    p.add_argument("--metrics-addr", default=env("metrics-addr", DEFAULT_METRICS_ADDR),
                   help="host:port for GET /metrics, /healthz and /readyz; 'off' disables "
                   "(default %(default)s)")
    p.set_defaults(
        _env_listen=env_list("listen", [DEFAULT_LISTEN]),
        _env_bootstrap=env_list("bootstrap", []),
        _env_namespace=env_list("namespace", []),
        _env_block_source=env_list("block-source", []),
        _env_announce=env_list("announce", []),
        _env_announce_append=env_list("announce-append", []),
    )
    return p


def _host_port(text: str, flag: str, problems: list[str]) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"--{flag}: {text!r} is not host:port")
        return None
    return host, int(port)


def _number(text: str, flag: str, problems: list[str], *, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        problems.append(f"--{flag}: {text!r} is not a number")
        return low
    if not low <= value <= high:
        problems.append(f"--{flag}: {value:g} is outside {low:g}..{high:g}")
    return value


def _whole(text: str, flag: str, problems: list[str], *, low: int, high: int) -> int:
    """A whole number in low..high; otherwise one line in ``problems``, and ``low``."""
    reported = len(problems)
    value = _number(text, flag, problems, low=low, high=high)
    if len(problems) > reported:  # not a number, or out of range (nan and inf included)
        return low
    if value != int(value):
        problems.append(f"--{flag}: {text!r} is not a whole number")
        return low
    return int(value)


def _announce(texts: Sequence[str], flag: str, problems: list[str]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for text in texts:
        try:
            addr = parse_announce_addr(text, f"--{flag}")
        except InvalidArgument as exc:
            problems.append(f"--{flag}: {text!r}: {exc.reason}")
            continue
        if addr not in out:
            out.append(addr)
    return tuple(out)


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parses and validates; raises ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    problems: list[str] = []

    grpc_addr = _host_port(args.grpc_addr, "grpc-addr", problems) or ("", 0)

    listen: list[bytes] = []
    for text in args.listen or args._env_listen:
        try:
            listen.append(parse_listen_addr(text, "--listen"))
        except InvalidArgument as exc:
            problems.append(f"--listen: {text!r}: {exc.reason}")
    bootstrap: list[tuple[bytes, bytes]] = []
    for text in args.bootstrap or args._env_bootstrap:
        try:
            bootstrap.append(parse_dial_addr(text, "--bootstrap"))
        except InvalidArgument as exc:
            problems.append(f"--bootstrap: {text!r}: {exc.reason}")

    block_sources: list[str] = []
    for text in args.block_source or args._env_block_source:
        try:
            parse_source(text.strip())
        except ValueError as exc:
            problems.append(f"--block-source: {text!r}: {exc}")
        else:
            block_sources.append(text.strip())
    if len(block_sources) > MAX_BLOCK_SOURCES:
        problems.append(f"--block-source: {len(block_sources)} given, at most "
                        f"{MAX_BLOCK_SOURCES}")
    announce = _announce(args.announce or args._env_announce, "announce", problems)
    announce_append = _announce(args.announce_append or args._env_announce_append,
                                "announce-append", problems)
    if len(announce) + len(announce_append) > MAX_ANNOUNCE_ADDRS:
        problems.append(f"--announce, --announce-append: {len(announce) + len(announce_append)}"
                        f" addresses, at most {MAX_ANNOUNCE_ADDRS}")
    batch_min = _whole(args.provide_batch_min, "provide-batch-min", problems,
                       low=0, high=1_000_000)
    min_holders = _whole(args.min_holders, "min-holders", problems, low=1, high=20)
    source_timeout = _number(args.block_source_timeout, "block-source-timeout", problems,
                             low=0.1, high=3600)

    metrics: tuple[str, int] | None = None
    if args.metrics_addr.strip().lower() != "off":
        metrics = _host_port(args.metrics_addr, "metrics-addr", problems)

    mode = args.mode.strip().lower()
    if mode not in ("server", "client"):
        problems.append(f"--mode: {args.mode!r} is not server or client")

    prefix = args.protocol_prefix.strip().rstrip("/")
    if not prefix.startswith("/") or " " in prefix or len(prefix) < 2:
        problems.append(f"--protocol-prefix: {args.protocol_prefix!r} must look like /name")

    namespaces: list[str] = []
    for ns in args.namespace or args._env_namespace:
        ns = ns.strip().strip("/")
        if not NAMESPACE_RE.match(ns):
            problems.append(f"--namespace: {ns!r} must be letters, digits, '.', '_' or '-'")
        elif ns in BUILTIN_NAMESPACES:
            problems.append(f"--namespace: /{ns}/ is built in and has its own validator")
        elif ns not in namespaces:
            namespaces.append(ns)

    query_timeout = _number(args.query_timeout, "query-timeout", problems, low=0.001, high=3600)
    grace = _number(args.shutdown_grace, "shutdown-grace", problems, low=0, high=600)
    reprovide = _number(args.reprovide_interval, "reprovide-interval", problems,
                        low=1, high=7 * 24 * 3600)
    refresh = _number(args.refresh_interval, "refresh-interval", problems, low=1, high=24 * 3600)
    republish = _number(args.republish_interval, "republish-interval", problems,
                        low=1, high=7 * 24 * 3600)
    routing_http: tuple[str, int] | None = None
    if args.routing_http_addr.strip().lower() != "off":
        routing_http = _host_port(args.routing_http_addr, "routing-http-addr", problems)
    routing_timeout = _number(args.routing_http_timeout, "routing-http-timeout", problems,
                              low=0.1, high=3600)
    routing_max = _whole(args.routing_http_max_concurrent, "routing-http-max-concurrent",
                         problems, low=1, high=100_000)
    put_ipns = args.routing_http_put_ipns.strip().lower()
    if put_ipns not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(f"--routing-http-put-ipns: {args.routing_http_put_ipns!r} is not "
                        "true or false")

    recover = args.db_recover.strip().lower()
    if recover not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(f"--db-recover: {args.db_recover!r} is not true or false")
    reported = len(problems)
    low_water = _whole(args.conn_low_water, "conn-low-water", problems, low=1, high=100_000)
    high_water = _whole(args.conn_high_water, "conn-high-water", problems, low=1, high=100_000)
    # Compared only when both are valid: a bad one is already reported.
    if len(problems) == reported and low_water > high_water:
        problems.append(f"--conn-low-water ({low_water}) is above --conn-high-water "
                        f"({high_water})")
    conn_grace = _number(args.conn_grace, "conn-grace", problems, low=0, high=3600)
    dev_peers = _whole(args.dev_peers, "dev-peers", problems, low=0, high=MAX_DEV_PEERS)
    max_rpcs = _whole(args.max_concurrent_rpcs, "max-concurrent-rpcs", problems,
                      low=1, high=MAX_MAX_CONCURRENT_RPCS)

    level = args.log_level.strip().lower()
    if level not in LOG_LEVELS:
        problems.append(f"--log-level: {args.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    log_format = args.log_format.strip().lower()
    if log_format not in ("json", "text"):
        problems.append(f"--log-format: {args.log_format!r} is not json or text")

    if problems:
        raise ConfigError(problems)
    return Config(
        grpc_host=grpc_addr[0],
        grpc_port=grpc_addr[1],
        listen=tuple(listen),
        bootstrap=tuple(bootstrap),
        data_dir=Path(args.data_dir).expanduser(),
        server_mode=mode == "server",
        protocol_prefix=prefix,
        namespaces=tuple(namespaces),
        query_timeout=query_timeout,
        log_level=level,
        log_format=log_format,
        dev_peers=dev_peers,
        shutdown_grace=grace,
        metrics_addr=metrics,
        reprovide_interval=reprovide,
        refresh_interval=refresh,
        conn_low_water=low_water,
        conn_high_water=high_water,
        conn_grace=conn_grace,
        max_concurrent_rpcs=max_rpcs,
        republish_interval=republish,
        db_recover=recover in ("true", "1", "yes"),
        routing_http_addr=routing_http,
        routing_http_timeout=routing_timeout,
        routing_http_max_concurrent=routing_max,
        routing_http_put_ipns=put_ipns in ("true", "1", "yes"),
        provide_batch_min=batch_min,
        min_holders=min_holders,
        block_sources=tuple(block_sources),
        announce=announce,
        announce_append=announce_append,
        block_source_timeout=source_timeout,
    )
