"""Evaluate stage: Ultralytics validation of a tiny model, faster-coco-eval, MLflow registry on SQLite."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.io import read_json
from pipeline.evaluate import caveats, results
from pipeline.evaluate import stage as evaluate
from pipeline.model.inference import Detections
from pipeline.model.scoring import Sample, coco_ground_truth, coco_predictions, coco_summary
from tests._tiny import write_dataset

CLASSES = ("person", "animal", "vehicle")


def registry(project):
    from mlflow import MlflowClient

    return MlflowClient(project.tracking_uri)


def test_stage_writes_metrics_thresholds_report_and_registers_a_candidate(project, tmp_path):
    assert evaluate.main(["--params", str(project.params(tmp_path))]) == 0
    out = tmp_path / "evaluation"

    metrics = read_json(out / "metrics.json")  # DVC metrics: the headline only
    assert set(metrics) == {"precision", "recall", "mAP50", "mAP50-95"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    details = read_json(out / "details.json")
    assert details["split"] == "test" and (details["images"], details["instances"]) == (4, 20)
    assert 0.0 <= details["AP_small"] <= 1.0
    assert details["AP_large"] is None  # no large object in 64 px frames: said, not invented
    assert list(details["per_class"]) == list(CLASSES)
    assert sum(c["instances"] for c in details["per_class"].values()) == 20
    assert {"ap50", "ap50_95", "precision", "recall"} <= set(details["per_class"]["person"])
    confusion = details["confusion_matrix"]
    assert (confusion["rows"], confusion["columns"]) == ("true class", "predicted class")
    assert confusion["labels"] == [*CLASSES, "background"]
    matrix = np.array(confusion["counts"])
    assert matrix.shape == (4, 4)
    assert matrix[:3, :].sum() == 20  # every labelled object lands in its true-class row once

    thresholds = read_json(out / "thresholds.json")
    assert [t["name"] for t in thresholds["classes"].values()] == list(CLASSES)
    assert all(0.0 < t["conf"] <= 1.0 for t in thresholds["classes"].values())

    report = (out / "report.md").read_text()
    assert "Evaluated on the test split: 4 images, 20 objects." in report
    assert "## Warnings" in report and "| person | 8 |" in report
    for plot in ("pr_curve", "f1_curve", "confusion_matrix", "confusion_matrix_normalized", "ap_per_class"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 0

    client = registry(project)
    version = client.get_model_version_by_alias("yolo-detector", "candidate")
    run_id = read_json(project.train_report / "run.json")["run_id"]
    assert version.run_id == run_id
    assert float(version.tags["mAP50-95"]) == pytest.approx(metrics["mAP50-95"], abs=1e-5)
    assert f"version {version.version}, alias `candidate`" in report
    local = client.download_artifacts(run_id, "model/best.pt", str(tmp_path))
    assert os.path.getsize(local) == (project.train / "weights" / "best.pt").stat().st_size
    run = client.get_run(run_id)
    assert "eval/mAP50-95" in run.data.metrics and run.data.tags["eval.split"] == "test"


def test_each_evaluation_registers_a_new_version_and_moves_the_alias(project, tmp_path):
    client = registry(project)
    evaluate.main(["--params", str(project.params(tmp_path / "a"))])
    first = client.get_model_version_by_alias("yolo-detector", "candidate").version
    evaluate.main(["--params", str(project.params(tmp_path / "b"))])
    second = client.get_model_version_by_alias("yolo-detector", "candidate").version
    assert int(second) == int(first) + 1


def test_falls_back_to_val_and_says_so(project, tmp_path):
    prepared = write_dataset(tmp_path / "prepared", splits=("train", "val"))
    cfg = project.config(tmp_path, f"paths.prepared={prepared}")
    result = evaluate.run(cfg)
    assert result.split == "val"
    assert result.split_note == "the val split, because the dataset has no test split"
    assert result.warnings[0].startswith("Optimistic figures: evaluated on the val split")
    assert not caveats.selection_warning("test")


# ---- thresholds -----------------------------------------------------------------------------------


def curves(f1, precision, recall):
    """One class's curves as Ultralytics' DetMetrics.box holds them (confidence grid 0..1)."""
    px = np.linspace(0, 1, len(f1))
    return SimpleNamespace(
        f1_curve=np.array([f1]), p_curve=np.array([precision]), r_curve=np.array([recall]), px=px
    )


def test_threshold_is_the_best_f1_confidence():
    box = curves(
        f1=[0.2, 0.6, 0.8, 0.5, 0.1], precision=[0.3, 0.6, 0.85, 0.95, 1.0], recall=[1, 0.9, 0.75, 0.3, 0.05]
    )
    threshold = results.class_threshold("person", 0, box, target=None)
    assert (threshold.conf, threshold.f1, threshold.rule) == (0.5, 0.8, "best F1")


def test_threshold_for_a_target_precision_is_the_lowest_confidence_reaching_it():
    box = curves(
        f1=[0.2, 0.6, 0.8, 0.5, 0.1], precision=[0.3, 0.6, 0.85, 0.95, 1.0], recall=[1, 0.9, 0.75, 0.3, 0.05]
    )
    threshold = results.class_threshold("person", 0, box, target=0.9)
    assert (threshold.conf, threshold.precision, threshold.recall) == (0.75, 0.95, 0.3)
    unreachable = results.class_threshold("person", 0, curves([0.1, 0.3], [0.2, 0.5], [0.9, 0.4]), target=0.9)
    assert unreachable.conf == 1.0 and unreachable.rule == "best F1 (precision 0.9 never reached)"


# ---- warnings in plain words ---------------------------------------------------------------------


def classes(*rows):
    return tuple(results.ClassMetrics(name, n, 0.5, 0.5, ap50, ap) for name, n, ap50, ap in rows)


def test_localisation_warning_only_for_a_large_gap():
    assert caveats.localisation_warning(0.8, 0.3, ratio=0.5)[0].startswith(
        "Weak localisation: mAP50-95 (0.300) is under 50% of mAP50 (0.800)."
    )
    assert caveats.localisation_warning(0.8, 0.5, ratio=0.5) == []


def test_weak_class_warning_names_the_class_and_the_mean():
    rows = classes(("person", 30, 0.9, 0.6), ("animal", 25, 0.85, 0.55), ("vehicle", 4, 0.3, 0.1))
    (warning,) = caveats.weak_class_warnings(rows, ratio=0.5)
    assert warning.startswith(
        "Weak class 'vehicle': AP50-95 0.100 is under 50% of the mean over classes (0.417)"
    )


def test_swap_warning_for_classes_taken_for_each_other():
    rows = classes(("car", 100, 0.9, 0.6), ("truck", 100, 0.8, 0.5), ("bus", 100, 0.8, 0.5))
    matrix = np.zeros((4, 4))  # [predicted, true]; the guide's example: truck <-> bus confused
    matrix[2, 1], matrix[1, 2], matrix[1, 0] = 15, 10, 2
    (warning,) = caveats.swap_warnings(matrix, rows, fraction=0.1)
    assert warning.startswith(
        "Classes 'truck' and 'bus' are mistaken for each other: 25 of their 200 objects"
    )
    assert "(15 'truck' as 'bus', 10 the other way)" in warning


# ---- confusion at the thresholds, AP by size -------------------------------------------------------


def test_confusion_matrix_counts_swaps_misses_and_false_detections_at_the_thresholds(tmp_path):
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    import cv2

    cv2.imwrite(str(image), np.zeros((100, 100, 3), np.uint8))
    labels = np.array([[0, 0.2, 0.2, 0.2, 0.2], [1, 0.7, 0.7, 0.2, 0.2]], np.float32)
    truth = coco_ground_truth([Sample(image, labels)], 2)
    predicted = [
        {
            "file_name": "a.png",
            "category_id": 2,
            "bbox": [10, 10, 20, 20],
            "score": 0.9,
        },  # person called animal
        {"file_name": "a.png", "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.8},  # a false person
        {
            "file_name": "a.png",
            "category_id": 2,
            "bbox": [60, 60, 20, 20],
            "score": 0.3,
        },  # below animal's 0.5
    ]
    cuts = tuple(results.Threshold(n, 0.5, None, None, None, "test") for n in ("person", "animal"))
    labelled = evaluate.truth_by_image(truth, 1)
    matrix = evaluate.confusion([predicted], labelled, ("person", "animal"), cuts).matrix
    assert matrix.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]  # [predicted, true], background last


def test_ap_by_size_comes_from_faster_coco_eval(tmp_path):
    import cv2

    image = tmp_path / "b.png"
    cv2.imwrite(str(image), np.zeros((400, 400, 3), np.uint8))
    labels = np.array([[0, 0.1, 0.1, 0.05, 0.05], [0, 0.5, 0.5, 0.5, 0.5]], np.float32)  # 20 px and 200 px
    truth = coco_ground_truth([Sample(image, labels)], 1)
    found = Detections(np.array([[30.0, 30, 50, 50]]), np.array([0.9]), np.array([0]))  # only the small one
    summary = coco_summary(truth, coco_predictions([found]))
    assert summary.by_size == {"small": 1.0, "medium": None, "large": 0.0}
    assert summary.map50_95 == pytest.approx(51 / 101)  # recall 0.5 reaches 51 of COCO's 101 recall points


def test_prepared_dataset_without_labels_dir_is_read_as_empty(tmp_path):
    prepared = write_dataset(tmp_path / "p", splits=("val",))
    for label in (prepared / "labels" / "val").glob("*.txt"):
        label.unlink()
    from pipeline.model.scoring import read_split

    assert all(len(s.labels) == 0 for s in read_split(Path(prepared), "val"))
