from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.swarm import Node, swarm

# A namespace opened on every node for Put/Get tests (last write wins).
NAMESPACE = "app"
# Local DHT peers per process: 5 processes x (1 + 4) = 25 nodes, more than k=20,
# so that "the k closest" is a real selection.
DEV_PEERS = 4


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    """Five dhtd processes bootstrapped as a chain n0 <- n1 <- ... <- n4."""
    tmp: Path = tmp_path_factory.mktemp("swarm")
    with swarm(tmp, 5, extra=["--namespace", NAMESPACE, "--dev-peers", str(DEV_PEERS)]) as nodes:
        yield nodes
