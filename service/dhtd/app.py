"""Wiring: config -> identity -> libp2p host -> DHT node -> gRPC server.

:func:`serve` runs on asyncio (grpc.aio), with trio (the DHT) in its own thread
(see :mod:`dhtd.bridge`). Shutdown on SIGTERM/SIGINT: health turns
NOT_SERVING at once, in-flight RPCs get ``--shutdown-grace`` seconds, then
the DHT and the libp2p host close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import grpc
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dht.v1 import dht_pb2, dht_pb2_grpc
from dhtd.addrs import format_addr, loopback_dial_addr, parse_listen_addr
from dhtd.api.interceptor import EdgeInterceptor
from dhtd.api.servicer import MAX_VALUE_BYTES, SERVER_OPTIONS, DhtServicer, NodeServicer
from dhtd.blocks import parse_source
from dhtd.bridge import Bridge, start_trio
from dhtd.config import Config
from dhtd.httpd import OpsServer
from dhtd.httproute import HttpServer, Routes
from dhtd.httproute.routes import MAX_IPNS_RECORD_BYTES
from dhtd.ids import peer_id_to_str
from dhtd.metrics import Metrics
from dhtd.node import Bootstrap, DhtNode
from dhtd.p2p import (
    ConnectionBudget,
    Host,
    load_or_create_identity,
    new_identity,
    verify_signature,
)
from dhtd.records import IpnsValidator, LastWriteWinsValidator, PublicKeyValidator, Validators
from dhtd.state import CorruptDatabase, Database, DataDirLocked, DiskState
from dhtd.stores import HeldRecords, RecordsDb

log = logging.getLogger("dhtd")

DHT_SERVICE = dht_pb2.DESCRIPTOR.services_by_name["DhtService"].full_name
NODE_SERVICE = dht_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
# Services whose health follows the DHT: NOT_SERVING until the node has a peer.
DHT_HEALTH_SERVICES = ("", DHT_SERVICE)

# How long shutdown waits for the DHT and libp2p host to close.
TRIO_STOP_WAIT = 10.0

LOOPBACK_ANY_PORT = "/ip4/127.0.0.1/tcp/0"


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def build_validators(namespaces: tuple[str, ...]) -> Validators:
    """/pk/ and /ipns/ with their own rules, plus each operator namespace (last write wins)."""
    table: dict[str, object] = {
        "pk": PublicKeyValidator(),
        "ipns": IpnsValidator(verify_signature),
    }
    for name in namespaces:
        table[name] = LastWriteWinsValidator(MAX_VALUE_BYTES)
    return Validators(table)  # type: ignore[arg-type]


class StartupError(Exception):
    """dhtd cannot start; the message is one line for the operator."""


@dataclass
class _Trio:
    """What the trio side hands back to asyncio once the node runs."""

    node: DhtNode
    stop: Callable[[], None]


async def _run_dht(
    config: Config,
    db: Database,
    records_db: RecordsDb,
    metrics: Metrics,
    bridge: Bridge,
    on_ready: Callable[[_Trio], None],
    on_table_change: Callable[[int], None],
) -> None:
    """The trio side: the node, its dev peers, and the nursery RPC work runs in.
    Closes ``records_db`` and ``db`` (the lock last) when it ends."""
    with closing(db), closing(records_db):
        budget = ConnectionBudget(config.conn_low_water, config.conn_high_water, config.conn_grace)
        host = Host(load_or_create_identity(config.data_dir), config.protocol_id, budget,
                    config.announce, config.announce_append)
        node = DhtNode(
            host,
            build_validators(config.namespaces),
            server=config.server_mode,
            bootstrap=[Bootstrap(p, a) for p, a in config.bootstrap],
            observer=metrics.observer(),
            reprovide_interval=config.reprovide_interval,
            provide_batch_min=config.provide_batch_min,
            min_holders=config.min_holders,
            refresh_interval=config.refresh_interval,
            republish_interval=config.republish_interval,
            state=DiskState(db),
            records=HeldRecords.open(records_db),
            on_table_change=lambda size: bridge.to_asyncio(on_table_change, size),
        )
        with trio.CancelScope() as scope:
            async with node.running(config.listen), trio.open_nursery() as nursery:
                bridge.attach(nursery)
                if config.dev_peers:
                    main = Bootstrap(node.self_id, loopback_dial_addr(host.listen_addrs()[0]))
                    for i in range(config.dev_peers):
                        await nursery.start(_run_dev_peer, config, main, i,
                                            parse_listen_addr(LOOPBACK_ANY_PORT))

                def stop() -> None:
                    bridge.detach()
                    scope.cancel()

                bridge.to_asyncio(on_ready, _Trio(node, lambda: bridge.call_soon_trio(stop)))
                await trio.sleep_forever()


def open_database(config: Config) -> tuple[Database, RecordsDb]:
    """state.db (which locks the data dir) and records.db; StartupError with one
    line if they cannot be used."""
    hint = " (start with --db-recover true to move it aside and start empty)"
    try:
        db = Database.open(config.data_dir, recover=config.db_recover)
    except DataDirLocked as exc:
        raise StartupError(str(exc)) from None
    except CorruptDatabase as exc:
        raise StartupError(f"{exc}{hint}") from None
    except (OSError, sqlite3.Error) as exc:
        raise StartupError(f"cannot open state.db in {config.data_dir}: {exc}") from None
    try:
        return db, RecordsDb.open(config.data_dir, recover=config.db_recover)
    except CorruptDatabase as exc:
        db.close()
        raise StartupError(f"{exc}{hint}") from None
    except (OSError, sqlite3.Error) as exc:
        db.close()
        raise StartupError(f"cannot open records.db in {config.data_dir}: {exc}") from None


async def _run_dev_peer(
    config: Config, main: Bootstrap, index: int, listen: bytes,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """One in-process DHT peer on 127.0.0.1, bootstrapped to the main node (--dev-peers)."""
    host = Host(new_identity(), config.protocol_id)
    node = DhtNode(host, build_validators(config.namespaces), bootstrap=[main],
                   refresh_interval=config.refresh_interval)
    async with node.running([listen]):
        log.info("dev peer started", extra={"index": index, "peer_id": peer_id_to_str(node.self_id),
                                            "addr": format_addr(host.listen_addrs()[0])})
        task_status.started()
        await trio.sleep_forever()


async def serve(config: Config) -> None:
    """Runs dhtd until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    bridge = Bridge(loop)
    ready: asyncio.Future[_Trio] = loop.create_future()
    health_servicer = health.aio.HealthServicer()
    metrics = Metrics()
    table_sizes: asyncio.Queue[int] = asyncio.Queue()

    def on_ready(t: _Trio) -> None:
        if not ready.done():
            ready.set_result(t)

    db, records_db = open_database(config)
    trio_done = start_trio(
        loop, lambda: _run_dht(config, db, records_db, metrics, bridge, on_ready,
                               table_sizes.put_nowait)
    )
    first: set[asyncio.Future[Any]] = {ready, trio_done}
    started = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if trio_done in started[0]:
        try:
            trio_done.result()
        except BaseException as exc:
            cause = _first_leaf(exc)
            if isinstance(cause, OSError):
                raise StartupError(f"--listen: {cause}") from None
            raise StartupError(f"the DHT could not start: {cause}") from None
        raise StartupError("the DHT stopped before it was ready")
    dht = ready.result()
    node = dht.node

    metrics.watch(node, bridge.read)
    # dht.v1 calls count against --max-concurrent-rpcs; health and reflection never do.
    edge = EdgeInterceptor(metrics, max_in_flight=config.max_concurrent_rpcs,
                           limited=(DHT_SERVICE, NODE_SERVICE))
    server = grpc.aio.server(interceptors=[edge], options=SERVER_OPTIONS)
    dht_pb2_grpc.add_DhtServiceServicer_to_server(  # type: ignore[no-untyped-call]
        DhtServicer(node, bridge, config.query_timeout,
                    [parse_source(text, config.block_source_timeout)
                     for text in config.block_sources]), server)
    dht_pb2_grpc.add_NodeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        NodeServicer(node, bridge, config.query_timeout), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (DHT_SERVICE, NODE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(config.grpc_addr)
    except RuntimeError as exc:
        dht.stop()
        await asyncio.wait_for(trio_done, TRIO_STOP_WAIT)
        raise StartupError(f"--grpc-addr {config.grpc_addr}: cannot listen ({exc})") from None
    for service in DHT_HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(NODE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await server.start()

    stopping = asyncio.Event()
    readiness = {"dht": False}
    ops = OpsServer(metrics.render,
                    ready=lambda: readiness["dht"] and not stopping.is_set())
    metrics_port = None
    if config.metrics_addr is not None:
        try:
            metrics_port = await ops.start(*config.metrics_addr)
        except OSError as exc:
            await server.stop(None)
            dht.stop()
            await asyncio.wait_for(trio_done, TRIO_STOP_WAIT)
            host, mport = config.metrics_addr
            raise StartupError(
                f"--metrics-addr {host}:{mport}: cannot listen ({exc.strerror or exc})") from None
    routing = HttpServer(Routes(node, bridge, timeout=config.routing_http_timeout,
                                max_concurrent=config.routing_http_max_concurrent,
                                ipns_put=config.routing_http_put_ipns,
                                started=metrics.http_started, finished=metrics.http_finished),
                         max_body=MAX_IPNS_RECORD_BYTES)
    routing_port = None
    if config.routing_http_addr is not None:
        try:
            routing_port = await routing.start(*config.routing_http_addr)
        except OSError as exc:
            await ops.close()
            await server.stop(None)
            dht.stop()
            await asyncio.wait_for(trio_done, TRIO_STOP_WAIT)
            host, rport = config.routing_http_addr
            raise StartupError(f"--routing-http-addr {host}:{rport}: cannot listen "
                               f"({exc.strerror or exc})") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    info = bridge.read(node.info)
    log.info("dhtd ready", extra={
        "grpc_addr": f"{config.grpc_host}:{port}",
        "metrics_addr": (f"{config.metrics_addr[0]}:{metrics_port}"
                         if config.metrics_addr else "off"),
        "routing_http_addr": (f"{config.routing_http_addr[0]}:{routing_port}"
                              if config.routing_http_addr else "off"),
        "peer_id": peer_id_to_str(info.peer_id),
        "addrs": ",".join(f"{format_addr(a)}/p2p/{peer_id_to_str(info.peer_id)}"
                          for a in info.addrs),
        "announced": ",".join(format_addr(a) for a in info.announced),
        "protocol": info.protocol,
        "mode": "server" if info.server else "client",
        "dev_peers": config.dev_peers,
    })

    async def follow_table() -> None:
        serving = False
        while True:
            size = await table_sizes.get()
            if (size > 0) != serving:
                serving = size > 0
                readiness["dht"] = serving
                status = (health_pb2.HealthCheckResponse.SERVING if serving
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for service in DHT_HEALTH_SERVICES:
                    await health_servicer.set(service, status)
                log.info("dht serving" if serving else "dht has no peers", extra={"peers": size})

    try:
        async with asyncio.TaskGroup() as tasks:
            follower = tasks.create_task(follow_table())
            table_sizes.put_nowait(bridge.read(node.info).routing_table_size)
            waiter = tasks.create_task(stopping.wait())
            either: set[asyncio.Future[Any]] = {waiter, trio_done}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            follower.cancel()
            waiter.cancel()
    finally:
        log.info("dhtd stopping", extra={"grace_s": config.shutdown_grace})
        stopping.set()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(config.shutdown_grace)
        await routing.close()
        await ops.close()
        dht.stop()
        try:
            await asyncio.wait_for(trio_done, TRIO_STOP_WAIT)
        except (TimeoutError, trio.Cancelled):
            log.warning("the DHT did not stop in time")
        log.info("dhtd stopped")
