"""Suite-wide rules.

On CI (the environment variable CI is set, as `.ci/run` runs), a skipped test is a
failure: tests skip when a tool they need (node, go, promtool, podman, tmux,
docker-compose, ...) is missing, and on CI a missing tool is a broken install
(`scripts/test-tools` installs them all), not a reason to pass. On a developer's
machine a skip stays a skip, with its reason in the summary (-ra).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and on_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped on CI, where every test must run: {reason}"
