"""bench/go_worker.py on an address of the WAN lab: one Go DHT node listening on
--listen-ip (127.1.x.y) instead of 127.0.0.1.

Runs in the Go peers' venv (.venv-go-bench), as go_worker.py does:

    .venv-go-bench/bin/python bench/wan/go_node.py --listen-ip 127.1.0.7 [go_worker args]

Everything else (the JSON-line commands, the DHT options, the exit rules) is
go_worker.py's, which this imports and runs with the host's listen address swapped.
go-libp2p dials from its listen address (SO_REUSEPORT), so connections it opens
come from --listen-ip too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != "--listen-ip":
        sys.exit("usage: go_node.py --listen-ip IP [go_worker.py arguments]")
    ip, rest = args[1], args[2:]
    sys.path.insert(0, str(REPO))
    from bench import go_worker

    listen = getattr(go_worker, "ListenAddrStrings")  # noqa: B009 (the binding's option)

    def on_lab_address(*_addrs: str) -> Any:
        return listen(f"/ip4/{ip}/tcp/0")

    setattr(go_worker, "ListenAddrStrings", on_lab_address)  # noqa: B010
    sys.argv = [str(Path(go_worker.__file__)), *rest]
    go_worker.main()


if __name__ == "__main__":
    main()
