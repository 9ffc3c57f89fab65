"""Prometheus metrics: the gRPC server (go-grpc-prometheus names) and the DHT.

Every series is labelled by method, code, operation, outcome, message type or
event type — never by a key, CID or peer ID, so cardinality stays fixed.
docs/metrics.md lists every series and what a rising value means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dhtd import logs
from dhtd.lookup import EventType
from dhtd.node import DhtNode, Observer
from dhtd.provider import Status
from dhtd.wire.kad_pb2 import Message

# The operations of DhtNode, so that every in-flight series exists from the start.
OPERATIONS = ("find_peer", "find_providers", "get_value", "put_value", "provide", "query",
              "connect")

# The operations whose first result is timed (dht_time_to_first_result_seconds).
FIRST_RESULT_OPERATIONS = ("find_peer", "find_providers", "get_value")

# go-grpc-prometheus's default histogram buckets (prometheus.DefBuckets), so
# existing dashboards' quantiles mean the same.
GRPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# DHT operations run from milliseconds (a local answer) to the 60 s query cap.
# boxo's routing server buckets (seconds, and bytes: 100 * 4^n).
HTTP_BUCKETS = (0.1, 0.5, 1, 2, 5, 8, 10, 20, 30)
HTTP_SIZE_BUCKETS = tuple(100 * 4**n for n in range(8))
DHT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


# Kinds whose labelled child is kept per series (message and event types: a dozen).
_CHILD_CACHE = 64


def message_type_name(kind: int) -> str:
    try:
        return Message.MessageType.Name(kind)
    except ValueError:
        return "UNKNOWN"


def event_type_name(kind: int) -> str:
    try:
        return EventType(kind).name
    except ValueError:
        return "UNKNOWN"


class Metrics:
    """Every dhtd metric, in one registry served at /metrics."""

    def __init__(self) -> None:
        # go-grpc-prometheus exports no *_created series; neither do we.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry

        # -- gRPC server: the names and labels of go-grpc-prometheus --------
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server. Rising faster than handled: calls are piling up.",
            GRPC_LABELS, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code. A rising non-OK share means "
            "callers are getting errors.",
            (*GRPC_LABELS, "grpc_code"), registry=r)
        self.grpc_received = Counter(
            "grpc_server_msg_received_total",
            "Request messages received from callers.",
            GRPC_LABELS, registry=r)
        self.grpc_sent = Counter(
            "grpc_server_msg_sent_total",
            "Response messages sent; for streams, one per streamed result or event.",
            GRPC_LABELS, registry=r)
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, streams included. Rising: the DHT "
            "or the node is slower.",
            GRPC_LABELS, buckets=GRPC_BUCKETS, registry=r)

        # -- the DHT ----------------------------------------------------------
        self.query_seconds = Histogram(
            "dht_query_duration_seconds",
            "Duration of DHT operations by outcome. Rising: walks take more hops or peers "
            "answer slowly; more 'deadline' outcomes mean callers' budgets are too short.",
            ("operation", "outcome"), buckets=DHT_BUCKETS, registry=r)
        self.first_result_seconds = Histogram(
            "dht_time_to_first_result_seconds",
            "Time from the start of an operation to its first result (a provider, a value, "
            "the peer). Rising: results are found later in the walk.",
            ("operation",), buckets=DHT_BUCKETS, registry=r)
        self.outbound = Counter(
            "dht_outbound_requests_total",
            "Kad requests sent to other peers, by message type, with those a walk stopped "
            "waiting for (it ended first, or its caller left).",
            ("message_type",), registry=r)
        self.outbound_errors = Counter(
            "dht_outbound_request_errors_total",
            "Kad requests to other peers that failed (dial, stream, timeout, bad answer). "
            "A rising share of outbound requests: peers are unreachable or overloaded.",
            ("message_type",), registry=r)
        self.inbound = Counter(
            "dht_inbound_requests_total",
            "Kad requests answered for other peers, by message type. Rising: this node "
            "serves more of the DHT.",
            ("message_type",), registry=r)
        self.refusals = Counter(
            "dht_store_refusals_total",
            "Records from other peers a store refused (the peer's share used up, or the "
            "store full), by store. Rising: a peer, or a group of them, floods this node; "
            "honest records still get in (docs/limits.md).",
            ("store",), registry=r)
        self.background_stores = Counter(
            "dht_background_stores_total",
            "Stores that ended after their Provide or Put had (--min-holders), by outcome. "
            "A rising 'failed' share: the closest peers of keys are slow or gone.",
            ("outcome",), registry=r)
        self.events = Counter(
            "dht_query_events_total",
            "Query events emitted to callers, by type. Rising QUERY_ERROR share: more "
            "peers fail during walks.",
            ("type",), registry=r)
        for op in OPERATIONS:
            self.query_seconds.labels(op, "ok")
        for op in FIRST_RESULT_OPERATIONS:
            self.first_result_seconds.labels(op)
        for kind in Message.MessageType.values():
            name = message_type_name(kind)
            self.outbound.labels(name)
            self.outbound_errors.labels(name)
            self.inbound.labels(name)
        for event in EventType:
            self.events.labels(event.name)
        for store in ("provider", "value"):
            self.refusals.labels(store)
        for outcome in ("stored", "failed"):
            self.background_stores.labels(outcome)
        r.register(_LibraryLogCollector())

        # -- the Delegated Routing V1 HTTP API: boxo's names (go-http-metrics with
        # the prefix delegated_routing_server), labelled by handler pattern, method
        # and status code, never by CID or peer ID.
        self.http_seconds = Histogram(
            "delegated_routing_server_http_request_duration_seconds",
            "Time from a routing request to the end of its answer, streams included. "
            "Rising: lookups take longer (the routing timeout caps them).",
            ("code", "handler", "method"), buckets=HTTP_BUCKETS, registry=r)
        self.http_bytes = Histogram(
            "delegated_routing_server_http_response_size_bytes",
            "Bytes of answer bodies. Rising: more records per answer.",
            ("code", "handler", "method"), buckets=HTTP_SIZE_BUCKETS, registry=r)
        self.http_in_flight = Gauge(
            "delegated_routing_server_http_requests_inflight",
            "Routing requests being answered now. Rising and staying up: clients outpace "
            "the node; past --routing-http-max-concurrent they get 429.",
            ("handler",), registry=r)

    def http_started(self, handler: str) -> None:
        self.http_in_flight.labels(handler).inc()

    def http_finished(self, method: str, handler: str, code: int, seconds: float,
                      size: int) -> None:
        self.http_in_flight.labels(handler).dec()
        self.http_seconds.labels(str(code), handler, method).observe(seconds)
        self.http_bytes.labels(str(code), handler, method).observe(size)

    def observer(self) -> Observer:
        """Hooks that feed the DHT series from a node's operations. The labelled
        children of the per-message series are looked up once per kind (they run
        for every kad message; ``labels()`` showed in profiles)."""
        inbound: dict[int, Any] = {}
        outbound_ok: dict[int, Any] = {}
        outbound_failed: dict[int, Any] = {}
        events: dict[int, Any] = {}

        def child(cache: dict[int, Any], family: Any, kind: int, name: Callable[[int], str]) -> Any:
            counter = cache.get(kind)
            if counter is None:
                # Bounded: names of unknown kinds collapse into one "UNKNOWN" child.
                counter = family.labels(name(kind))
                if len(cache) < _CHILD_CACHE:
                    cache[kind] = counter
            return counter

        def outbound(kind: int, ok: bool) -> None:
            child(outbound_ok, self.outbound, kind, message_type_name).inc()
            if not ok:
                child(outbound_failed, self.outbound_errors, kind, message_type_name).inc()

        return Observer(
            op_finished=lambda op, outcome, s: self.query_seconds.labels(op, outcome).observe(s),
            first_result=lambda op, s: self.first_result_seconds.labels(op).observe(s),
            event=lambda kind: child(events, self.events, kind, event_type_name).inc(),
            outbound=outbound,
            inbound=lambda kind: child(inbound, self.inbound, kind, message_type_name).inc(),
            refused=lambda store: self.refusals.labels(store).inc(),
            background_store=lambda outcome: self.background_stores.labels(outcome).inc(),
        )

    def watch(self, node: DhtNode, read: Callable[[Callable[[], _Gauges]], _Gauges]) -> None:
        """Adds the gauges read from ``node`` at scrape time, through ``read`` (which
        runs its argument where the node lives: dhtd.bridge.Bridge.read)."""
        self.registry.register(_NodeCollector(lambda: read(lambda: _Gauges.of(node))))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LibraryLogCollector(Collector):
    """dhtd_library_log_messages_total, read from dhtd.logs' noise filter at scrape
    time. Labels come from fixed sets (logs.SOURCES, KINDS, LEVELS), never from
    the message, so no peer ID or address ever becomes a label value."""

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "dhtd_library_log_messages",
            "Log records and stray output lines from libraries (py-libp2p, gRPC, asyncio, "
            "trio, warnings, prints), by source, kind and level, whether printed or held "
            "back by the rate limit. Rising: the libraries report more network trouble "
            "(dials, streams, negotiation, identify), so peers are unreachable or churning; "
            "a rising 'traceback' or 'other' kind at error level is worth reading the log for.",
            labels=["source", "kind", "level"])
        for (source, kind, level), count in sorted(logs.library_message_counts().items()):
            family.add_metric([source, kind, level], count)
        yield family


@dataclass(frozen=True)
class _Gauges:
    """What the node's gauges show, read in one go on the node's own thread."""

    routing_table_size: int
    connected_peers: int
    network_size: int
    background_stores: int
    in_flight: dict[str, int]
    provider_records: int
    value_records: int
    provide: Status
    reprovide_cycles: int
    reprovided: int
    reprovide_failures: int

    @classmethod
    def of(cls, node: DhtNode) -> _Gauges:
        info = node.info()
        cycles = node.reprovider
        return cls(info.routing_table_size, info.connected_peers, info.network_size or 0,
                   node.background_stores, dict(node.in_flight),
                   node.records.provider_count(), node.records.value_count(),
                   cycles.status(), cycles.cycles, cycles.announced, cycles.failures)


class _NodeCollector(Collector):
    """Gauges read from the node when Prometheus scrapes, never stale."""

    def __init__(self, gauges: Callable[[], _Gauges]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        g = self._gauges()
        yield GaugeMetricFamily(
            "dht_routing_table_peers",
            "Peers in the routing table. Falling to 0: the node is cut off from the DHT "
            "(readiness fails).", value=g.routing_table_size)
        yield GaugeMetricFamily(
            "dht_connected_peers",
            "Open libp2p connections to other peers. Rising without bound: connections leak.",
            value=g.connected_peers)
        yield GaugeMetricFamily(
            "dht_network_size_estimate",
            "DHT servers in the network, estimated from the distances this node's lookups "
            "saw (0 until 5 lookups converged). A sudden fall: this node sees a part of the "
            "network only (a partition, or an eclipse).", value=g.network_size)
        yield GaugeMetricFamily(
            "dht_background_stores",
            "Stores (ADD_PROVIDER, PUT_VALUE) still running after their Provide or Put "
            "ended at --min-holders. Staying high: holders are slow or gone.",
            value=g.background_stores)
        in_flight = GaugeMetricFamily(
            "dht_queries_in_flight",
            "DHT operations running now. Rising and not falling: operations are stuck or "
            "callers outpace the node.", labels=["operation"])
        for op in sorted(set(OPERATIONS) | set(g.in_flight)):
            in_flight.add_metric([op], g.in_flight.get(op, 0))
        yield in_flight
        yield GaugeMetricFamily(
            "dht_provider_records",
            "Provider records this node stores for others. Rising steadily: more content "
            "is announced to this node.", value=g.provider_records)
        yield GaugeMetricFamily(
            "dht_value_records",
            "Value records (/pk/, /ipns/, operator namespaces) this node stores.",
            value=g.value_records)
        yield from _provide_metrics(g)


def _provide_metrics(g: _Gauges) -> Iterable[Metric]:
    """The provide set and its reprovide cycle (dhtd.provider)."""
    status = g.provide
    yield GaugeMetricFamily(
        "dht_provide_set_cids",
        "CIDs this node keeps announcing (Provide until StopProviding).", value=status.keys)
    yield CounterMetricFamily(
        "dht_reprovide_cycles",
        "Reprovide cycles ended since start. Flat while the set is not empty for longer than "
        "the reprovide interval: the cycle cannot run (no peers).", value=g.reprovide_cycles)
    keys = CounterMetricFamily(
        "dht_reprovide_keys",
        "CIDs announced again by reprovide cycles, by outcome. Rising 'failed': announcements "
        "reach no peer, and the records of those CIDs will expire on the network.",
        labels=["outcome"])
    keys.add_metric(["announced"], g.reprovided)
    keys.add_metric(["failed"], g.reprovide_failures)
    yield keys
    cycle = GaugeMetricFamily(
        "dht_reprovide_cycle_keys",
        "CIDs of the running ('current') or last ended ('last') cycle: due at its start, "
        "done, failed. Current done + failed approaching due: the cycle is nearly over.",
        labels=["cycle", "state"])
    for name, run in (("current", status.current), ("last", status.last)):
        if run is not None:
            for state, value in (("due", run.due), ("done", run.done), ("failed", run.failed)):
                cycle.add_metric([name, state], value)
    yield cycle
    yield GaugeMetricFamily(
        "dht_reprovide_last_cycle_duration_seconds",
        "How long the last ended cycle ran. Approaching the reprovide interval: the node "
        "cannot keep up with its provide set.",
        value=status.last.duration(status.last.ended) if status.last else 0.0)
    yield GaugeMetricFamily(
        "dht_reprovide_next_cycle_timestamp_seconds",
        "Unix time of the next reprovide cycle (0: nothing to provide). In the past: a cycle "
        "runs now.", value=status.next_cycle or 0.0)
