"""scripts/lib/npm-pinned: one package per platform, pinned by integrity.

A fake ``npm`` on PATH plays the registry: it answers ``npm pack SPEC`` with a
tarball the test made, so these tests run offline and prove the logic that keeps
setup immune to what the registry gains or loses for other platforms.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NPM_PINNED = ROOT / "scripts" / "lib" / "npm-pinned"
PLATFORM = "linux-x64"
SPEC = "@bufbuild/buf-linux-x64@1.75.0"


def make_tarball(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (
            ("package/package.json", b'{"name": "x"}', 0o644),
            ("package/bin/buf", payload, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def registry(tmp_path: Path) -> tuple[Path, Path]:
    """(bin dir with a fake npm, the tarball it serves); it logs each spec asked."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tarball = tmp_path / "served.tgz"
    tarball.write_bytes(make_tarball(b"#!/bin/sh\necho buf 1.75.0\n"))
    npm = bindir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        '# npm pack --silent --pack-destination DIR SPEC\n'
        f'echo "$5" >> "{tmp_path}/asked"\n'
        f'[ -f "{tarball}" ] || {{ echo "npm error 404 Not Found - $5" >&2; exit 1; }}\n'
        f'cp "{tarball}" "$4/pkg.tgz"\n'
    )
    npm.chmod(0o755)
    return bindir, tarball


def run(pins: str, dest: Path, bindir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    pins_file = tmp_path / "pins"
    pins_file.write_text(pins)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "NPM_PINNED_PLATFORM": PLATFORM}
    return subprocess.run(
        [str(NPM_PINNED), str(pins_file), str(dest)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def asked(tmp_path: Path) -> list[str]:
    log = tmp_path / "asked"
    return log.read_text().split() if log.exists() else []


def test_installs_the_pin_of_this_platform_whatever_else_is_listed(registry, tmp_path):
    bindir, tarball = registry
    good = integrity(tarball.read_bytes())
    # Packages for other platforms appear (or disappear) beside ours: bogus integrity,
    # versions the registry may not have. Only this platform's line is read.
    pins = (
        "# platform package version integrity\n"
        f"darwin-arm64 @bufbuild/buf-darwin-arm64 1.75.0 sha512-AAAA\n"
        f"{PLATFORM} @bufbuild/buf-linux-x64 1.75.0 {good}\n"
        "linux-armv7 @bufbuild/buf-linux-armv7 9.9.9 sha512-BBBB\n"
        "win32-x64 @bufbuild/buf-win32-x64 1.75.0 sha512-CCCC  # appeared later\n"
    )
    dest = tmp_path / "pkg"
    proc = run(pins, dest, bindir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert asked(tmp_path) == [SPEC]
    out = subprocess.run([str(dest / "bin" / "buf")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "buf 1.75.0"

    # Same pin again: nothing is fetched.
    proc = run(pins, dest, bindir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert asked(tmp_path) == [SPEC]


def test_integrity_mismatch_fails_with_one_line_naming_the_artifact(registry, tmp_path):
    bindir, tarball = registry
    pinned = integrity(make_tarball(b"the binary that was pinned"))
    dest = tmp_path / "pkg"
    proc = run(f"{PLATFORM} @bufbuild/buf-linux-x64 1.75.0 {pinned}\n", dest, bindir, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert SPEC in lines[0] and "integrity mismatch" in lines[0]
    assert integrity(tarball.read_bytes()) in lines[0]
    assert not dest.exists(), "nothing of an unverified tarball may be installed"


def test_a_changed_pin_replaces_the_installed_package(registry, tmp_path):
    bindir, tarball = registry
    dest = tmp_path / "pkg"
    assert run(f"{PLATFORM} @bufbuild/buf-linux-x64 1.75.0 {integrity(tarball.read_bytes())}\n",
               dest, bindir, tmp_path).returncode == 0
    tarball.write_bytes(make_tarball(b"#!/bin/sh\necho buf 1.76.0\n"))
    proc = run(f"{PLATFORM} @bufbuild/buf-linux-x64 1.76.0 {integrity(tarball.read_bytes())}\n",
               dest, bindir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "bin" / "buf").read_bytes().endswith(b"1.76.0\n")


@pytest.mark.parametrize(
    ("pins", "words"),
    [
        ("darwin-arm64 @bufbuild/buf-darwin-arm64 1.75.0 sha512-AAAA\n",
         f"no pinned package for platform {PLATFORM}"),
        (f"{PLATFORM} @bufbuild/buf-linux-x64 1.75.0\n", "want 'platform package version"),
    ],
    ids=["no-pin-for-this-platform", "malformed-line"],
)
def test_bad_pins_file_fails_with_one_line(registry, tmp_path, pins, words):
    bindir, _ = registry
    proc = run(pins, tmp_path / "pkg", bindir, tmp_path)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert words in proc.stderr


def test_artifact_the_registry_lost_fails_with_one_line(registry, tmp_path):
    bindir, tarball = registry
    good = integrity(tarball.read_bytes())
    tarball.unlink()
    proc = run(f"{PLATFORM} @bufbuild/buf-linux-x64 1.75.0 {good}\n", tmp_path / "pkg", bindir,
               tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and SPEC in lines[0] and "cannot be fetched" in lines[0], proc.stderr
