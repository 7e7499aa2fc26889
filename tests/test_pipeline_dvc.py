"""The whole pipeline through real DVC, at tiny scale, in a temporary git repository."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.dvc_project import command


def runs(repo: Path) -> list:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_repro_produces_every_stage_output(tiny_pipeline):
    text = command(tiny_pipeline, "dvc", "metrics", "show", "--json").stdout
    for key in ("mAP50", "mAP50-95", "precision", "recall", "p50_ms"):
        assert f'"{key}"' in text, key
    outputs = (
        "data/prepared/data.yaml",
        "reports/analyze/recommendations.json",
        "reports/train/plan.json",
        "models/export/models/model.onnx",
        "reports/benchmark/benchmark.md",
    )
    for output in outputs:
        assert (tiny_pipeline / output).exists(), output


def test_dvc_metrics_hold_the_headline_figures_only(tiny_pipeline):
    """What `dvc exp show` lists as metrics: six columns, so experiments read side by side."""
    shown = json.loads(command(tiny_pipeline, "dvc", "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    keys = {file: set(entry["data"]) for file, entry in files.items()}
    assert keys == {
        "reports/evaluate/metrics.json": {"precision", "recall", "mAP50", "mAP50-95"},
        "reports/benchmark/benchmark.json": {"p50_ms", "fps"},
    }


def test_second_repro_is_up_to_date_within_seconds(tiny_pipeline):
    start = time.perf_counter()
    out = command(tiny_pipeline, "dvc", "repro").stdout
    assert "Data and pipelines are up to date" in out
    print(f"second dvc repro: {time.perf_counter() - start:.1f} s")


def test_one_mlflow_run_per_execution_holds_every_stage(tiny_pipeline):
    run_id = json.loads((tiny_pipeline / "reports/train/run.json").read_text())["run_id"]
    [run] = [r for r in runs(tiny_pipeline) if r.info.run_id == run_id]
    keys = " ".join(run.data.metrics)
    for stage_key in ("metrics/mAP50-95_B_", "eval/", "export/", "benchmark/"):
        assert stage_key in keys, stage_key


def test_exp_run_with_overrides_is_its_own_experiment_and_run(tiny_pipeline):
    shown = command(tiny_pipeline, "dvc", "exp", "show", "--json").stdout
    assert "yolov8n" in shown and "synthetic_rgb" in shown
    by_model = {r.data.params.get("model.name"): r for r in runs(tiny_pipeline)}
    assert set(by_model) == {"yolo11n", "yolov8n"}
    experiment = by_model["yolov8n"]
    assert experiment.data.tags["dvc.exp_name"] and experiment.data.params["sensor.name"] == "rgb"
    assert experiment.info.run_name == experiment.data.tags["dvc.exp_name"]


def failing_exp_run(repo: Path, override: str) -> str:
    done = command(repo, "dvc", "exp", "run", "-S", override, check=False)
    assert done.returncode != 0, f"dvc exp run -S {override} should fail"
    return done.stdout + done.stderr


@pytest.fixture
def scratch_copy(tiny_pipeline, tmp_path) -> Path:
    """A failed `dvc exp run` leaves the workspace without the outputs DVC removed before running the
    failing stage (stats.json is not cached): the shared project must not lose them."""
    return Path(shutil.copytree(tiny_pipeline, tmp_path / "copy", symlinks=True))


def test_wrong_override_fails_at_once_naming_the_choices(scratch_copy):
    output = failing_exp_run(scratch_copy, "model=yolo99x")
    assert "yolo99x" in output and "yolo11n" in output
    assert "train.imgsz=100" in failing_exp_run(scratch_copy, "train.imgsz=100")


def test_thermal_hue_jitter_fails_before_training_naming_the_key(scratch_copy):
    output = failing_exp_run(scratch_copy, "train.hsv_h=0.015")
    assert "train.hsv_h=0.015 is not allowed for sensor=thermal" in output
    assert "allow_unsafe_augmentation" in output and "Running stage 'train'" not in output
