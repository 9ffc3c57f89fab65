"""Inspect and compact a data dir's files: python -m dhtd.state stats|vacuum DATA_DIR

``stats`` prints what state.db and records.db hold (one JSON object). ``vacuum``
rewrites both to their smallest size. Both take the data dir's lock, so they refuse to run
beside a dhtd that uses it (stop dhtd first); neither changes what is kept.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from dhtd.state.db import DB_FILE, CorruptDatabase, Database, DataDirLocked
from dhtd.stores.db import RECORDS_FILE, RecordsDb


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
        records = RecordsDb.open(args.data_dir)
    except (CorruptDatabase, OSError, sqlite3.Error) as exc:
        db.close()
        print(f"dhtd.state: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "vacuum":
            before = _size(args.data_dir)
            db.vacuum()
            records.conn.execute("VACUUM")
            records.close()
            print(json.dumps({"bytes_before": before, "bytes_after": _size(args.data_dir)}))
        else:
            print(json.dumps(stats(db, records)))
    finally:
        records.close()
        db.close()
    return 0


def stats(db: Database, records: RecordsDb) -> dict[str, object]:
    def count(table: str) -> int:
        return int(db.read(f"SELECT count(*) FROM {table}")[0][0])  # table: one of our names

    def held(table: str) -> int:
        return int(records.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    never = db.read("SELECT count(*) FROM provided WHERE announced = 0")[0][0]
    return {
        "schema_version": db.read("PRAGMA user_version")[0][0],
        "provided": count("provided"),
        "provided_never_announced": never,
        "published": count("published"),
        "saved_peers": count("peers"),
        "provider_records": held("provider_records"),
        "value_records": held("records"),
        "bytes": _size(db.data_dir),
    }


def _size(data_dir: Path) -> int:
    return sum(p.stat().st_size for name in (DB_FILE, RECORDS_FILE)
               for p in data_dir.glob(name + "*") if p.is_file() and ".corrupt-" not in p.name)


if __name__ == "__main__":
    sys.exit(main())
