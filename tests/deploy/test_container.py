"""The Dockerfile and its build context: lint, install steps, runtime contract, a real build."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dhtd import config as dhtd_config
from tests.deploy import (
    DOCKERFILE,
    NOT_INSTALLED,
    ROOT,
    Instruction,
    env_of,
    in_build_context,
    parse_dockerfile,
    pip_install_args,
    read_dockerignore,
    shell_commands,
    stages,
    tool,
)

DEV = ROOT / "dev"


def final_stage() -> list[Instruction]:
    return stages(parse_dockerfile())[-1]


def only(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert len(found) == 1, f"want exactly one {name} in the final stage, found {found}"
    return found[0]


def image_env() -> dict[str, str]:
    """The environment the image runs dhtd with (ENV of the final stage)."""
    return env_of(final_stage())


# -- lint ---------------------------------------------------------------------------------


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with requirements-dev.lock (./dev setup)")
    return subprocess.run(
        [hadolint, "--no-color", str(path)], cwd=path.parent,
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_hadolint_passes() -> None:
    done = run_hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    # Proves the lint can fail here: an unpinned base and apt-get without cleanup.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    done = run_hadolint(bad)
    assert done.returncode != 0
    assert "DL3006" in done.stdout, done.stdout


def test_every_hadolint_exception_is_explained() -> None:
    config = ROOT / ".hadolint.yaml"
    if not config.exists():
        return
    data = yaml.safe_load(config.read_text()) or {}
    assert set(data) <= {"ignored"}, f"only ignored rules are expected: {sorted(data)}"
    lines = config.read_text().splitlines()
    for rule in data.get("ignored", []):
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert at > 0 and lines[at - 1].strip().startswith("#"), f"{rule} needs a comment above it"


# -- base and install steps ---------------------------------------------------------------


def test_base_image_is_an_argument_pinned_to_a_slim_python_tag() -> None:
    instructions = parse_dockerfile()
    first = instructions[0]
    assert first.name == "ARG" and first.args.startswith("PYTHON_IMAGE="), first
    default = first.args.partition("=")[2]
    name, _, tag = default.partition(":")
    assert name == "python" and re.fullmatch(r"3\.\d+-slim-\w+", tag), default
    froms = [i for i in instructions if i.name == "FROM"]
    assert len(froms) >= 2, "a multi-stage build: build tools stay out of the runtime image"
    assert all(f.args.split()[0] == "${PYTHON_IMAGE}" for f in froms), froms


def _dev_pip_installs() -> list[list[str]]:
    text = DEV.read_text().replace("\\\n", " ")
    setup = text[text.index("setup() {") : text.index("\n}\n", text.index("setup() {"))]
    installs = []
    for line in setup.splitlines():
        args = pip_install_args(shlex.split(line.replace('"$PY"', "PY")))
        if args is not None:
            installs.append(args)
    return installs


def _image_pip_installs() -> list[list[str]]:
    installs = []
    for ins in stages(parse_dockerfile())[0]:
        if ins.name != "RUN":
            continue
        for command in shell_commands(ins.args):
            args = pip_install_args(command)
            if args is not None:
                installs.append(args)
    return installs


# Flags about output and caching, which may differ between ./dev and the image.
COSMETIC = {"-q", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "--no-compile"}


def _meaning(args: list[str]) -> tuple[set[str], list[str], list[str]]:
    """(flags, requirement files, targets with -e and ./ dropped) of one pip install."""
    flags: set[str] = set()
    files: list[str] = []
    targets: list[str] = []
    words = iter(args)
    for word in words:
        if word in ("-r", "--requirement"):
            files.append(next(words))
        elif word in ("-e", "--editable"):
            continue
        elif word.startswith("-"):
            if word not in COSMETIC:
                flags.add(word)
        else:
            targets.append(os.path.normpath(word))
    return flags, files, targets


def test_image_installs_what_dev_setup_installs() -> None:
    dev = [_meaning(a) for a in _dev_pip_installs()]
    image = [_meaning(a) for a in _image_pip_installs()]
    assert len(dev) == 2, f"./dev setup changed shape: {dev}"
    assert len(image) == 2, f"want two pip installs in the build stage, found {image}"

    dev_lock, dev_project = dev
    image_lock, image_project = image
    # 1. the pinned, hashed dependencies: requirements.lock, exactly (dev uses the
    #    dev lock, which is compiled against it).
    assert image_lock == ({"--require-hashes"}, ["requirements.lock"], []), image_lock
    assert dev_lock[0] == image_lock[0] and dev_lock[2] == [], dev_lock
    # 2. the two packages of this repo, with the same flags as ./dev, not editable.
    assert image_project == dev_project, (image_project, dev_project)
    assert image_project[0] == {"--no-deps", "--no-build-isolation"}, image_project
    assert sorted(image_project[2]) == [".", "clients/python"], image_project
    assert not any(
        w in ("-e", "--editable") for a in _image_pip_installs() for w in a
    ), "the image installs the packages, not links to the build context"


def test_lock_is_copied_and_installed_before_the_sources() -> None:
    build = stages(parse_dockerfile())[0]
    names = [(i.name, i.args) for i in build]

    def first(kind: str, word: str) -> int:
        return next(n for n, (k, a) in enumerate(names) if k == kind and word in a.split())

    copy_lock = first("COPY", "requirements.lock")
    install_lock = first("RUN", "requirements.lock")
    copy_service = first("COPY", "service")
    assert copy_lock < install_lock < copy_service, names


# -- runtime contract ---------------------------------------------------------------------


def test_entrypoint_is_dhtd() -> None:
    entrypoint = only(final_stage(), "ENTRYPOINT").exec_form()
    assert entrypoint == ["dhtd"]


def test_runs_as_a_fixed_non_root_user() -> None:
    user = only(final_stage(), "USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user}: numeric, so runAsNonRoot can check it"
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    creates = " ".join(i.args for i in final_stage() if i.name == "RUN")
    assert f"--uid {uid}" in creates, "the user exists in the image"


def test_image_env_is_a_valid_dhtd_configuration() -> None:
    env = image_env()
    dhtd_env = {k: v for k, v in env.items() if k.startswith("DHTD_")}
    assert set(dhtd_env) == {
        "DHTD_GRPC_ADDR", "DHTD_LISTEN", "DHTD_METRICS_ADDR", "DHTD_DATA_DIR",
    }
    # Each is one of dhtd's own variables, and together they load as a configuration.
    flags = {a.dest for a in dhtd_config.build_parser({})._actions}
    for key in dhtd_env:
        assert key.removeprefix("DHTD_").lower() in flags, key
    cfg = dhtd_config.load([], dhtd_env)
    assert (cfg.grpc_host, cfg.grpc_port) == ("0.0.0.0", 50051)
    assert cfg.metrics_addr == ("0.0.0.0", 9464)
    assert str(cfg.data_dir) == "/data"


def test_exposed_ports_match_the_env_defaults() -> None:
    env = image_env()
    listen = re.fullmatch(r"/ip4/0\.0\.0\.0/tcp/(\d+)", env["DHTD_LISTEN"])
    assert listen, env["DHTD_LISTEN"]
    wanted = {
        int(env["DHTD_GRPC_ADDR"].rpartition(":")[2]),
        int(listen.group(1)),
        int(env["DHTD_METRICS_ADDR"].rpartition(":")[2]),
    }
    exposed = {int(p.split("/")[0]) for p in only(final_stage(), "EXPOSE").args.split()}
    assert exposed == wanted


def test_data_dir_is_a_volume_owned_by_the_user() -> None:
    stage = final_stage()
    volume = only(stage, "VOLUME").args
    data_dir = image_env()["DHTD_DATA_DIR"]
    assert volume in (data_dir, f'["{data_dir}"]'), volume
    uid = only(stage, "USER").args.partition(":")[0]
    runs = " ".join(i.args for i in stage if i.name == "RUN")
    assert re.search(rf"chown {uid}(:\d+)? {re.escape(data_dir)}\b", runs), runs


def test_healthcheck_asks_healthz_with_python() -> None:
    healthcheck = only(final_stage(), "HEALTHCHECK").args
    cmd = healthcheck[healthcheck.index("CMD") :]
    assert cmd.startswith("CMD ["), "exec form: no shell needed"
    command = Instruction("CMD", cmd[3:], 0).exec_form()
    assert command is not None and command[0] == "python", command
    code = command[-1]
    assert "urllib" in code and "127.0.0.1" in code and "/healthz" in code, code
    assert "9464" in code, "falls back to the default metrics port"


def test_healthcheck_command_works_against_a_live_node(tmp_path: Path) -> None:
    from tests.swarm import start_node

    command = Instruction("CMD", only(final_stage(), "HEALTHCHECK").args.partition("CMD")[2],
                          0).exec_form()
    assert command is not None
    python = [sys.executable]
    node = start_node("health", tmp_path / "n", ["--metrics-addr", "127.0.0.1:0"])
    env = {**os.environ, "DHTD_METRICS_ADDR": str(node.info["metrics_addr"])}
    try:
        ok = subprocess.run(python + command[1:], env=env, capture_output=True, timeout=30,
                            check=False)
        assert ok.returncode == 0, ok.stderr
    finally:
        node.stop()
    down = subprocess.run(python + command[1:], env=env, capture_output=True, timeout=30,
                          check=False)
    assert down.returncode != 0, "the check must fail once dhtd is gone"


def test_labels() -> None:
    labels = " ".join(i.args for i in final_stage() if i.name == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


# -- build context ------------------------------------------------------------------------


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    rules = read_dockerignore()
    kept = [
        "requirements.lock", "pyproject.toml", "README.md",
        "service/dhtd/__init__.py", "service/dhtd/wire/dht.proto",
        "clients/python/pyproject.toml", "clients/python/src/dhtd_client/__init__.py",
        "protos/dht/v1/dht.proto",
    ]
    dropped = [
        ".venv/bin/python", ".venv-compose/bin/docker-compose", ".git/HEAD", ".git",
        "tests/swarm.py", "bench/run.py", "node_modules/x/index.js",
        "service/dhtd/__pycache__/app.cpython-311.pyc", "clients/python/build/lib/x.py",
        ".mypy_cache/x.json", ".pytest_cache/v", ".ruff_cache/x", ".hypothesis/x",
        ".dhtd-dev/identity.key", "service/dhtd.egg-info/PKG-INFO",
    ]
    assert [p for p in kept if not in_build_context(p, rules)] == []
    assert [p for p in dropped if in_build_context(p, rules)] == []


def test_every_file_the_dockerfile_copies_is_in_the_context() -> None:
    rules = read_dockerignore()
    sources: list[str] = []
    for ins in parse_dockerfile():
        if ins.name != "COPY" or "--from=" in ins.args:
            continue
        sources += [w for w in shlex.split(ins.args) if not w.startswith("--")][:-1]
    assert sources, "no COPY from the build context?"
    missing = []
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [
            p for p in path.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]
        missing += [str(f.relative_to(ROOT)) for f in files
                    if not in_build_context(str(f.relative_to(ROOT)), rules)]
    assert missing == []


# -- a real build -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_image_builds_and_runs() -> None:
    """scripts/build-image-local: podman build against a local bookworm base, then the
    image's dhtd in a chroot: --help, two nodes joining, HEALTHCHECK, the example client."""
    missing = [t for t in ("podman", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} {NOT_INSTALLED}")
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, podman image mount, chroot)")
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-image-local")], cwd=ROOT,
        capture_output=True, text=True, timeout=1100, check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    assert "all checks passed" in done.stderr, done.stderr
    print(f"build-image-local took {time.monotonic() - started:.0f}s")
