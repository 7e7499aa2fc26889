"""Export stage: real Ultralytics exports of a tiny trained model, checked against PyTorch on real images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.deploy import export
from pipeline.model import parity
from pipeline.model.inference import open_runner
from pipeline.model.info import file_sha256, read_model_info
from pipeline.model.scoring import load_images, read_split
from tests._tiny import IMGSZ


@pytest.fixture(scope="module")
def reference(project):
    """The PyTorch model and the validation images every parity check in this module uses."""
    weights = project.train / "weights" / "best.pt"
    info = read_model_info(weights)
    samples = read_split(project.prepared, "val", 16)
    return open_runner(weights, threads=2), info, samples, load_images(samples, info.channels)


def other_model(folder: Path, classes: int) -> Path:
    """A randomly initialised YOLO11n checkpoint with `classes` classes (never trained)."""
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = YOLO("yolo11n.yaml")
    model.model = DetectionModel("yolo11n.yaml", nc=classes, verbose=False)
    model.model.names = {i: f"c{i}" for i in range(classes)}
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.pt")
    return folder / "model.pt"


def perturbed_model(weights: Path, folder: Path) -> Path:
    """The trained model with noise added to every weight: same shapes, different numbers."""
    import torch

    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(weights))
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in model.model.parameters():
            tensor.add_(0.2 * torch.randn_like(tensor))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.pt")
    return folder / "model.pt"


def onnx_of(weights: Path, imgsz: int) -> Path:
    return export.export_format(
        weights, {"format": "onnx", "imgsz": imgsz, "device": "cpu", "verbose": False}
    )


def check(reference, candidate_path: Path) -> parity.Parity:
    runner, info, samples, images = reference
    tolerance = parity.Tolerance(0.01, 0.005, "export.max_abs_diff=0.01, export.max_map_drop=0.005")
    return parity.check(runner, open_runner(candidate_path, threads=2), samples, images, info, tolerance)


def test_stage_exports_every_format_with_metadata_and_parity(project, tmp_path):
    params = project.params(tmp_path, "export.formats=[onnx,torchscript,openvino]")
    assert export.main(["--params", str(params)]) == 0

    models = tmp_path / "export" / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "model.onnx",
        "model.onnx.json",
        "model.torchscript",
        "model.torchscript.json",
        "model_openvino_model",
        "model_openvino_model.json",
    ]
    meta = read_json(models / "model.onnx.json")
    assert meta["names"] == ["person", "animal", "vehicle"]
    assert (meta["imgsz"], meta["channels"], meta["batch"], meta["opset"]) == (IMGSZ, 3, 1, 17)
    assert meta["sha256"] == file_sha256(project.train / "weights" / "best.pt")
    assert meta["sha256_file"] == file_sha256(models / "model.onnx")
    assert {"ultralytics", "torch", "onnx", "onnxruntime", "openvino"} <= set(meta["versions"])
    assert read_json(models / "model.torchscript.json")["opset"] is None

    report = read_json(tmp_path / "export" / "parity.json")
    assert report["passed"] is True
    for fmt in ("onnx", "torchscript", "openvino"):
        entry = report["formats"][fmt]
        assert entry["images"] == 4 and entry["max_abs_diff"] <= 0.01
        assert abs(entry["map_candidate"] - entry["map_reference"]) <= 0.005

    import mlflow

    run = mlflow.MlflowClient(project.tracking_uri).get_run(
        read_json(project.train_report / "run.json")["run_id"]
    )
    assert run.data.metrics["export/onnx/passed"] == 1.0
    assert "export/openvino/max_abs_diff" in run.data.metrics


def test_a_failed_check_fails_the_stage_with_both_numbers(project, tmp_path):
    # ONNX Runtime and PyTorch never agree to the last bit, so a zero tolerance must fail the check.
    params = project.params(tmp_path, "export.formats=[onnx]", "export.max_abs_diff=0")
    with pytest.raises(export.ParityError) as failure:
        export.main(["--params", str(params)])

    message = str(failure.value)
    assert "onnx (model.onnx): raw output differs from pytorch by up to" in message
    assert "tolerance 0.0" in message and "export.max_abs_diff=0.0" in message
    report = read_json(tmp_path / "export" / "parity.json")
    assert report["passed"] is False and report["formats"]["onnx"]["max_abs_diff"] > 0
    assert not (tmp_path / "export" / "models" / "model.onnx").exists()  # a failed export never counts


def test_wrong_input_size_fails_parity(reference, project, tmp_path):
    staged = tmp_path / "best.pt"
    shutil.copy(project.train / "weights" / "best.pt", staged)
    result = check(reference, onnx_of(staged, imgsz=32))

    assert not result.passed
    assert "takes input 3x32x32 but the model was trained at 3x64x64" in result.failure
    assert "imgsz=64" in result.failure


def test_wrong_class_count_fails_parity(reference, tmp_path):
    result = check(reference, onnx_of(other_model(tmp_path, classes=2), imgsz=IMGSZ))

    assert not result.passed
    assert "output shape (1, 6, 84) differs from the reference's (1, 7, 84)" in result.failure
    assert "2 classes instead of 3" in result.failure


def test_different_weights_fail_on_raw_output(reference, project, tmp_path):
    broken = perturbed_model(project.train / "weights" / "best.pt", tmp_path)
    result = check(reference, onnx_of(broken, imgsz=IMGSZ))

    assert not result.passed and result.max_abs_diff > 0.01
    assert (
        f"raw output differs from pytorch by up to {result.max_abs_diff:.6f} (tolerance 0.01"
        in result.failure
    )


def test_dynamic_onnx_takes_any_batch_and_passes(project, tmp_path):
    params = project.params(tmp_path, "export.formats=[onnx]", "export.dynamic=true")
    assert export.main(["--params", str(params)]) == 0

    onnx = tmp_path / "export" / "models" / "model.onnx"
    assert read_json(onnx.with_name("model.onnx.json"))["batch"] == "dynamic"
    runner = open_runner(onnx, threads=2)
    assert runner.batch is None and runner.input_shape == (None, 3, None, None)


def test_judge_names_both_map_numbers():
    tolerance = parity.Tolerance(0.01, 0.005, "export.max_map_drop=0.005")
    message = parity.judge("pytorch", 16, 0.001, expected=0.4312, produced=0.4120, tolerance=tolerance)

    assert message == (
        "mAP50-95 0.4120 vs pytorch 0.4312 on 16 validation images differs by 0.0192 (tolerance 0.005) "
        "[export.max_map_drop=0.005]"
    )
    assert parity.judge("pytorch", 16, 0.001, 0.4312, 0.4300, tolerance) is None


def test_unknown_format_is_refused(project, tmp_path):
    with pytest.raises(ConfigError, match=r"export.formats='tflite' is invalid: choose from \('onnx'"):
        project.config(tmp_path, "export.formats=[onnx,tflite]")
