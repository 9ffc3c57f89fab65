"""The WAN lab's tables: one per case and swarm, then Go against dhtd per case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.go_compare import LABELS
from bench.go_compare import fmt as num
from bench.wan.cases import OPS

CASE_TITLES = {"latency": "latency only", "gone": "stale: gone (killed, dials refused)",
               "blackhole": "stale: black hole (packets dropped)",
               "frozen": "stale: frozen (SIGSTOP)", "mixed": "stale: gone + black hole + frozen"}
SHOWN_ERRORS = 3  # per op and case
IMPL_TITLES = {"go": "Go (go-libp2p-kad-dht v0.20.0)", "dhtd": "dhtd"}


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:.2f}"


def table(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]]) -> None:
    """Prints a header and rows: the first column left-aligned, the rest right-aligned."""
    for cells in [[name for name, _width in columns], *rows]:
        print("".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                      for i, (cell, (_name, width)) in enumerate(zip(cells, columns,
                                                                     strict=True))))


def print_case(r: dict[str, Any]) -> None:
    print(f"\n== {CASE_TITLES[r['case']]} · {IMPL_TITLES[r['impl']]}: {r['procs']} processes, "
          f"{r.get('nodes', '?')} nodes ==")
    if "error" in r:
        print(f"FAILED: {r['error']}")
        return
    print(f"formed in {r['start_s']:.1f}s, fewest peers known {r['peers_known_min']}; "
          f"load average before {r['loadavg_1m_before']:.2f}")
    if r["victims"]:
        print("stale: " + ", ".join(f"{p} {k}" for p, k in r["victims"].items()))
        for c in r["checks"]:
            print(f"  check {c['process']} ({c['kind']}): a dial from outside: {c['connect']}; "
                  f"process state {c['state']}")
    table([("op", 10), ("ok", 7), ("p50 ms", 9), ("p90 ms", 9), ("p99 ms", 9),
           ("1st prov p50/p90", 18), ("kad req/op", 12), ("failed/op", 11),
           ("new conns/op", 14)],
          [[LABELS[op], f"{f['ok']}/{f['n']}", ms(f["p50_ms"]), ms(f["p90_ms"]),
            ms(f["p99_ms"]),
            f"{ms(f['first_p50_ms'])}/{ms(f['first_p90_ms'])}" if op == "findprovs" else "",
            num(f["kad_per_op"]), num(f["kad_failed_per_op"]), num(f["dials_per_op"])]
           for op in OPS for f in [r["op"][op]]])
    rec = r["records"]
    print(f"records on the true {rec['provide']['closest']} closest live nodes, min / median "
          f"over the keys: provider {rec['provide']['on_true_min']} / "
          f"{num(rec['provide']['on_true_median'], 0)}, value {rec['put']['on_true_min']} / "
          f"{num(rec['put']['on_true_median'], 0)}; live holders in all (median): "
          f"{num(rec['provide']['holders_median'], 0)}, {num(rec['put']['holders_median'], 0)}")
    c = r["cpu"]
    busy = "n/a" if c["machine_busy_pct"] is None else f"{c['machine_busy_pct']:.0f}%"
    print(f"CPU over the ops ({c['wall_s']:.1f}s): proxy {c['proxy_s']:.2f}s "
          f"({c['proxy_pct_core']:.1f}% of a core), bench driver {c['driver_s']:.2f}s "
          f"({c['driver_pct_core']:.1f}%), swarm {c['swarm_s']:.1f}s; machine {busy} busy "
          f"({c['cores']} cores); {c['new_connections']} new connections")
    p = r["proxy"]
    print(f"proxy lateness over the ops: mean {p['late_ms_mean']:.2f} ms, max "
          f"{p['late_ms_max']:.1f} ms, {p['late_over_5ms']} of {p['chunks']} chunks over 5 ms; "
          f"{p['open']} connections open through it at the end")
    for note in r["notes"]:
        print(f"NOTE: {note}")
    if r["records"]["unreachable"]:
        print(f"NOTE: {len(r['records']['unreachable'])} live nodes did not answer the record "
              f"check: {r['records']['unreachable'][0]}")
    for op in OPS:
        errors = r["op"][op]["errors"]
        shown = errors[:SHOWN_ERRORS]
        if len(errors) > SHOWN_ERRORS:
            shown.append(f"... and {len(errors) - SHOWN_ERRORS} more")
        print("".join(f"FAILED {LABELS[op]}: {line}\n" for line in shown), end="")
    if r["impl"] == "go":
        print("(Go: no kad request counts and no time to the first provider: the binding "
              "exposes neither)")


def print_summary(results: Sequence[dict[str, Any]]) -> None:
    by = {(r["case"], r["impl"]): r for r in results if "op" in r}
    cases = list(dict.fromkeys(r["case"] for r in results))
    if not any((case, "go") in by and (case, "dhtd") in by for case in cases):
        return
    print("\n== Go against dhtd: p50 / p90 in seconds, successes ==")
    rows = []
    for case in cases:
        if (case, "go") not in by or (case, "dhtd") not in by:
            continue
        g, d = by[(case, "go")], by[(case, "dhtd")]
        for op in OPS:
            fg, fd = g["op"][op], d["op"][op]
            ratio = (f"{fd['p50_ms'] / fg['p50_ms']:.2f}" if fg["p50_ms"] and fd["p50_ms"]
                     else "n/a")
            landed = ""
            if op in ("provide", "put"):
                landed = " / ".join(f"{x['records'][op]['on_true_min']}-"
                                    f"{num(x['records'][op]['on_true_median'], 0)}"
                                    for x in (g, d))
            rows.append([f"{case} {LABELS[op]}", f"{secs(fg['p50_ms'])} / {secs(fg['p90_ms'])}",
                         f"{secs(fd['p50_ms'])} / {secs(fd['p90_ms'])}", ratio,
                         f"{fg['ok']}/{fg['n']}", f"{fd['ok']}/{fd['n']}", landed])
    table([("case, op", 22), ("Go p50/p90", 15), ("dhtd p50/p90", 15), ("dhtd/Go p50", 13),
           ("ok Go", 7), ("ok dhtd", 9), ("on true 20 Go / dhtd", 23)], rows)
    print("(on true 20: min-median over the keys of the true 20 closest live nodes that "
          "hold the record)")
