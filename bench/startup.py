"""dhtd's start-up: from exec to the gRPC server answering, one process at a time.

    .venv/bin/python -m bench.startup [--runs 10] [--json]

Each run starts one dhtd (no peers, a fresh data dir, tests/swarm.py's harness) and
reads, once its "dhtd ready" line came (the gRPC server is up and the node service's
health is SERVING, dhtd.app):

- **wall**: seconds from exec to that line;
- **CPU**: the process's utime + stime then (/proc/<pid>/stat, 10 ms ticks);
- **import**: seconds of ``import dhtd.app`` in a fresh interpreter (``-X importtime``
  would slow it down; this is a plain clock around the import).

Prints the median and the spread of each. A swarm's start-up on 2 cores
(bench/go_compare.py's "start" phase) is mostly this CPU times the processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.go_compare import cpu_seconds
from tests.swarm import spawn_node, wait_ready

READY_TIMEOUT = 60.0
IMPORT_TIMEOUT = 60.0


def one_start(tmp: Path) -> tuple[float, float]:
    start = time.perf_counter()
    node = spawn_node("startup", tmp / "d")
    try:
        wait_ready(node, READY_TIMEOUT)
        wall = time.perf_counter() - start
        return wall, cpu_seconds(node.proc.pid)
    finally:
        node.stop()


def one_import() -> float:
    code = "import time; t = time.perf_counter(); import dhtd.app; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=IMPORT_TIMEOUT, check=True)
    return float(done.stdout.strip())


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    walls, cpus, imports = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            wall, cpu = one_start(Path(tmp) / str(i))
            walls.append(wall)
            cpus.append(cpu)
            imports.append(one_import())
    result = {"runs": args.runs, "wall_s": summary(walls), "cpu_s": summary(cpus),
              "import_s": summary(imports)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"dhtd start-up, {args.runs} runs, one process at a time")
    for name, key in (("exec -> ready, wall s", "wall_s"), ("CPU s at ready", "cpu_s"),
                      ("import dhtd.app, s", "import_s")):
        s = result[key]
        print(f"{name:<24}median {s['median']:.3f}   min {s['min']:.3f}   max {s['max']:.3f}")


if __name__ == "__main__":
    main()
