"""Inspect and compact a data dir's state.db: python -m dhtd.state stats|vacuum DATA_DIR

``stats`` prints what the file holds (one JSON object). ``vacuum`` rewrites it
to its smallest size. Both take the data dir's lock, so they refuse to run
beside a dhtd that uses it (stop dhtd first); neither changes what is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dhtd.state.db import DB_FILE, CorruptDatabase, Database, DataDirLocked


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dhtd.state", description=__doc__)
    parser.add_argument("command", choices=("stats", "vacuum"))
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    if not (args.data_dir / DB_FILE).is_file():
        print(f"dhtd.state: no {DB_FILE} in {args.data_dir}", file=sys.stderr)
        return 1
    try:
        db = Database.open(args.data_dir)
    except (DataDirLocked, CorruptDatabase) as exc:
        print(f"dhtd.state: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "vacuum":
            before = _size(args.data_dir)
            db.vacuum()
            print(json.dumps({"bytes_before": before, "bytes_after": _size(args.data_dir)}))
        else:
            print(json.dumps(stats(db)))
    finally:
        db.close()
    return 0


def stats(db: Database) -> dict[str, object]:
    def count(table: str) -> int:
        return int(db.read(f"SELECT count(*) FROM {table}")[0][0])  # table: one of our names

    never = db.read("SELECT count(*) FROM provided WHERE announced = 0")[0][0]
    return {
        "schema_version": db.read("PRAGMA user_version")[0][0],
        "provided": count("provided"),
        "provided_never_announced": never,
        "published": count("published"),
        "saved_peers": count("peers"),
        "provider_records": count("providers"),
        "bytes": _size(db.data_dir),
    }


def _size(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob(DB_FILE + "*") if p.is_file()
               and ".corrupt-" not in p.name)


if __name__ == "__main__":
    sys.exit(main())
