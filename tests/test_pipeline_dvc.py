"""The whole pipeline through real DVC, at tiny scale, in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT

TINY = {
    "data": {"synthetic": {"images": 32, "size": 64}},
    "train": {"epochs": 2, "imgsz": 64, "batch": 8, "workers": 0, "time_hours": None, "warmup_epochs": 0},
    "benchmark": {"warmup": 1, "runs": 3, "images": 4, "batch": 2},
    "export": {"parity_images": 4},
}


def run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project whose conf/ defaults are shrunk to seconds, committed to git."""
    repo = tmp_path_factory.mktemp("project")
    for name in ("conf", "pipeline", "hydra_plugins", ".dvc"):
        if (PROJECT_ROOT / name).exists():
            skip = shutil.ignore_patterns("tmp", "__pycache__")
            shutil.copytree(PROJECT_ROOT / name, repo / name, ignore=skip)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        if (PROJECT_ROOT / name).exists():
            shutil.copy(PROJECT_ROOT / name, repo / name)
    config = yaml.safe_load((repo / "conf/config.yaml").read_text())
    for section, values in TINY.items():
        config[section] = {**config.get(section, {}), **values}
    (repo / "conf/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, sys.executable, "-m", "pipeline", "compose")
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny project")
    run(repo, "dvc", "repro")
    return repo


def test_repro_produces_every_stage_output(repo):
    metrics = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    text = json.dumps(metrics)
    for key in ("mAP50", "mAP50-95", "precision", "recall"):
        assert f'"{key}"' in text
    assert (repo / "reports/evaluate/metrics.json").exists()
    assert (repo / "reports/benchmark/benchmark.json").exists()


def test_second_repro_is_up_to_date(repo):
    out = run(repo, "dvc", "repro").stdout
    assert "Data and pipelines are up to date" in out


def test_one_mlflow_run_holds_train_evaluate_export_and_benchmark(repo):
    run_id = json.loads((repo / "reports/train/run.json").read_text())["run_id"]
    data = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id).data
    assert any(key.startswith("metrics/mAP50") for key in data.metrics)
    keys = " ".join(data.metrics)
    assert "eval" in keys and "bench" in keys, keys


def test_exp_run_with_overrides_is_its_own_experiment_and_run(repo):
    run(repo, "dvc", "exp", "run", "-S", "model=yolov8n", "-S", "sensor=rgb", "-S", "data=synthetic_rgb")
    shown = run(repo, "dvc", "exp", "show", "--json").stdout
    assert "yolov8n" in shown
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs(_experiment_ids(client))
    models = {r.data.params.get("model.name") for r in runs}
    assert {"yolo11n", "yolov8n"} <= models
    assert any(r.data.tags.get("dvc.exp_name") for r in runs if r.data.params.get("model.name") == "yolov8n")


def _experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def failing_exp_run(repo: Path, override: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["dvc", "exp", "run", "-S", override]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    assert done.returncode != 0, f"dvc exp run -S {override} should fail"
    return done.stdout + done.stderr


def test_wrong_override_fails_at_once_naming_the_choices(repo):
    output = failing_exp_run(repo, "model=yolo99x")
    assert "yolo99x" in output and "yolo11n" in output
    assert "train.imgsz=100" in failing_exp_run(repo, "train.imgsz=100")
