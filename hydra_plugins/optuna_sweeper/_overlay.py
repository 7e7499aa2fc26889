"""The best trial back into the pipeline: an experiment overlay in `conf/experiment/`.

`+experiment=sweep_<study>` then reproduces the best trial with `python -m pipeline compose` and
`dvc repro`, or `dvc exp run -S +experiment=sweep_<study>`. The overlay holds the trial's
parameters and the command line's fixed overrides, except those that only say where things go
(`experiment_exclude`: paths, tracking, the sweep selection, Hydra's own settings).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf


def overlay_name(study_name: str) -> str:
    return "sweep_" + re.sub(r"[^A-Za-z0-9_-]+", "_", study_name)


def excluded(key: str, prefixes: Iterable[str]) -> bool:
    bare = key.lstrip("+~")
    return any(bare == p or bare.startswith((f"{p}.", f"{p}/")) for p in prefixes)


def overlay_text(
    overrides: Sequence[Override], groups: set[str], exclude: Sequence[str], header: Sequence[str]
) -> str:
    """The YAML of an `@package _global_` config that applies `overrides`."""
    defaults: list[str] = []
    values: dict[str, Any] = {}
    skipped: list[str] = []
    for override in overrides:
        key = override.key_or_group
        if excluded(key, [*exclude, "hydra"]):
            continue
        if override.is_delete():
            skipped.append(override.input_line)
        elif key in groups:
            keyword = "" if override.is_add() else "override "
            defaults.append(f"  - {keyword}/{key}: {override.value()}")
        else:
            set_nested(values, key.split("."), override.value())
    lines = ["# @package _global_", *(f"# {line}" for line in header)]
    lines += [f"# not applied (deletions): {line}" for line in skipped]
    if defaults:
        lines += ["defaults:", *defaults]
    if values:
        lines.append(OmegaConf.to_yaml(OmegaConf.create(values)).rstrip())
    return "\n".join(lines) + "\n"


def set_nested(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def write_overlay(
    directory: Path,
    study_name: str,
    lines: Sequence[str],
    parser: OverridesParser,
    groups: set[str],
    exclude: Sequence[str],
    best: Mapping[str, Any],
    name: str | None = None,
    title: str | None = None,
) -> Path:
    """Write `<directory>/sweep_<study>.yaml` for the best trial (atomically); `name` and `title`
    replace the file's name and first header line (a multi-objective sweep's overlays, `_multi`)."""
    name = name or overlay_name(study_name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if title is None:
        metric, value = best["metric"], best["value"]
        title = f"Best trial {best['number']} of Optuna study '{study_name}': {metric} = {value:.5g}"
    header = [
        title,
        f"(written by the sweep, {stamp}; a later sweep of the same study rewrites it).",
        f"Reproduce: python -m pipeline compose +experiment={name} && dvc repro",
        f"       or: dvc exp run -S +experiment={name}",
    ]
    text = overlay_text(parser.parse_overrides(list(lines)), groups, exclude, header)
    path = directory / f"{name}.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def config_groups(config_loader: Any, parent: str = "") -> set[str]:
    """Every config group (nested ones as `a/b`) the app's config search path provides."""
    groups = set()
    for group in config_loader.list_groups(parent):
        full = f"{parent}/{group}" if parent else group
        groups.add(full)
        groups |= config_groups(config_loader, full)
    return groups


def primary_conf_dir(config: Any) -> Path | None:
    for source in config.hydra.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path)
    return None
