"""dhtctl: the command line of dhtd for people, shaped like Kubo's ``ipfs routing``.

Results go to stdout (one per line, or NDJSON with ``--json``); a live progress line,
``--verbose`` event lines and the one-line error message go to stderr. Each class of
failure has its own exit code (see ``EXIT_CODES_HELP``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import math
import os
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any, TextIO

import grpc

from ._aio import AsyncClient
from ._errors import DhtdError
from ._models import (
    NodeInfo,
    PeerInfo,
    ProvideProgress,
    QueryEvent,
    QueryEventType,
    ReprovideCycle,
)
from ._sync import DEFAULT_TARGET
from .cli_display import Screen, Status

__all__ = ["EXIT_BY_STATUS", "main"]

PROG = "dhtctl"
ADDR_ENV = "DHTCTL_ADDR"

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_BY_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.INVALID_ARGUMENT: 4,
    grpc.StatusCode.DEADLINE_EXCEEDED: 5,
    grpc.StatusCode.UNAVAILABLE: 6,
    grpc.StatusCode.FAILED_PRECONDITION: 7,
    grpc.StatusCode.CANCELLED: 8,
    grpc.StatusCode.DATA_LOSS: 9,
}

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    any other failure (INTERNAL, UNKNOWN, ...)
  2    usage: a bad command, option or argument; nothing was sent
  3    NOT_FOUND            the walk ended and nothing was found
  4    INVALID_ARGUMENT     dhtd refused a peer ID, CID, key, value or multiaddr
  5    DEADLINE_EXCEEDED    --timeout (or dhtd's --query-timeout) passed
  6    UNAVAILABLE          dhtd unreachable or without DHT peers, or no peer took the record
  7    FAILED_PRECONDITION  not possible now (provide --recursive without a block source
                            or with a block missing, a put older than the record dhtd holds)
  8    CANCELLED            the call was cancelled on dhtd's side
  9    DATA_LOSS            provide --recursive met a block that does not hash to its CID
  130  interrupted (Ctrl-C); the call is cancelled first
  141  stdout was closed early (broken pipe)
Every failure prints one line on stderr: "dhtctl: <what went wrong>".
"""

EPILOG = f"""\
examples:
  dhtctl info
  dhtctl query 12D3KooW...                  the peers closest to a peer ID
  dhtctl provide bafy... bafk...            or: cat cids.txt | dhtctl provide
  dhtctl findprovs -n 1 bafy...
  echo -n world | dhtctl put /demo/hello    then: dhtctl get /demo/hello
  dhtctl --json get --key-hex 2f706b2f...   binary keys, base64 value in JSON

A progress line is shown on stderr while a call runs, when stderr is a terminal.

environment:
  {ADDR_ENV}    dhtd's gRPC address, if --addr is not given

{EXIT_CODES_HELP}"""


class UsageError(Exception):
    """A bad argument found before anything was sent (exit code 2)."""


# -- argument parsing ------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """The options every command takes, before or after the command name.

    In the command's own parser they default to SUPPRESS, so that an option given
    before the command is not overwritten by the command parser's default.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_command else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--addr", metavar="HOST:PORT",
        default=default(os.environ.get(ADDR_ENV) or DEFAULT_TARGET),
        help=f"dhtd's gRPC address (default: ${ADDR_ENV} or {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_seconds, default=default(None),
        help="give up after this long: the gRPC deadline of the call (default: none; "
        "dhtd stops any lookup after its --query-timeout)",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False),
        help="print NDJSON: one JSON object per event or result, bytes in *_base64 fields",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default(False),
        help="also print every query event on stderr (* querying <peer>, ...)",
    )
    group.add_argument(
        "--no-progress", action="store_true", default=default(False),
        help="no live progress line, even when stderr is a terminal",
    )
    group.add_argument(
        "--progress-log", metavar="FILE", default=default(None),
        help="debugging: write every progress frame drawn to FILE",
    )


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY",
                        help="a record key such as /demo/hello (its UTF-8 bytes)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--key-hex", action="store_true",
                     help="KEY is hex: the key's bytes (for binary keys such as /pk/...)")
    how.add_argument("--key-base64", action="store_true",
                     help="KEY is base64 (standard or URL-safe): the key's bytes")


def _add_min_holders(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-holders", metavar="N", type=_positive_int, default=None,
                        help="end once N peers took the record (default: dhtd's "
                        "--min-holders, 5; 20 or more waits for every store)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, in_command=True)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Use the libp2p Kademlia DHT through dhtd: find peers and providers, "
        "get and put records, announce content.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], help=summary, description=description,
            epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("findpeer", "print the multiaddrs of a peer",
                "Find the addresses of PEER on the DHT and print one multiaddr per line.")
    p.add_argument("peer", metavar="PEER", help="a peer ID (12D3KooW..., Qm...)")

    p = command("findprovs", "print the peers providing a CID",
                "Print each provider of CID (its peer ID) the moment it is found.")
    p.add_argument("cid", metavar="CID", help="a CID, v0 or v1, in any multibase")
    p.add_argument("-n", "--num-providers", metavar="N", type=_positive_int, default=20,
                   help="stop after N providers (default: 20)")

    p = command("get", "print the value of a record",
                "Write the best value stored under KEY to stdout, as raw bytes (on a "
                "terminal, followed by a newline if it has none).")
    _add_key_options(p)

    p = command("put", "store a record on the DHT",
                "Store VALUE under KEY on dhtd and the closest peers; print the ID of "
                "each peer that stored it, then how many peers held it when the call ended.")
    _add_key_options(p)
    p.add_argument("value", metavar="VALUE", nargs="?", default="-",
                   help="the value (its UTF-8 bytes); '-' or none reads the bytes from stdin")
    _add_min_holders(p)

    p = command("provide", "announce that dhtd provides CIDs",
                "Announce dhtd as a provider of each CID; print, per CID, how many peers "
                "took the announcement.")
    p.add_argument("cids", metavar="CID", nargs="*",
                   help="CIDs to announce; with none, or '-', read CIDs from stdin, one a line")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="provide every CID of the DAG under each CID, read from dhtd's "
                   "--block-source")
    _add_min_holders(p)

    p = command("provide-many", "announce any number of CIDs, streamed from a file",
                "Stream CIDs, one a line, from FILE (or stdin) to dhtd's ProvideMany, "
                "BATCH per message, without reading FILE whole; print the totals after each "
                "batch is announced.")
    p.add_argument("file", metavar="FILE", nargs="?", default="-",
                   help="a file of CIDs, one a line; '-' or none reads stdin")
    p.add_argument("--batch", metavar="BATCH", type=_positive_int, default=10_000,
                   help="CIDs per message, at most 10000 (default: 10000)")

    command("provide-status", "describe the provide set and its reprovide cycle",
            "Print how many CIDs dhtd keeps announcing, the reprovide cycle running now or "
            "the last one, and when the next one starts (as `ipfs provide stat`).")

    p = command("query", "print the peers closest to a peer ID",
                "Walk the DHT towards PEER and print the IDs of the closest peers found, "
                "nearest first.")
    p.add_argument("peer", metavar="PEER", help="a peer ID (12D3KooW..., Qm...)")

    command("info", "describe the dhtd node", "Print dhtd's peer ID, addresses, mode and "
            "counters.")

    p = command("connect", "dial a peer and add it to the routing table",
                "Dial MULTIADDR and add the peer to the routing table if it speaks kad.")
    p.add_argument("multiaddr", metavar="MULTIADDR", help="/ip4/.../tcp/.../p2p/<peer id>")
    return parser


# -- inputs ------------------------------------------------------------------------------


def parse_key(text: str, *, hex_: bool = False, b64: bool = False) -> bytes:
    """The bytes of a key given on the command line as text, hex or base64."""
    if hex_:
        try:
            return bytes.fromhex(text)
        except ValueError as err:
            raise UsageError(f"KEY is not hex ({err})") from None
    if b64:
        compact = "".join(text.split()).replace("-", "+").replace("_", "/")
        compact += "=" * (-len(compact) % 4)
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as err:
            raise UsageError(f"KEY is not base64 ({err})") from None
    # surrogateescape gives back the exact bytes of an argument that is not UTF-8.
    return text.encode("utf-8", "surrogateescape")


def _prompt(stdin: TextIO, stderr: TextIO, what: str) -> None:
    if stdin.isatty() and stderr.isatty():
        stderr.write(f"{PROG}: reading {what} from stdin; end with Ctrl-D\n")
        stderr.flush()


def read_inputs(args: argparse.Namespace, stdin: TextIO, stderr: TextIO) -> None:
    """Decodes keys and reads stdin where asked, before any call is made."""
    if args.command in ("get", "put"):
        args.key_bytes = parse_key(args.key, hex_=args.key_hex, b64=args.key_base64)
    if args.command == "put":
        if args.value == "-":
            _prompt(stdin, stderr, "the value")
            args.value_bytes = stdin.buffer.read()
        else:
            args.value_bytes = args.value.encode("utf-8", "surrogateescape")
    if args.command == "provide":
        given: list[str] = args.cids or ["-"]
        cids: list[str] = []
        for item in given:
            if item != "-":
                cids.append(item)
                continue
            _prompt(stdin, stderr, "CIDs, one a line,")
            cids.extend(line.strip() for line in stdin if line.strip())
        if not cids:
            raise UsageError("provide: no CID given, as arguments or on stdin")
        args.cid_list = cids
    if args.command == "provide-many":
        if args.batch > 10_000:
            raise UsageError("provide-many: --batch is at most 10000")
        if args.file == "-":
            _prompt(stdin, stderr, "CIDs, one a line,")
            args.cid_source = stdin
        else:  # read a line at a time while the call runs; closed by the command
            args.cid_source = open(args.file, encoding="utf-8")  # noqa: SIM115


# -- output ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def peer_json(peer: PeerInfo) -> dict[str, Any]:
    return {"id": peer.id, "addrs": list(peer.addrs)}


def event_json(event: QueryEvent, cid: str | None = None) -> dict[str, Any]:
    """A query event as JSON: type (name), type_code (go-libp2p's number), id, responses,
    extra; provide events start with their cid."""
    head: dict[str, Any] = {} if cid is None else {"cid": cid}
    return head | {
        "type": event.type.name,
        "type_code": int(event.type),
        "id": event.id,
        "responses": [peer_json(p) for p in event.responses],
        "extra": event.extra,
    }


def info_json(info: NodeInfo) -> dict[str, Any]:
    return {
        "peer_id": info.peer_id,
        "addrs": list(info.addrs),
        "mode": info.mode,
        "protocol": info.protocol,
        "routing_table_size": info.routing_table_size,
        "connected_peers": info.connected_peers,
        "version": info.version,
        "queries_in_flight": info.queries_in_flight,
        "announced_addrs": list(info.announced_addrs),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- the commands ------------------------------------------------------------------------

Command = Callable[[AsyncClient, argparse.Namespace, Screen], Awaitable[None]]


def _emit(screen: Screen, obj: dict[str, Any]) -> None:
    screen.result(json.dumps(obj, separators=(",", ":")))


async def cmd_findpeer(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    async with screen.progress(Status("finding peer")):
        peer = await client.find_peer(args.peer)
    if args.json:
        _emit(screen, peer_json(peer))
    else:
        for addr in peer.addrs:
            screen.result(addr)


async def cmd_findprovs(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    async with screen.progress(Status("finding providers", kind="found")), aclosing(
        client.find_provs(args.cid, args.num_providers)
    ) as providers:
        async for provider in providers:
            screen.found()
            if args.verbose:
                screen.note(f"* provider {provider.id} " + " ".join(provider.addrs))
            if args.json:
                _emit(screen, peer_json(provider))
            else:
                screen.result(provider.id)


async def cmd_get(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    async with screen.progress(Status("getting")):
        value = await client.get(args.key_bytes)
    if args.json:
        _emit(screen, {"key_base64": _b64(args.key_bytes), "value_base64": _b64(value)})
    else:
        screen.raw(value)


async def _print_walk(
    events: AsyncGenerator[QueryEvent, None], args: argparse.Namespace, screen: Screen,
    status: Status, final_label: str,
) -> None:
    """Shows a walk's progress; prints each event (--json) or each FINAL_PEER's ID."""
    async with screen.progress(status), aclosing(events):
        async for event in events:
            screen.event(event, final_label)
            if args.json:
                _emit(screen, event_json(event))
            elif event.type is QueryEventType.FINAL_PEER:
                screen.result(event.id)


async def cmd_put(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    events = client.put(args.key_bytes, args.value_bytes, min_holders=args.min_holders)
    await _print_walk(events, args, screen,
                      Status("putting", kind="walk", final_word="stored"), "stored on")
    if events.holders is None:  # a dhtd that does not report holders
        return
    if args.json:
        _emit(screen, {"holders": events.holders})
    else:
        screen.result(f"stored on {_plural(events.holders, 'peer')}")


async def cmd_provide(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    cids: list[str] = args.cid_list
    announced = dict.fromkeys(cids, 0)
    label = "providing" if len(cids) == 1 else f"providing {len(cids)} CIDs"
    prefix = len(cids) > 1
    got_events = False

    def summarize() -> None:
        if got_events and not args.json:
            for cid, peers in announced.items():
                screen.result(f"{cid} announced to {_plural(peers, 'peer')}")

    stream = client.provide(*cids, recursive=args.recursive, min_holders=args.min_holders)
    try:
        async with screen.progress(Status(label, kind="walk", final_word="announced")), aclosing(
            stream
        ) as events:
            async for item in events:
                got_events = True
                screen.event(item.event, "announced to", f"{item.cid}: " if prefix else "")
                if item.event.type is QueryEventType.FINAL_PEER:
                    announced[item.cid] = announced.get(item.cid, 0) + 1
                if args.json:
                    _emit(screen, event_json(item.event, item.cid))
    except DhtdError:
        summarize()  # which CIDs made it, before the error line
        raise
    if stream.holders is not None:  # dhtd's own count, per CID (equal to the FINAL_PEERs)
        got_events = True
        for h in stream.holders:
            announced[h.cid] = h.holders
            if args.json:
                _emit(screen, {"cid": h.cid, "holders": h.holders})
    summarize()


def _lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        if line.strip():
            yield line.strip()


def progress_json(p: ProvideProgress) -> dict[str, Any]:
    return {"received": p.received, "committed": p.committed, "announced": p.announced,
            "failed": p.failed, "batches": p.batches}


async def cmd_provide_many(client: AsyncClient, args: argparse.Namespace,
                           screen: Screen) -> None:
    source: TextIO = args.cid_source
    last = ProvideProgress(0, 0, 0, 0, 0)
    try:
        async with screen.progress(Status("providing")) as status, aclosing(
                client.provide_many(_lines(source), batch_size=args.batch)) as totals:
            async for last in totals:
                status.label = (f"providing: {last.committed} committed, {last.announced} "
                                f"announced, {last.failed} reached no peer")
                if last.batches and last.announced + last.failed == last.committed:
                    if args.json:
                        _emit(screen, progress_json(last))
                    elif screen.verbose:
                        screen.note(f"batch {last.batches}: {last.committed} CIDs committed, "
                                    f"{last.announced} announced")
    finally:
        if source is not sys.stdin:
            source.close()
    if not args.json:
        screen.result(f"{_plural(last.committed, 'CID')} in the provide set: "
                      f"{last.announced} announced, {last.failed} reached no peer yet "
                      "(the reprovide cycle retries them)")


def _cycle_text(cycle: ReprovideCycle) -> str:
    text = (f"started {_when(cycle.started)}, {cycle.duration:.1f}s, {cycle.due} due, "
            f"{cycle.done} done, {cycle.failed} failed")
    return text + (f" ({cycle.error})" if cycle.error else "")


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _cycle_json(cycle: ReprovideCycle | None) -> dict[str, Any] | None:
    if cycle is None:
        return None
    return {"started": cycle.started, "duration": cycle.duration, "due": cycle.due,
            "done": cycle.done, "failed": cycle.failed, "error": cycle.error}


async def cmd_provide_status(client: AsyncClient, args: argparse.Namespace,
                             screen: Screen) -> None:
    async with screen.progress(Status("asking dhtd")):
        st = await client.provide_status()
    if args.json:
        _emit(screen, {"cids": st.cids, "current": _cycle_json(st.current),
                       "last": _cycle_json(st.last), "next_cycle": st.next_cycle,
                       "reprovide_interval": st.reprovide_interval, "cycles": st.cycles,
                       "background_stores": st.background_stores,
                       "background_stored": st.background_stored,
                       "background_failed": st.background_failed})
        return
    rows = [
        ("provide set", _plural(st.cids, "CID")),
        ("interval", f"{st.reprovide_interval:g}s"),
        ("current cycle", _cycle_text(st.current) if st.current else "none running"),
        ("last cycle", _cycle_text(st.last) if st.last else "none yet"),
        ("next cycle", _when(st.next_cycle) if st.next_cycle else "none (nothing to provide)"),
        ("cycles", str(st.cycles)),
        ("stores behind", f"{st.background_stores} running; since start "
                          f"{st.background_stored} taken, {st.background_failed} not"),
    ]
    for name, value in rows:
        screen.result(f"{name + ':':<15}{value}")


async def cmd_query(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    await _print_walk(client.query(args.peer), args, screen,
                      Status("querying", kind="walk", final_word="closest"), "closest peer")


async def cmd_info(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    async with screen.progress(Status("asking dhtd")):
        info = await client.info()
    if args.json:
        _emit(screen, info_json(info))
        return
    rows = [
        ("peer id", info.peer_id),
        ("mode", info.mode),
        ("protocol", info.protocol),
        ("routing table", _plural(info.routing_table_size, "peer")),
        ("connected", _plural(info.connected_peers, "peer")),
        ("queries", f"{info.queries_in_flight} in flight"),
        ("version", info.version),
    ]
    for name, value in rows:
        screen.result(f"{name + ':':<15}{value}")
    screen.result("addrs:")
    for addr in info.addrs:
        screen.result(f"  {addr}")
    if info.announced_addrs and list(info.announced_addrs) != list(info.addrs):
        screen.result("announced:")
        for addr in info.announced_addrs:
            screen.result(f"  {addr}")


async def cmd_connect(client: AsyncClient, args: argparse.Namespace, screen: Screen) -> None:
    async with screen.progress(Status("connecting")):
        result = await client.connect(args.multiaddr)
    if args.json:
        _emit(screen, peer_json(result.peer)
              | {"added_to_routing_table": result.added_to_routing_table})
    elif result.added_to_routing_table:
        screen.result(f"connected {result.peer.id} (added to the routing table)")
    else:
        screen.result(f"connected {result.peer.id} (not added to the routing table: it does "
                      "not speak this node's kad protocol)")


COMMANDS: dict[str, Command] = {
    "findpeer": cmd_findpeer,
    "findprovs": cmd_findprovs,
    "get": cmd_get,
    "put": cmd_put,
    "provide": cmd_provide,
    "provide-many": cmd_provide_many,
    "provide-status": cmd_provide_status,
    "query": cmd_query,
    "info": cmd_info,
    "connect": cmd_connect,
}


async def _run(args: argparse.Namespace, screen: Screen) -> None:
    async with AsyncClient(args.addr, timeout=args.timeout) as client:
        await COMMANDS[args.command](client, args, screen)


# -- errors and the entry point ----------------------------------------------------------


def exit_code(err: DhtdError) -> int:
    """The exit code of a failed call: one per gRPC status class, 1 for the rest."""
    return EXIT_BY_STATUS.get(err.code, EXIT_OTHER)


def error_line(err: DhtdError, args: argparse.Namespace) -> str:
    """One line saying what went wrong, without the ``dhtctl:`` prefix."""
    code = err.code
    name = getattr(code, "name", str(code)).replace("_", " ").lower()
    details = " ".join(err.details.split())
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and details.lower() in ("", "deadline exceeded"):
        if args.timeout is not None:
            return f"deadline exceeded: no answer within --timeout {args.timeout:g}s"
        return "deadline exceeded"
    if code is grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        return (f"unavailable: cannot reach dhtd at {args.addr} (is it running? see --addr "
                f"and ${ADDR_ENV}): {details}")
    if code is grpc.StatusCode.INTERNAL:
        name = "internal error in dhtd"
        details = details.removeprefix("internal error: ")
    if not details or details.lower() == name:
        return name
    return f"{name}: {details}"


def _say(line: str) -> None:
    try:
        sys.stderr.write(f"{PROG}: {line}\n")
        sys.stderr.flush()
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one dhtctl command and returns its exit code."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error, 0 after --help
    live = (not args.no_progress and sys.stderr.isatty()
            and os.environ.get("TERM", "") != "dumb")
    log: TextIO | None = None
    screen = Screen(sys.stdout, sys.stderr, live=live, verbose=args.verbose)
    try:
        if args.progress_log:
            log = open(args.progress_log, "w", encoding="utf-8")  # noqa: SIM115
            screen.log = log
        read_inputs(args, sys.stdin, sys.stderr)
        asyncio.run(_run(args, screen))
        return EXIT_OK
    except UsageError as err:
        _say(str(err))
        return EXIT_USAGE
    except DhtdError as err:
        screen.clear()
        _say(error_line(err, args))
        return exit_code(err)
    except KeyboardInterrupt:
        screen.clear()
        _say("interrupted; the call was cancelled")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read stdout has gone (| head): say nothing, and keep Python's exit
        # flush from failing on the closed pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        screen.clear()
        _say(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
        return EXIT_OTHER
    except Exception as err:
        screen.clear()
        _say(f"internal error: {type(err).__name__}: {err}")
        return EXIT_OTHER
    finally:
        if log is not None:
            log.close()


if __name__ == "__main__":
    sys.exit(main())
