"""Distillation: the teacher is resolved (path or MLflow URI), checked against the student, recorded."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.compose import compose_config
from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.data.prepare import run as prepare
from pipeline.data.synthetic import CLASSES
from pipeline.model.info import file_sha256
from pipeline.train import stage as train
from pipeline.train.distill import teacher_arguments, teacher_lineage
from tests.conftest import tiny_overrides


def teacher(folder: Path, names: tuple[str, ...], channels: int = 3) -> Path:
    """A randomly initialised YOLO11n checkpoint (distillation mechanics do not need a trained one)."""
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = YOLO("yolo11n.yaml")
    model.model = DetectionModel("yolo11n.yaml", ch=channels, nc=len(names), verbose=False)
    model.model.names = dict(enumerate(names))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "best.pt")
    return folder / "best.pt"


def student(root: Path, *extra: str):
    return compose_config([*tiny_overrides(root), "train.epochs=1", *extra])


def test_a_teacher_of_other_classes_or_channels_is_refused(tmp_path):
    other = teacher(tmp_path / "other", ("cat", "dog"))
    with pytest.raises(ConfigError, match=r"detects \['cat', 'dog'\], the student .*same classes"):
        teacher_arguments(student(tmp_path, f"train.distill.teacher={other}"))
    grey = teacher(tmp_path / "grey", tuple(CLASSES), channels=1)
    with pytest.raises(ConfigError, match=r"reads 1 channel\(s\), the student 3 \(sensor.channels\)"):
        teacher_arguments(student(tmp_path, f"train.distill.teacher={grey}"))
    assert teacher_arguments(student(tmp_path)) == {}  # no teacher: plain training


def test_an_mlflow_uri_resolves_to_the_logged_checkpoint(tmp_path):
    weights = teacher(tmp_path / "logged", tuple(CLASSES))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("teachers")  # not the experiment id an earlier test left active in mlflow
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(weights), artifact_path="train/weights")
    cfg = student(tmp_path, f"train.distill.teacher=runs:/{run.info.run_id}/train/weights")
    resolved = Path(teacher_arguments(cfg)["distill_model"])
    assert resolved.name == "best.pt" and file_sha256(resolved) == file_sha256(weights)
    assert teacher_lineage(cfg)["pipeline.distill.sha256"] == file_sha256(weights)


def test_the_student_trains_against_the_teacher_and_the_run_records_it(tmp_path):
    weights = teacher(tmp_path / "teacher", tuple(CLASSES))
    cfg = student(tmp_path, f"train.distill.teacher={weights}")
    prepare(cfg)
    result = train.run(cfg)
    assert result.epochs_completed == 1
    args = (Path(cfg.paths.train) / "args.yaml").read_text()
    assert f"distill_model: {weights}" in args
    tags = MlflowClient(cfg.track.tracking_uri).get_run(result.run_id).data.tags
    assert tags["pipeline.distill.teacher"] == str(weights)
    assert tags["pipeline.distill.sha256"] == file_sha256(weights)
    assert read_json(Path(cfg.paths.train_report) / "run.json")["run_id"] == result.run_id
