"""What the PyPI locks promise: a registry that gains or yanks files changes nothing.

Every ``pip install`` of setup runs with ``--require-hashes`` against a lock that pins
each package with ``==`` and lists the hashes of its files. These tests run the same
pip as ``./dev`` (this venv's) against a local PEP 503 index that the test writes:

* a wheel added later for the same version, one pip would rank higher (a more
  specific platform tag), is passed over because its hash is not in the lock;
* a yanked release still installs when the lock pins it exactly (PEP 592);
* a file whose bytes differ from the lock still fails, naming the package.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

NAME = "dhtdprobe"
VERSION = "1.0"


def make_wheel(directory: Path, tag: str, marker: str, version: str = VERSION) -> Path:
    """A minimal valid wheel whose module says which file it came from."""
    path = directory / f"{NAME}-{version}-{tag}.whl"
    dist = f"{NAME}-{version}.dist-info"
    files = {
        f"{NAME}.py": f"WHICH = {marker!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        f"Tag: {tag}\n".encode(),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_index(root: Path, wheels: list[Path], yanked: set[Path] = frozenset()) -> str:
    """A PEP 503 simple index over file:// URLs, with PEP 592 yanked marks."""
    page = root / "simple" / NAME
    page.mkdir(parents=True, exist_ok=True)
    links = []
    for wheel in wheels:
        attr = ' data-yanked="broken upload"' if wheel in yanked else ""
        links.append(f'<a href="{wheel.as_uri()}#sha256={sha256(wheel)}"{attr}>{wheel.name}</a>')
    (page / "index.html").write_text("<html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    return (root / "simple").as_uri()


def pip_install(index: str, lock: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", "--isolated", "--index-url", index, "--target", str(target),
         "-r", str(lock)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def installed_from(target: Path) -> str:
    text = (target / f"{NAME}.py").read_text()
    return text.split("=", 1)[1].strip().strip("'")


@pytest.fixture
def pinned(tmp_path: Path) -> tuple[Path, Path]:
    """(the wheel the lock pins, the lock file)."""
    wheels = tmp_path / "files"
    wheels.mkdir()
    wheel = make_wheel(wheels, "py3-none-any", "pinned")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"{NAME}=={VERSION} \\\n    --hash=sha256:{sha256(wheel)}\n")
    return wheel, lock


def test_a_wheel_added_later_is_passed_over(tmp_path, pinned):
    wheel, lock = pinned
    # Ranked above py3-none-any by pip on this interpreter, and not in the lock.
    added = make_wheel(wheel.parent, "py311-none-any", "added later")
    newer = make_wheel(wheel.parent, "py3-none-any", "a newer release", version="2.0")
    index = write_index(tmp_path / "index", [wheel, added, newer])
    proc = pip_install(index, lock, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    assert installed_from(tmp_path / "site") == "pinned"


def test_a_yanked_release_still_installs_from_an_exact_pin(tmp_path, pinned):
    wheel, lock = pinned
    index = write_index(tmp_path / "index", [wheel], yanked={wheel})
    proc = pip_install(index, lock, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    assert installed_from(tmp_path / "site") == "pinned"


def test_a_file_that_differs_from_the_lock_fails(tmp_path, pinned):
    wheel, lock = pinned
    wheel.write_bytes(make_wheel(wheel.parent.parent, "py3-none-any", "tampered").read_bytes())
    index_root = tmp_path / "index"
    write_index(index_root, [wheel])
    # The index advertises the new bytes' hash; the lock still holds the old one.
    proc = pip_install((index_root / "simple").as_uri(), lock, tmp_path / "site")
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr and NAME in proc.stderr
