"""Helpers for the kill tests of the post-training stages: a stage run as a real subprocess, killed by
the project's own kill switch (PIPELINE_KILL_AT), on the tiny project with an MLflow run of its own."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.artifacts import RUN_FILE
from pipeline.core.faults import KILL_ENV
from pipeline.core.io import write_json
from tests._tiny import TinyProject, start_run
from tests.conftest import PROJECT_ROOT


def with_fresh_run(project: TinyProject, folder: Path) -> TinyProject:
    """The tiny project with a run.json of its own: a new MLflow run, as a new training writes it, so
    a test sees only what its own stage runs logged."""
    write_json(folder / RUN_FILE, {"run_id": start_run(project.root, project.tracking_uri)})
    return dataclasses.replace(project, train_report=folder)


def stage_process(stage: str, params: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline <stage>`, armed to SIGKILL itself at `kill_at` when given."""
    env = {key: value for key, value in os.environ.items() if key != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    command = [sys.executable, "-m", "pipeline", stage, "--params", str(params)]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
