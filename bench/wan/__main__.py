"""The WAN lab: DHT operations over long round trips and stale routing tables, Go against
dhtd. See bench/wan/README.md.

    sudo .venv/bin/python -m bench.wan [--nodes 30] [--ops 20] [--cases latency,gone,...]
    .venv/bin/python -m bench.wan --scenario tarpit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.go_compare import ensure_go_venv
from bench.wan import lab as wanlab
from bench.wan.cases import CaseArgs, run_case
from bench.wan.nodes import SwarmArgs
from bench.wan.report import print_case, print_summary

REPO = Path(__file__).resolve().parents[2]
CASE_NAMES = (*wanlab.CASES, "mixed")
SHORT_DELAYS = (5.0, 20.0)


def parse_delay(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        span = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not LOW-HIGH in ms: {text!r}") from None
    if not 0 <= span[0] <= span[1] <= 10_000:
        raise argparse.ArgumentTypeError(f"want 0 <= LOW <= HIGH <= 10000 ms: {text!r}")
    return span


def parse_cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASE_NAMES]
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"cases are {', '.join(CASE_NAMES)}; got {text!r}")
    return cases


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.wan",
                                description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=("wan", "tarpit"), default="wan")
    p.add_argument("--nodes", type=int, default=30, help="DHT nodes per swarm")
    p.add_argument("--per-process", type=int, default=1,
                   help="DHT nodes per dhtd process (1 + dev peers); above 1: dhtd only")
    p.add_argument("--only", choices=("go", "dhtd"))
    p.add_argument("--cases", type=parse_cases, default=list(wanlab.CASES),
                   help=f"comma-separated, of {', '.join(CASE_NAMES)}")
    p.add_argument("--ops", type=int, default=20, help="calls of each kind per case")
    p.add_argument("--stale", type=float, default=0.3,
                   help="share of the processes made stale in a stale case")
    p.add_argument("--delay", type=parse_delay, default=(20.0, 150.0),
                   help="one-way delay per process, uniform in LOW-HIGH ms (default 20-150)")
    p.add_argument("--short-delays", action="store_true",
                   help=f"--delay {SHORT_DELAYS[0]:g}-{SHORT_DELAYS[1]:g}")
    p.add_argument("--parallel", type=int, default=4,
                   help="ops in flight at once (never two on one process); 1: one at a time")
    p.add_argument("--interleave", action="store_true",
                   help="run Provide with Put, then FindProvs with Get")
    p.add_argument("--store-wait", type=float, default=10.0,
                   help="seconds after the ops before the record check")
    p.add_argument("--op-timeout", type=float, default=90.0)
    p.add_argument("--prefix", default="/bench", help="kad protocol prefix of both swarms")
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--dhtd-arg", action="append", default=[], metavar="FLAG",
                   help="an extra dhtd flag, e.g. --dhtd-arg=--min-holders=5 (repeatable)")
    p.add_argument("--tarpit-ops", type=int, default=3, help="tarpit: calls of each kind")
    p.add_argument("--tarpit-peers", type=int, default=2, help="tarpit: hostile peers")
    p.add_argument("--tarpit-honest", type=int, default=8,
                   help="tarpit: dev peers of the asking dhtd")
    p.add_argument("--go-venv", type=Path, default=REPO / ".venv-go-bench")
    p.add_argument("--json", action="store_true", help="also print one JSON object, last")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.short_delays:
        args.delay = SHORT_DELAYS
    if args.per_process < 1 or args.nodes < 3 * args.per_process or args.ops < 1:
        p.error("want --per-process >= 1, --nodes >= 3 processes' worth, --ops >= 1")
    if args.nodes % args.per_process:
        p.error("--nodes must be a multiple of --per-process")
    if args.per_process > 1 and args.only != "dhtd":
        if args.only == "go":
            p.error("Go nodes are one per process: --per-process 1 with --only go")
        args.only = "dhtd"
    if not 0 < args.stale < 1:
        p.error("--stale is a share, between 0 and 1")


def main() -> None:
    p = parser()
    args = p.parse_args()
    check_args(p, args)
    if args.scenario == "tarpit":
        from bench.wan.tarpit import run_tarpit
        run_tarpit(args)
        return
    impls = [i for i in ("go", "dhtd") if args.only in (None, i)]
    if not wanlab.in_namespace():
        if problem := wanlab.why_not():
            print(f"bench.wan: {problem}", file=sys.stderr)
            raise SystemExit(2)
        if "go" in impls:
            ensure_go_venv(args.go_venv)  # needs the package index: outside the namespace
        wanlab.enter_namespace(sys.argv[1:])
    run_lab(args, impls)


def run_lab(args: argparse.Namespace, impls: list[str]) -> None:
    procs = args.nodes // args.per_process
    delays = wanlab.draw_delays(args.seed, procs, *args.delay)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v
                                    for k, v in vars(args).items()},
                           "delays_ms": delays, "results": results,
                           "driver_pid": os.getpid()}
    with tempfile.TemporaryDirectory(prefix="wan-lab-") as tmp:
        work = Path(tmp)
        lab = wanlab.Lab(delays, work)
        out["proxy_pid"] = lab.proxy.pid
        try:
            if procs >= 2:
                out["probe"] = {"from": 0, "to": 1, "want_rtt_ms": delays[0] + delays[1],
                                "rtt_ms": wanlab.probe_round_trips(0, 1)}
            for case in args.cases:
                for impl in impls:
                    print(f"bench.wan: {case} on the {impl} swarm", file=sys.stderr, flush=True)
                    sa = SwarmArgs(impl, procs, args.per_process, args.prefix,
                                   args.op_timeout, args.seed,
                                   args.go_venv / "bin" / "python" if impl == "go" else None,
                                   args.dhtd_arg, work / f"{case}-{impl}")
                    sa.work.mkdir()
                    ca = CaseArgs(case, args.ops, args.stale, args.parallel, args.interleave,
                                  args.store_wait, args.seed)
                    try:
                        results.append(run_case(impl, sa, ca, lab))
                    except Exception as exc:  # the next swarm still runs; the report says so
                        results.append({"impl": impl, "case": case, "procs": procs,
                                        "error": f"{type(exc).__name__}: {exc}"[:2000]})
                        print(f"bench.wan: {case} on {impl} FAILED: {exc}", file=sys.stderr,
                              flush=True)
                    print_case(results[-1])
                    sys.stdout.flush()
        finally:
            lab.close()
    out["wall_s"] = time.monotonic() - started
    print_header(args, procs, delays, out)
    print_summary(results)
    if args.json:
        print(json.dumps(out))
    if any("error" in r for r in results):
        raise SystemExit(1)


def print_header(args: argparse.Namespace, procs: int, delays: list[float],
                 out: dict[str, Any]) -> None:
    print(f"\nbench.wan: {args.nodes} nodes in {procs} processes per swarm, {args.ops} calls "
          f"of each kind per case, {args.parallel} at a time, one-way delay "
          f"{args.delay[0]:g}-{args.delay[1]:g} ms (drawn: {min(delays):.0f}-{max(delays):.0f}), "
          f"stale share {args.stale:g}, {os.cpu_count()} cores, {out['wall_s']:.0f}s in all")
    if "probe" in out:
        rtt = out["probe"]["rtt_ms"]
        print(f"proxy probe p0 -> p1: configured round trip {out['probe']['want_rtt_ms']:.1f} ms;"
              f" measured {rtt[0]:.1f} ms on a new connection (with the TCP handshake), then "
              + ", ".join(f"{x:.1f}" for x in rtt[1:]) + " ms")
    if args.dhtd_arg:
        print(f"dhtd flags added: {' '.join(args.dhtd_arg)}")


if __name__ == "__main__":
    main()
