"""On CI a skipped test fails the run (tests/conftest.py); elsewhere it stays a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = '''
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("frobnicate is not installed")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    raise AssertionError
'''


def run_sample(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skip_fails_on_ci(tmp_path: Path, ci: str) -> None:
    proc = run_sample(tmp_path, ci)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 1 xfailed" in proc.stdout
    assert "skipped on CI, where every test must run: frobnicate is not installed" in proc.stdout


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_a_skip_is_a_skip_elsewhere(tmp_path: Path, ci: str | None) -> None:
    proc = run_sample(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in proc.stdout
