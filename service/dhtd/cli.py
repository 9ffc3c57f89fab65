"""The ``dhtd`` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from dhtd import config as config_module
from dhtd import logs


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_module.load(argv)
    except config_module.ConfigError as exc:
        for line in exc.problems:
            print(f"dhtd: {line}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    from dhtd import app

    try:
        asyncio.run(app.serve(config))
    except app.StartupError as exc:
        # A log record like every other line (one JSON object in json format).
        logging.getLogger("dhtd").critical("dhtd: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
