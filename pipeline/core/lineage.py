"""Lineage facts recorded on every MLflow run: code version, overrides, package versions."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pipeline.core.compose import compose_config
from pipeline.core.config import PipelineConfig, to_flat_dict

TRACKED_PACKAGES = ("ultralytics", "torch", "mlflow", "dvc", "hydra-core", "optuna", "onnxruntime")


def git_state() -> tuple[str, bool]:
    """(commit, dirty); ('unknown', False) outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(status.strip())


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def overrides_against_defaults(cfg: PipelineConfig) -> list[str]:
    """The `key=value` settings in which this config differs from a plain composition of conf/.

    DVC composes params.yaml itself on `dvc exp run -S ...` and does not pass the overrides on, so
    they are recovered by difference; group choices show as e.g. `model.name=yolo11s`.
    """
    defaults = to_flat_dict(compose_config())
    current = to_flat_dict(cfg)
    changed = [key for key in current if defaults.get(key, _MISSING) != current[key]]
    groups = {key.split(".")[0] for key in changed if key.endswith(".name")}
    shown = [key for key in changed if key.endswith(".name") or key.split(".")[0] not in groups]
    return [f"{key}={_render(current[key])}" for key in shown]


_MISSING = object()


def _render(value: Any) -> str:
    return str(value).replace(" ", "")
