"""The WAN lab's delaying TCP proxy: every connection between two lab processes crosses it.

    python -m bench.wan.proxy --delays 31.5,88.0,...   (one-way ms per lab process)

Run by bench/wan/lab.py inside the lab's network namespace, as root with group 0. It
listens on 127.0.0.1, one port per lab process, and prints one JSON line
``{"event": "ready", "ports": [...]}``. The lab then adds one nat OUTPUT rule per
process: every TCP connection that process ``i`` (its own group id) opens to 127.0.0.0/8
is DNAT-ed to ``ports[i]``. So the port a connection arrives on names the dialler, and
SO_ORIGINAL_DST names where it was going: an address 127.1.x.y belongs to one process
(lab.node_ip), and 127.0.0.1:PORT to the process that registered it (a dev peer's
listener). The proxy's own connections (group 0) match no rule and go straight through.

Delay, per direction, of a connection from process A to process B: one-way
``(d_A + d_B) / 2``, so a round trip costs ``d_A + d_B``. Each chunk read at time t is
written on at t + one-way (a queue per direction, in order; never cumulative). The TCP
handshake is modelled too: the proxy connects on to B one one-way after the dial
(B sees the connection when a SYN would have reached it), and A's first bytes reach B no
earlier than three one-ways after the dial (SYN, SYN-ACK, then the data), as over a
real path. End of stream (FIN) and a reset travel through the same queue.

Commands, one JSON line each on stdin, answered with one JSON line (bench/jsonline.py):

    {"op": "register", "addr": "127.0.0.1:PORT", "proc": i}   a listener of process i
    {"op": "stats"}      -> {"dials": [per dialling process], "accepted": [per target
                             process], "open": N, "unknown": N, "chunks": N, "bytes": N,
                             "late_ms_max": x, "late_ms_mean": x, "late_over_5ms": N}
    {"op": "stop"}

"late" is how long after its due time a chunk was written: the proxy's own error;
``{"op": "stats", "reset_late": true}`` starts those figures afresh after answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import struct
import sys
import time
from collections import deque
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
HIGH_WATER = 1 << 20  # bytes queued in one direction before its reader pauses
LOW_WATER = 1 << 18
CONNECT_TIMEOUT = 20.0
MAX_LINE = 1 << 16
MAX_COMMANDS = 10_000_000
EOF = b""  # queue item: the sender half-closed
RESET = None  # queue item: the sender's connection died (reset or error)


class Stats:
    def __init__(self, procs: int) -> None:
        self.dials = [0] * procs
        self.accepted = [0] * procs
        self.unknown = 0
        self.open = 0
        self.chunks = 0
        self.bytes = 0
        self.late_max = 0.0
        self.late_sum = 0.0
        self.late_over_5ms = 0

    def late(self, seconds: float) -> None:
        self.chunks += 1
        if seconds > 0:
            self.late_sum += seconds
            self.late_max = max(self.late_max, seconds)
            if seconds > 0.005:
                self.late_over_5ms += 1

    def reset_late(self) -> None:
        self.chunks, self.late_max, self.late_sum, self.late_over_5ms = 0, 0.0, 0.0, 0

    def figures(self) -> dict[str, Any]:
        return {"dials": self.dials, "accepted": self.accepted, "open": self.open,
                "unknown": self.unknown, "chunks": self.chunks, "bytes": self.bytes,
                "late_ms_max": 1000 * self.late_max,
                "late_ms_mean": 1000 * self.late_sum / self.chunks if self.chunks else 0.0,
                "late_over_5ms": self.late_over_5ms}


def original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(ip), port


def reset(transport: asyncio.BaseTransport) -> None:
    """Closes with a RST (SO_LINGER 0), as a dead peer's connection ends."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class Pipe:
    """One direction of a link: what ``source`` sent, written to ``sink`` after ``delay``."""

    def __init__(self, link: Link, delay: float, not_before: float) -> None:
        self.link, self.delay, self.not_before = link, delay, not_before
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.paused = False
        self.done = False  # EOF or RESET delivered

    def push(self, item: bytes | None) -> None:
        loop = self.link.loop
        self.queue.append((max(loop.time() + self.delay, self.not_before), item))
        if item:
            self.queued += len(item)
            if self.queued > HIGH_WATER and not self.paused and self.source is not None:
                self.paused = True
                self.source.pause_reading()
        self.arm()

    def arm(self) -> None:
        if self.timer is None and self.queue and self.sink is not None:
            self.timer = self.link.loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        loop, stats = self.link.loop, self.link.proxy.stats
        now = loop.time()
        # Never early: a timer that fires a little before its time (asyncio allows its
        # clock's resolution) is armed again.
        while self.queue and self.queue[0][0] <= now and self.sink is not None:
            due, item = self.queue.popleft()
            stats.late(now - due)
            if item is RESET:
                self.done = True
                self.link.kill()
                return
            if item == EOF:
                self.done = True
                # shutdown() fails on a socket its peer has reset; the link ends anyway.
                with suppress(OSError):
                    self.sink.write_eof()
                self.link.maybe_close()
                continue
            assert item is not None
            self.queued -= len(item)
            stats.bytes += len(item)
            self.sink.write(item)
        if self.paused and self.queued < LOW_WATER and self.source is not None:
            self.paused = False
            self.source.resume_reading()
        self.arm()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Side(asyncio.Protocol):
    """One socket of a link; what it reads goes into ``pipe``."""

    def __init__(self, link: Link, pipe: Pipe) -> None:
        self.link, self.pipe = link, pipe
        self.transport: asyncio.Transport | None = None
        self.ended = False

    def data_received(self, data: bytes) -> None:
        self.pipe.push(data)

    def eof_received(self) -> bool:
        self.ended = True
        self.pipe.push(EOF)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link.closed:
            return
        if exc is not None:  # reset or error: the other side is reset too, in its turn
            self.pipe.push(RESET)
        elif not self.ended:
            self.pipe.push(EOF)
        self.ended = True


class Inbound(Side):
    """The dialler's side of a link (accepted on the dialler's port)."""

    def __init__(self, proxy: Proxy, proc: int) -> None:
        self.proxy, self.proc = proxy, proc

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        try:
            link = Link(self.proxy, self.proc, transport)
        except OSError:  # not DNAT-ed here: no original destination
            transport.abort()
            return
        super().__init__(link, link.ab)
        self.transport = transport
        link.inbound = self


class Outbound(Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


class Link:
    """One proxied connection: A (the dialler) to B, with a Pipe each way."""

    def __init__(self, proxy: Proxy, src: int, inbound: asyncio.Transport) -> None:
        self.proxy, self.loop = proxy, proxy.loop
        self.closed = False
        self.inbound: Inbound | None = None
        self.outbound: Outbound | None = None
        self.connecting: asyncio.Task[None] | None = None
        sock = inbound.get_extra_info("socket")
        self.dst = original_dst(sock)
        dst = proxy.owner(self.dst)
        one_way = (proxy.delays[src] + (proxy.delays[dst] if dst is not None else 0.0)) / 2
        proxy.stats.dials[src] += 1
        if dst is None:
            proxy.stats.unknown += 1
        else:
            proxy.stats.accepted[dst] += 1
        proxy.stats.open += 1
        proxy.links.add(self)
        now = self.loop.time()
        self.ab = Pipe(self, one_way, now + 3 * one_way)
        self.ba = Pipe(self, one_way, now)
        self.ab.source = inbound
        self.ba.sink = inbound
        self.start = self.loop.call_later(one_way, self.connect)

    def connect(self) -> None:
        self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.dst
        try:
            transport, protocol = await asyncio.wait_for(self.loop.create_connection(
                lambda: Outbound(self, self.ba), host, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            # B is gone: the dialler learns it one one-way later (a RST on its way back).
            self.ba.push(RESET)
            return
        if self.closed:
            transport.close()
            return
        assert isinstance(protocol, Outbound)
        self.outbound = protocol
        self.ab.sink = transport
        self.ba.source = transport
        self.ab.arm()

    def state(self) -> str:
        def side(pipe: Pipe, transport: asyncio.Transport | None) -> str:
            gone = "none" if transport is None else (
                "closing" if transport.is_closing() else "open")
            return f"{'done' if pipe.done else len(pipe.queue)}/{gone}"
        inbound = self.inbound.transport if self.inbound is not None else None
        outbound = self.outbound.transport if self.outbound is not None else None
        return f"ab {side(self.ab, outbound)} ba {side(self.ba, inbound)}"

    def maybe_close(self) -> None:
        if self.ab.done and self.ba.done:
            self.close(reset_both=False)

    def kill(self) -> None:
        self.close(reset_both=True)

    def close(self, reset_both: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.stats.open -= 1
        self.proxy.links.discard(self)
        self.start.cancel()
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        for pipe in (self.ab, self.ba):
            pipe.cancel()
        for side in (self.inbound, self.outbound):
            if side is not None and side.transport is not None:
                if reset_both:
                    reset(side.transport)
                else:
                    side.transport.close()


class Proxy:
    def __init__(self, loop: asyncio.AbstractEventLoop, delays_ms: list[float]) -> None:
        self.loop = loop
        self.delays = [d / 1000 for d in delays_ms]
        self.stats = Stats(len(delays_ms))
        self.listeners: dict[tuple[str, int], int] = {}
        self.links: set[Link] = set()

    def owner(self, addr: tuple[str, int]) -> int | None:
        """The lab process that listens at ``addr``, if any (see lab.node_ip)."""
        found = self.listeners.get(addr)
        if found is not None:
            return found
        parts = addr[0].split(".")
        if parts[:2] == ["127", "1"]:
            index = int(parts[2]) * 250 + int(parts[3]) - 1
            if 0 <= index < len(self.delays):
                return index
        return None

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if op == "register":
            host, _, port = str(command["addr"]).rpartition(":")
            self.listeners[(host, int(port))] = int(command["proc"])
            return {}
        if op == "links":  # what the open links wait for, counted by state
            states: dict[str, int] = {}
            for link in self.links:
                state = link.state()
                states[state] = states.get(state, 0) + 1
            return {"states": states}
        if op == "stats":
            figures = self.stats.figures()
            if command.get("reset_late"):
                self.stats.reset_late()
            return figures
        raise ValueError(f"unknown op {op!r}")


def reply(proxy: Proxy, command: dict[str, Any]) -> dict[str, Any]:
    """The answer line to one command (see the module doc)."""
    start = time.perf_counter()
    try:
        out: dict[str, Any] = {"ok": True, **proxy.command(command)}
    except (KeyError, ValueError) as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out.update(ms=(time.perf_counter() - start) * 1000, id=command.get("id"))
    return out


def answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def raise_file_limit() -> int:
    """Lifts this process's open-file limit as far as the kernel allows (it runs as root):
    every proxied connection holds two sockets, and 200 nodes keep about 10,000
    connections open, past the usual limit (where accept() would fail and dials hang)."""
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = 1 << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(hard, ceiling), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (OSError, ValueError):
            continue
    return hard


async def serve(args: argparse.Namespace) -> None:
    files = raise_file_limit()
    loop = asyncio.get_running_loop()
    delays = [float(d) for d in args.delays.split(",")]
    proxy = Proxy(loop, delays)
    servers = []
    for i in range(len(delays)):
        servers.append(await loop.create_server(
            partial(Inbound, proxy, i), "127.0.0.1", 0, backlog=1024))
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    answer({"event": "ready", "ports": ports, "open_files_limit": files})
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    commands = 0
    while (line := await reader.readline()) and commands < MAX_COMMANDS:
        commands += 1
        command = json.loads(line)
        if command.get("op") == "stop":
            break
        answer(reply(proxy, command))
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", required=True,
                        help="one-way delay of each lab process in ms, comma-separated")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
