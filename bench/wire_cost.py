"""CPU per kad message and per connection, on the wire dhtd uses (TCP, noise, yamux).

    .venv/bin/python -m bench.wire_cost [--requests 3000] [--connections 30]

Three figures, each on 127.0.0.1:
1. **Round trip on an open stream**: two dhtd hosts (dhtd.p2p.Host) in this process;
   one sends FIND_NODE requests one at a time, the other answers with an empty
   answer. CPU of both sides per request (this process's CPU time).
2. **New connection**: running hosts dial one host, wait for identify, and send one
   request. CPU of both sides per connection.
3. **A real dhtd serving**: a dhtd process (3 in a swarm) answers FIND_NODE and
   GET_VALUE from a host in this process; the dhtd process's CPU per request.

Issue 12 measured 1.94 ms per round trip and 45 ms per connection before dhtd's
own yamux (py-libp2p's yamux, noise and NetStream on every frame).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import multiaddr
import trio

from dhtd import p2p
from dhtd.ids import b58decode
from dhtd.kadmsg import MessageType, new_message
from dhtd.wire.kad_pb2 import Message
from tests.swarm import swarm

PROTOCOL = "/ipfs/kad/1.0.0"
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0").to_bytes()]


def key(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"wire-cost %d" % i).digest()


async def answer(sender: bytes, request: Message) -> Message:
    return new_message(request.type, request.key)


async def round_trips(count: int) -> float:
    a = p2p.Host(p2p.new_identity(), PROTOCOL)
    b = p2p.Host(p2p.new_identity(), PROTOCOL)
    async with b.open(LISTEN, answer, lambda _: None), a.open(LISTEN, answer, lambda _: None):
        await a.connect(b.self_id, b.listen_addrs()[0])
        await a.request(b.self_id, new_message(MessageType.FIND_NODE, key(0)))
        start = time.process_time()
        for i in range(count):
            await a.request(b.self_id, new_message(MessageType.FIND_NODE, key(i)))
        return (time.process_time() - start) / count


async def connections(count: int) -> float:
    async with AsyncExitStack() as stack:
        target = p2p.Host(p2p.new_identity(), PROTOCOL)
        await stack.enter_async_context(target.open(LISTEN, answer, lambda _: None))
        hosts = []
        for _ in range(count):
            host = p2p.Host(p2p.new_identity(), PROTOCOL)
            await stack.enter_async_context(host.open(LISTEN, answer, lambda _: None))
            hosts.append(host)
        addr = target.listen_addrs()[0]
        start = time.process_time()
        for host in hosts:
            await host.connect(target.self_id, addr)
            await host.wait_identified(target.self_id)
            await host.request(target.self_id, new_message(MessageType.FIND_NODE, key(1)))
        return (time.process_time() - start) / count


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(count: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, swarm(Path(tmp), 3,
                                                     extra=["--dev-peers", "0"]) as nodes:
        node = nodes[1]
        addr, peer_text = node.p2p_addr.rsplit("/p2p/", 1)
        peer = b58decode(peer_text)

        async def main() -> None:
            host = p2p.Host(p2p.new_identity(), PROTOCOL)
            async with host.open(LISTEN, answer, lambda _: None):
                await host.connect(peer, multiaddr.Multiaddr(addr).to_bytes())
                for kind in (MessageType.FIND_NODE, MessageType.GET_VALUE):
                    for i in range(50):  # warm
                        await host.request(peer, new_message(kind, key(i)))
                    before = process_cpu(node.proc.pid)
                    for i in range(count):
                        await host.request(peer, new_message(kind, key(i)))
                    out[Message.MessageType.Name(kind)] = (
                        process_cpu(node.proc.pid) - before) / count

        trio.run(main)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=30)
    args = parser.parse_args()
    trip = trio.run(round_trips, args.requests)
    conn = trio.run(connections, args.connections)
    serving = served(args.requests)
    print(f"round trip on an open stream, both sides: {trip * 1e3:.3f} ms CPU")
    print(f"new connection + identify + 1 request, both sides: {conn * 1e3:.1f} ms CPU")
    for kind, cpu in serving.items():
        print(f"a dhtd process serving {kind}: {cpu * 1e3:.3f} ms CPU per request")


if __name__ == "__main__":
    main()
