"""What dhtd's gRPC layer costs over a bare grpc.aio server.

    .venv/bin/python -m bench.grpc_overhead [--calls N] [--concurrency N]

Three servers, each in its own OS process, each called by the same client:
- bare: a grpc.aio server whose Info returns a constant (the baseline);
- dhtd Info: the real daemon's NodeService/Info (interceptor + servicer, no trio);
- dhtd FindPeer(self): through the interceptor, the servicer, the trio bridge
  and the node and back (the node answers with its own addrs, no network).
Prints µs per call for sequential calls, and calls/s with N calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from dht.v1 import dht_pb2 as pb
from dht.v1 import dht_pb2_grpc as pb_grpc
from tests.swarm import die_with_parent, start_node

BARE_SERVER = """
import asyncio, sys, grpc
from dht.v1 import dht_pb2 as pb, dht_pb2_grpc as pb_grpc
class Node(pb_grpc.NodeServiceServicer):
    async def Info(self, request, context):
        return pb.InfoResponse(peer_id="12D3KooWbare", version="bare")
async def main():
    server = grpc.aio.server()
    pb_grpc.add_NodeServiceServicer_to_server(Node(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


async def measure(target: str, call: Callable[[grpc.aio.Channel], Awaitable[object]],
                  calls: int, concurrency: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        for _ in range(200):  # warm up
            await call(channel)
        start = time.perf_counter()
        for _ in range(calls):
            await call(channel)
        sequential_us = (time.perf_counter() - start) / calls * 1e6

        async def worker(n: int) -> None:
            for _ in range(n):
                await call(channel)

        start = time.perf_counter()
        per = calls // concurrency
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))
        rate = per * concurrency / (time.perf_counter() - start)
    return sequential_us, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    bare = subprocess.Popen(die_with_parent([sys.executable, "-c", BARE_SERVER]),
                            stdout=subprocess.PIPE, text=True)
    assert bare.stdout is not None
    bare_target = f"127.0.0.1:{bare.stdout.readline().strip()}"
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node("overhead", Path(tmp) / "n", ["--metrics-addr", "127.0.0.1:0"])
        try:
            self_id = node.peer_id

            def info(ch: grpc.aio.Channel) -> Awaitable[object]:
                return pb_grpc.NodeServiceStub(ch).Info(pb.InfoRequest())

            def find_self(ch: grpc.aio.Channel) -> Awaitable[object]:
                return pb_grpc.DhtServiceStub(ch).FindPeer(pb.FindPeerRequest(peer_id=self_id))

            rows = [
                ("bare grpc.aio Info", bare_target, info),
                ("dhtd Info", node.grpc_addr, info),
                ("dhtd FindPeer(self), via trio", node.grpc_addr, find_self),
            ]
            print(f"{args.calls} calls each; concurrency {args.concurrency}")
            print(f"{'server':<32}{'µs/call seq':>12}{'calls/s conc':>14}")
            for name, target, call in rows:
                seq, rate = asyncio.run(measure(target, call, args.calls, args.concurrency))
                print(f"{name:<32}{seq:>12.0f}{rate:>14.0f}")
        finally:
            node.stop()
            bare.terminate()
            bare.wait(10)


if __name__ == "__main__":
    main()
