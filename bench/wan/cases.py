"""One case of the WAN lab on one swarm: form the network, make nodes stale, run the
workload, see where the records landed, and measure.

Cases: ``latency`` (delays only), ``gone``, ``blackhole``, ``frozen`` (--stale of the
processes made stale that way once the network has formed), and ``mixed`` (the stale
processes split among the three ways; the test's case). The victims are a seeded choice
of process indexes, the same for both swarms; no op is ever issued by a victim.

The workload is go_compare's: --ops Provide, as many FindProvs of those CIDs, --ops Put
(``/pk/`` records) and as many Get of those keys, each FindProvs and Get asked by a live
node outside the 20 live nodes closest to the key (XOR of sha256) other than the issuer,
where the record should have landed (the farthest when none is left). Phases run in
that order; within a phase up to --parallel ops run at once, never two on one process.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.go_compare import K, Keys, kad, make_keys
from bench.jsonline import OpFailed
from bench.wan import holders
from bench.wan.lab import STALE_KINDS, Lab, Stale, check_stale, machine_cpu, process_state
from bench.wan.nodes import LabProc, Swarm, SwarmArgs, kad_position, start_swarm
from dhtd.ids import b58decode

OPS = ("provide", "findprovs", "put", "get")
STOP_WAIT = 5.0  # for a killed process to be gone, a stopped one to be stopped
SCHEDULER_POLL = 1.0
PROXY_QUIET = 1.0
PROXY_QUIET_MAX = 15.0


@dataclass
class CaseArgs:
    case: str
    ops: int
    stale: float
    parallel: int
    interleave: bool
    store_wait: float
    seed: int


@dataclass
class OpResult:
    op: str
    issuer: int
    ms: float
    error: str | None = None
    first_ms: float | None = None  # FindProvs: the first provider (dhtd only)
    kad: int | None = None  # kad requests the issuing node sent (dhtd only)
    kad_failed: int | None = None
    dials: int | None = None  # new connections the issuing process opened


def pick_victims(case: str, procs: int, fraction: float, seed: int) -> dict[int, str]:
    """Process index -> how it goes stale; the same for both swarms."""
    if case == "latency":
        return {}
    count = min(procs - 2, max(1, round(fraction * procs)))
    chosen = random.Random(f"wan-victims-{seed}-{case}").sample(range(procs), count)
    if case == "mixed":
        return {index: STALE_KINDS[i % len(STALE_KINDS)] for i, index in enumerate(chosen)}
    return dict.fromkeys(chosen, case)


@dataclass(frozen=True)
class Step:
    actor: int  # process that provides or puts
    querier: int  # process that asks FindProvs or Get


def plan(keys: Sequence[bytes], swarm: Swarm, live: Sequence[int], rng: random.Random
         ) -> list[Step]:
    """Issuers among the live processes' main nodes; each querier outside the 20 live
    nodes closest to the key other than the issuer (where the issuer stores the record),
    or, when there is none, the farthest."""
    alive = set(live)
    nodes = [(kad_position(peer_id), proc.index, n == 0)
             for proc in swarm.procs if proc.index in alive for n, peer_id in enumerate(proc.ids)]
    steps = []
    for key in keys:
        actor = rng.choice(live)
        target = kad(key)
        ranked = sorted((node for node in nodes if not (node[1] == actor and node[2])),
                        key=lambda node: node[0] ^ target)
        far = [proc for _pos, proc, main in ranked[K:] if main and proc != actor]
        if not far:
            far = [proc for _pos, proc, main in reversed(ranked) if main and proc != actor][:1]
        steps.append(Step(actor, rng.choice(far)))
    return steps


class Scheduler:
    """Runs tasks on ``parallel`` threads, never two at once on one issuer."""

    def __init__(self, parallel: int) -> None:
        self.parallel = max(1, parallel)

    def run(self, tasks: Sequence[tuple[int, Callable[[], None]]]) -> None:
        pending = list(tasks)
        busy: set[int] = set()
        cond = threading.Condition()
        failures: list[BaseException] = []

        def worker() -> None:
            while True:
                with cond:
                    while True:
                        if not pending or failures:
                            return
                        pick = next((i for i, (who, _) in enumerate(pending) if who not in busy),
                                    None)
                        if pick is not None:
                            break
                        cond.wait(SCHEDULER_POLL)
                    issuer, task = pending.pop(pick)
                    busy.add(issuer)
                try:
                    task()
                except BaseException as exc:
                    with cond:
                        failures.append(exc)
                finally:
                    with cond:
                        busy.discard(issuer)
                        cond.notify_all()

        threads = [threading.Thread(target=worker, name=f"op-{i}", daemon=True)
                   for i in range(min(self.parallel, len(pending)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]


def measured(op: str, proc: LabProc, lab: Lab, call: Callable[[], str | None]) -> OpResult:
    """Runs one op (``call`` returns None on success, else why it failed), timed, with the
    issuing node's kad requests and the issuing process's new connections."""

    def counters() -> tuple[tuple[int, int] | None, int]:
        try:
            kad_now = proc.kad_requests()
        except OSError:
            kad_now = None
        return kad_now, int(lab.proxy.stats()["dials"][proc.index])

    kad0, dials0 = counters()
    proc.peer.first_ms = None  # type: ignore[attr-defined]
    start = time.perf_counter()
    try:
        problem = call()
    except OpFailed as exc:
        problem = str(exc)
    ms = (time.perf_counter() - start) * 1000
    kad1, dials1 = counters()
    result = OpResult(op, proc.index, ms, problem, getattr(proc.peer, "first_ms", None),
                      dials=dials1 - dials0)
    if kad0 is not None and kad1 is not None:
        result.kad, result.kad_failed = kad1[0] - kad0[0], kad1[1] - kad0[1]
    return result


def workload(swarm: Swarm, lab: Lab, keys: Keys, live: Sequence[int], a: CaseArgs
             ) -> tuple[list[OpResult], list[Step]]:
    rng = random.Random(f"wan-plan-{a.seed}-{a.case}")
    cid_steps = plan([mh for _cid, mh in keys.cids], swarm, live, rng)
    record_steps = plan([key for key, _value in keys.records], swarm, live, rng)
    results: list[OpResult] = []
    lock = threading.Lock()
    procs = swarm.procs

    def task(op: str, proc: LabProc, call: Callable[[], str | None]
             ) -> tuple[int, Callable[[], None]]:
        def run() -> None:
            result = measured(op, proc, lab, call)
            with lock:
                results.append(result)
        return proc.index, run

    def provide(i: int) -> tuple[int, Callable[[], None]]:
        proc = procs[cid_steps[i].actor]
        return task("provide", proc, lambda: proc.peer.provide(keys.cids[i][0]))

    def findprovs(i: int) -> tuple[int, Callable[[], None]]:
        proc, provider = procs[cid_steps[i].querier], procs[cid_steps[i].actor].ids[0]

        def call() -> str | None:
            found = proc.peer.find_providers(keys.cids[i][0])
            return None if provider in found else f"provider not among the {len(found)} found"
        return task("findprovs", proc, call)

    def put(i: int) -> tuple[int, Callable[[], None]]:
        proc = procs[record_steps[i].actor]
        return task("put", proc, lambda: proc.peer.put(*keys.records[i]))

    def get(i: int) -> tuple[int, Callable[[], None]]:
        proc = procs[record_steps[i].querier]

        def call() -> str | None:
            value = proc.peer.get(keys.records[i][0])
            if value == keys.records[i][1]:
                return None
            return "not found" if value is None else f"another value ({len(value)} bytes)"
        return task("get", proc, call)

    scheduler = Scheduler(a.parallel)
    n = range(a.ops)
    if a.interleave:
        scheduler.run([t for i in n for t in (provide(i), put(i))])
        scheduler.run([t for i in n for t in (findprovs(i), get(i))])
    else:
        for make in (provide, findprovs, put, get):
            scheduler.run([make(i) for i in n])
    return results, cid_steps


def quantile(samples: Sequence[float], q: int) -> float | None:
    """The q-th percentile (inclusive method); the value itself for one sample."""
    if not samples:
        return None
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def mean(values: Sequence[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def op_figures(results: Sequence[OpResult]) -> dict[str, Any]:
    ms = [r.ms for r in results]
    first = [r.first_ms for r in results if r.first_ms is not None]
    return {
        "n": len(results), "ok": sum(r.error is None for r in results),
        "p50_ms": quantile(ms, 50), "p90_ms": quantile(ms, 90), "p99_ms": quantile(ms, 99),
        "first_p50_ms": quantile(first, 50), "first_p90_ms": quantile(first, 90),
        "kad_per_op": mean([r.kad for r in results]),
        "kad_failed_per_op": mean([r.kad_failed for r in results]),
        "dials_per_op": mean([r.dials for r in results]),
        "errors": [f"p{r.issuer}: {r.error}"[:300] for r in results if r.error is not None],
    }


def landed(held: Sequence[set[str]], keys: Sequence[bytes], live_ids: Sequence[str]
           ) -> dict[str, Any]:
    """Per key, how many of its true k closest live nodes hold its record, and how many
    live nodes hold it in all; min and median over the keys."""
    positions = {peer_id: kad(b58decode(peer_id)) for peer_id in live_ids}
    on_true, total = [], []
    for holders_of, key in zip(held, keys, strict=True):
        target = kad(key)
        closest = set(sorted(positions, key=lambda p: positions[p] ^ target)[:K])
        on_true.append(len(holders_of & closest))
        total.append(len(holders_of))
    return {"keys": len(keys), "closest": min(K, len(live_ids)),
            "on_true_min": min(on_true, default=None),
            "on_true_median": statistics.median(on_true) if on_true else None,
            "holders_median": statistics.median(total) if total else None,
            "on_true": on_true}


def check_victims(victims: Sequence[Stale], swarm: Swarm) -> list[dict[str, str]]:
    """One probe per kind of stale node: what a dial sees, and the process state."""
    checks = []
    seen: set[str] = set()
    for victim in victims:
        if victim.kind in seen:
            continue
        seen.add(victim.kind)
        want = {"gone": ("gone", "Z"), "frozen": ("T",)}.get(victim.kind)
        deadline = time.monotonic() + STOP_WAIT
        while want and process_state(victim.pid) not in want and time.monotonic() < deadline:
            time.sleep(0.02)
        port = int(swarm.procs[victim.index].addrs[0].split("/tcp/")[1].split("/")[0])
        checks.append({"process": f"p{victim.index}", **check_stale(victim, port)})
    return checks


def run_case(impl: str, sa: SwarmArgs, a: CaseArgs, lab: Lab) -> dict[str, Any]:
    """Starts a swarm, runs the case on it, stops it; the figures."""
    swarm = Swarm(impl)
    victims: list[Stale] = []
    result: dict[str, Any] = {"impl": impl, "case": a.case, "procs": sa.procs,
                              "loadavg_1m_before": os.getloadavg()[0]}
    try:
        start_swarm(swarm, sa, lab)
        result.update(nodes=swarm.nodes, start_s=swarm.start_s,
                      peers_known_min=swarm.peers_known_min,
                      pids=[p.pid for p in swarm.procs])
        kinds = pick_victims(a.case, sa.procs, a.stale, a.seed)
        for index, kind in sorted(kinds.items()):
            proc = swarm.procs[index]
            victims.append(Stale(index, proc.pid, kind, proc.listen_ports))
        for victim in victims:
            lab.make_stale(victim)
        result["victims"] = {f"p{v.index}": v.kind for v in victims}
        result["checks"] = check_victims(victims, swarm)
        if victims:
            quiet_proxy(lab)
        t0, cpu0 = time.monotonic(), snapshot(swarm, lab, reset_late=True)
        live = [p.index for p in swarm.procs if p.index not in kinds]
        keys = make_keys(a.seed * 1000 + sum(map(ord, a.case)), a.ops)
        print(f"  {impl}: {a.case}: {len(victims)} stale processes; ops", flush=True,
              file=sys.stderr)
        results, cid_steps = workload(swarm, lab, keys, live, a)
        ops_wall, cpu1 = time.monotonic() - t0, snapshot(swarm, lab)
        result["op"] = {op: op_figures([r for r in results if r.op == op]) for op in OPS}
        result["cpu"] = cpu_figures(cpu0, cpu1, ops_wall)
        time.sleep(a.store_wait)  # for stores still going on in the background
        live_nodes = [(peer_id, addr) for p in swarm.procs if p.index not in kinds
                      for peer_id, addr in zip(p.ids, p.addrs, strict=True)]
        held = holders.inspect(f"{sa.prefix}/kad/1.0.0", live_nodes,
                               [(mh, swarm.procs[s.actor].ids[0])
                                for (_cid, mh), s in zip(keys.cids, cid_steps, strict=True)],
                               keys.records)
        live_ids = [peer_id for peer_id, _addr in live_nodes]
        result["records"] = {
            "provide": landed(held.providers, [mh for _cid, mh in keys.cids], live_ids),
            "put": landed(held.values, [key for key, _v in keys.records], live_ids),
            "unreachable": held.unreachable}
        result["proxy"] = {k: v for k, v in cpu1.proxy_stats.items()
                           if k not in ("dials", "accepted", "ok", "ms", "id")}
        result["notes"] = swarm.notes
        return result
    finally:
        try:
            lab.clear_stale(victims)
        finally:
            swarm.stop()


def quiet_proxy(lab: Lab) -> None:
    """Waits (at most PROXY_QUIET_MAX) until the proxy's count of open connections has
    not moved for PROXY_QUIET: killing processes ends hundreds of connections at once,
    and the ops should not start while the proxy is still passing those ends on."""
    deadline = time.monotonic() + PROXY_QUIET_MAX
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        count = lab.proxy.stats()["open"]
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= PROXY_QUIET:
            return
        time.sleep(0.1)


@dataclass
class Snapshot:
    proxy: float
    driver: float
    swarm: float
    busy: float
    total: float
    proxy_stats: dict[str, Any] = field(default_factory=dict)


def snapshot(swarm: Swarm, lab: Lab, reset_late: bool = False) -> Snapshot:
    times = os.times()
    busy, total = machine_cpu()
    return Snapshot(lab.cpu_seconds(), times.user + times.system, swarm.cpu(), busy, total,
                    lab.proxy.stats(reset_late))


def cpu_figures(a: Snapshot, b: Snapshot, wall: float) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    return {
        "wall_s": wall,
        "proxy_s": b.proxy - a.proxy, "proxy_pct_core": 100 * (b.proxy - a.proxy) / wall,
        "driver_s": b.driver - a.driver, "driver_pct_core": 100 * (b.driver - a.driver) / wall,
        "swarm_s": b.swarm - a.swarm,
        "machine_busy_pct": 100 * (b.busy - a.busy) / (b.total - a.total) if b.total > a.total
        else None,
        "cores": cores,
        "new_connections": sum(b.proxy_stats["dials"]) - sum(a.proxy_stats["dials"]),
    }
