"""Node identity files: ``python -m dhtd.identity new FILE`` / ``show FILE``.

An identity file is a libp2p private key in its protobuf encoding, the same
file dhtd creates as ``<data dir>/identity.key`` on first start. Making one
ahead of time gives a node a peer ID known in advance, which other nodes need
in their ``--bootstrap /…/p2p/<peer id>`` (docker-compose, Kubernetes Secrets).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from dhtd.ids import peer_id_to_str
from dhtd.p2p import IDENTITY_FILE, load_or_create_identity, peer_id_of

USAGE = f"usage: python -m dhtd.identity new|show FILE   (dhtd reads DATA_DIR/{IDENTITY_FILE})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("new", "show"):
        print(USAGE, file=sys.stderr)
        return 2
    command, path = args[0], Path(args[1])
    if command == "new" and path.exists():
        print(f"dhtd.identity: {path} exists; refusing to overwrite it", file=sys.stderr)
        return 1
    if command == "show" and not path.exists():
        print(f"dhtd.identity: {path} does not exist", file=sys.stderr)
        return 1
    try:
        pair = load_or_create_identity(path.parent, path.name)
    except Exception as exc:
        print(f"dhtd.identity: {path}: not a libp2p private key ({exc})", file=sys.stderr)
        return 1
    print(peer_id_to_str(peer_id_of(pair)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
