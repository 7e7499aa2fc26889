"""A throwaway copy of the project in its own git repository, for tests that run real DVC.

`make_project(root, config)` copies the code, conf/ and DVC's files, merges `config` into
conf/config.yaml (e.g. tiny training defaults), composes params.yaml and commits; `command(...)`
runs a command there with this environment's executables first on PATH (as `make run` does), and
without an inherited MLFLOW_TRACKING_URI, so every run lands in the copy's own mlflow.db.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COPIED_DIRS = ("conf", "pipeline", "hydra_plugins", ".dvc", "scripts")
COPIED_FILES = ("dvc.yaml", ".gitignore", ".dvcignore")
GIT_USER = ("-c", "user.email=test@example.com", "-c", "user.name=test")


def environment() -> dict[str, str]:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def command(repo: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `args` in `repo`; with `check`, a non-zero exit fails the test showing the output's end."""
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, env=environment(), timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{output_tail(done)}")
    return done


def start(repo: Path, *args: str, log: Path) -> subprocess.Popen:
    """Start `args` in `repo` in the background, its output going to `log`."""
    with log.open("w") as handle:
        return subprocess.Popen(args, cwd=repo, stdout=handle, stderr=subprocess.STDOUT, env=environment())


def pipeline(repo: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` in `repo` (the copy's code: its folder comes first on sys.path)."""
    return command(repo, sys.executable, "-m", "pipeline", *args, check=check, timeout=timeout)


def output_tail(done: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return f"{done.stdout[-chars:]}\n{done.stderr[-chars:]}"


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` merged into `base` key by key at every depth."""
    result = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if nested else value
    return result


def merge_into(path: Path, extra: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(merged(yaml.safe_load(path.read_text()), extra), sort_keys=False))


def make_project(root: Path, config: dict[str, Any]) -> Path:
    """The project under `root` with `config` merged into conf/ (its `data` into the synthetic entries),
    composed and committed."""
    skip = shutil.ignore_patterns("tmp", "cache", "__pycache__")
    for name in COPIED_DIRS:
        if (PROJECT_ROOT / name).exists():
            shutil.copytree(PROJECT_ROOT / name, root / name, ignore=skip)
    for name in COPIED_FILES:
        if (PROJECT_ROOT / name).exists():
            shutil.copy(PROJECT_ROOT / name, root / name)
    config = dict(config)
    if "data" in config:  # a data section in config.yaml would reach every data entry, not only these
        for entry in (root / "conf/data").glob("synthetic_*.yaml"):
            merge_into(entry, config["data"])
    merge_into(root / "conf/config.yaml", {k: v for k, v in config.items() if k != "data"})
    command(root, "git", "init", "-q")
    compose_and_commit(root, "tiny project")
    return root


def compose_and_commit(repo: Path, message: str, *overrides: str) -> None:
    """params.yaml from conf/ and `overrides` (how a new data or config version is made), committed."""
    pipeline(repo, "compose", *overrides)
    command(repo, "git", "add", "-A")
    command(repo, "git", *GIT_USER, "commit", "-qm", message)
