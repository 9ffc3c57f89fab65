"""One Go DHT node (go-libp2p v0.24.2 + go-libp2p-kad-dht v0.20.0) for bench/go_compare.py.

Runs in the Go peers' own venv (.venv-go-bench, from bench/requirements-go.lock), NOT in
dhtd's venv: it imports the ``libp2p-go`` wheel's ``libp2p`` package, which has the same
import name as py-libp2p. go_compare starts it as

    .venv-go-bench/bin/python bench/go_worker.py --prefix /bench [--bootstrap ADDR]...

It starts one host on 127.0.0.1 (TCP, port 0) and one DHT in server mode on the given
protocol prefix, connects to the --bootstrap peers, starts the DHT's refresh (unless
--no-refresh: then it neither refreshes nor looks up anything by itself), and prints
one JSON line ``{"event": "ready", "peer_id": ..., "addrs": [...], ...}`` on stdout.
Then it reads one JSON command per line on stdin and answers each with one JSON line:

    {"op": "provide", "cid": "<cid text>"}
    {"op": "find_providers", "cid": "<cid text>"}       -> {"providers": [peer id, ...]}
    {"op": "put", "key": "<hex>", "value": "<hex>"}
    {"op": "get", "key": "<hex>"}                         -> {"value": "<hex>" or null}
    {"op": "refresh"}                                     (the DHT's Bootstrap: a refresh)
    {"op": "connect", "addr": "/ip4/.../p2p/<id>"}
    {"op": "find_peer", "peer": "<peer id>"}            -> {"known_before": [addr, ...],
                                                            "addrs": [addr, ...]}
        (a RoutedHost connect with no address: go-libp2p asks the DHT's FindPeer, then
        dials what it found; "known_before" is what the peerstore held before)
    {"op": "known", "peer": "<peer id>"}                -> {"addrs": [addr, ...]}
        (the peerstore's addresses of that peer: none if this node never heard of it)
    {"op": "peers"}                                       -> {"peers": N} (peerstore, not self)
    {"op": "cpu"}                                         -> {"cpu": seconds, this process}
    {"op": "stop"}

Every answer has "ok" (bool), "ms" (time spent in the call, in this process) and, when
not ok, "error". The process exits on "stop", on stdin EOF, after --max-life seconds,
and (as go_compare starts it under setpriv --pdeathsig) when its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

from libp2p import DisableRelay, Host, Identity, ListenAddrStrings
from libp2p.cid import Cid
from libp2p.crypto import KeyType, crypto_generate_keypair
from libp2p.dht import (
    DHT,
    BootstrapPeers,
    DhtModeEnum,
    DisableAutoRefresh,
    Mode,
    ProtocolPrefix,
)
from libp2p.peer import AddrInfo, Peer, addr_info_from_p2p_addr
from libp2p.routed_host import RoutedHost
from libp2p.utils import MsgpackArg, c_wrap

MAX_COMMANDS = 100_000
MAX_LINE = 1 << 20
CONNECT_TIMEOUT = 20.0
CLOSE_TIMEOUT = 3.0


def answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


async def get_value(dht: Any, key: bytes) -> bytes | None:
    """DHT.get_value, but with Go's error: the binding returns None for "routing: not
    found" and, for any other error, swallows it and fails on an empty result list."""
    arg = MsgpackArg.from_dict({"Bytes": [key], "Handles": []})
    result = await c_wrap(dht.loop, dht._GET_VALUE, dht.handle, arg)
    body = result.result or {}
    if error := body.get("Error"):
        if "routing: not found" in str(error):
            return None
        raise RuntimeError(str(error))
    values = body.get("Bytes") or []
    return bytes(values[0]) if values else None


async def run_op(host: Any, dht: Any, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "provide":
        await dht.provide(Cid.decode(str(command["cid"])), True)
        return {}
    if op == "find_providers":
        found = await dht.find_providers(Cid.decode(str(command["cid"])))
        return {"providers": [info.id.string for info in found]}
    if op == "put":
        await dht.put_value(bytes.fromhex(command["key"]), bytes.fromhex(command["value"]))
        return {}
    if op == "get":
        value = await get_value(dht, bytes.fromhex(command["key"]))
        return {"value": None if value is None else value.hex()}
    if op == "refresh":
        await dht.bootstrap()
        return {}
    if op == "connect":
        await asyncio.wait_for(host.connect(addr_info_from_p2p_addr(command["addr"])),
                               CONNECT_TIMEOUT)
        return {}
    if op == "find_peer":
        peer = Peer.decode(str(command["peer"]))
        before = host.peer_store.addrs(peer.string)
        await RoutedHost(host, dht).connect(AddrInfo(peer, []))
        return {"known_before": before, "addrs": host.peer_store.addrs(peer.string)}
    if op == "known":
        return {"addrs": host.peer_store.addrs(Peer.decode(str(command["peer"])).string)}
    if op == "peers":
        own = host.id.string
        return {"peers": sum(1 for p in host.peer_store.peer_with_addrs() if p != own)}
    if op == "cpu":
        return {"cpu": cpu_seconds()}
    raise ValueError(f"unknown op {op!r}")


async def serve(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.max_life
    priv, _pub = crypto_generate_keypair(KeyType.Ed25519, 0)
    host = Host(ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), Identity(priv), DisableRelay())
    boots = [addr_info_from_p2p_addr(a) for a in args.bootstrap]
    opts: list[Any] = [Mode(DhtModeEnum.ModeServer), ProtocolPrefix(args.prefix)]
    if boots:
        opts.append(BootstrapPeers(*boots))
    if args.no_refresh:
        opts.append(DisableAutoRefresh())
    dht = await DHT.new(host, *opts)
    boot_errors = []
    for info in boots:
        try:
            await asyncio.wait_for(host.connect(info), CONNECT_TIMEOUT)
        except Exception as exc:  # reported to go_compare, which prints it
            boot_errors.append(f"{info.id.string}: {exc!r}")
    if not args.no_refresh:
        await dht.bootstrap()
    peer_id = host.id.string
    answer({"event": "ready", "peer_id": peer_id,
            "addrs": [f"{a}/p2p/{peer_id}" for a in host.network.listen_addresses()],
            "boot_errors": boot_errors, "cpu": cpu_seconds()})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    for _ in range(MAX_COMMANDS):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            line = await asyncio.wait_for(reader.readline(), left)
        except TimeoutError:
            break
        if not line:
            break
        command = json.loads(line)
        if command.get("op") == "stop":
            break
        start = time.perf_counter()
        try:
            extra = await asyncio.wait_for(run_op(host, dht, command), args.op_timeout)
            reply: dict[str, Any] = {"ok": True, **extra}
        except TimeoutError:
            reply = {"ok": False, "error": f"no answer within {args.op_timeout:g}s"}
        except Exception as exc:  # any failure of the Go call goes back to go_compare
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["ms"] = (time.perf_counter() - start) * 1000
        reply["id"] = command.get("id")
        answer(reply)
    with contextlib.suppress(Exception):  # exiting anyway
        await asyncio.wait_for(host.close(), CLOSE_TIMEOUT)
    # Not a return: asyncio.run would then wait for the executor's threads, and a Go
    # call past its timeout may still hold one.
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="/bench", help="kad protocol prefix")
    parser.add_argument("--bootstrap", action="append", default=[],
                        help="/ip4/127.0.0.1/tcp/P/p2p/ID, repeatable")
    parser.add_argument("--no-refresh", action="store_true",
                        help="no routing-table refresh, at start or later")
    parser.add_argument("--op-timeout", type=float, default=30.0)
    parser.add_argument("--max-life", type=float, default=3600.0,
                        help="exit after this many seconds whatever happens")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
