"""Stage 4, evaluate: the trained model on the held-out split, in numbers people can act on.

Ultralytics' validator runs once on the test split (val when the dataset has none; the report
says which) and gives precision, recall, mAP50, mAP50-95, per-class AP with instance counts and
the per-class precision/recall/F1 curves. Its predictions (predictions.json) are then scored by
faster-coco-eval for AP by object size, and matched to the labels by Ultralytics' confusion matrix
at the per-class thresholds chosen here (best F1, or the lowest confidence reaching
`evaluate.target_precision`), i.e. the confusions a deployment using thresholds.json would see.
The report warns in plain words about weak localisation, weak classes and swapped classes. The
model is registered in the MLflow Model Registry as a new version with alias `candidate`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import tracking
from pipeline.core.artifacts import AP_PER_CLASS_PLOT, CURVE_PLOTS, Artifacts
from pipeline.core.cli import stage_parser
from pipeline.core.config import EvaluateConfig, PipelineConfig, load_params
from pipeline.core.faults import kill_if_armed
from pipeline.core.io import read_json, write_json, write_text
from pipeline.core.yolo import import_ultralytics
from pipeline.evaluate.caveats import all_warnings
from pipeline.evaluate.compare import image_counts
from pipeline.evaluate.report import render
from pipeline.evaluate.results import (
    Evaluation,
    Threshold,
    as_float,
    class_metrics,
    details_json,
    flat_metrics,
    fmt,
    metrics_json,
    thresholds,
    thresholds_json,
)
from pipeline.evaluate.slices import image_attributes, slice_metrics
from pipeline.model.info import ModelInfo, read_model_info, require_weights
from pipeline.model.scoring import (
    CocoSummary,
    Sample,
    coco_ground_truth,
    coco_summary,
    read_split,
    renumbered,
    resolve_split,
)

ALIAS = "candidate"
# Tag on a version registered before its outputs were written: a rerun after a kill reuses that version
# instead of registering the same run again; main removes it once write_outputs has put them on disk.
PENDING_TAG = "evaluate.outputs_pending"


# ---- predictions.json: AP by size and the confusion matrix -----------------------------------------


def predictions_by_image(predictions: list[dict[str, Any]], samples: list[Sample]) -> list[list[dict]]:
    """The validator's COCO predictions grouped in sample order (it keys them by file name)."""
    index = {s.image.name: i for i, s in enumerate(samples)}
    grouped: list[list[dict]] = [[] for _ in samples]
    for p in predictions:
        grouped[index[p["file_name"]]].append(p)
    return grouped


def confusion(
    grouped: list[list[dict]],
    labelled: list[list[dict]],
    names: tuple[str, ...],
    cuts: tuple[Threshold, ...],
) -> Any:
    """Ultralytics' confusion matrix of the predictions kept by each class's threshold.
    `grouped` and `labelled`: predictions and ground truth per image, in the same order."""
    import torch
    from ultralytics.utils.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(names=dict(enumerate(names)))
    for found, labels in zip(grouped, labelled, strict=True):
        kept = kept_predictions(found, cuts)
        matrix.process_batch(as_tensors(kept, "score", torch), as_tensors(labels, None, torch), conf=0.0)
    return matrix


def truth_by_image(ground_truth: dict[str, Any], images: int) -> list[list[dict]]:
    """The COCO ground truth's annotations per image (image ids are 1-based sample positions)."""
    truth: list[list[dict]] = [[] for _ in range(images)]
    for a in ground_truth["annotations"]:
        truth[a["image_id"] - 1].append(a)
    return truth


def kept_predictions(found: list[dict], cuts: tuple[Threshold, ...]) -> list[dict]:
    """The predictions a deployment keeps: each class's own confidence threshold."""
    return [p for p in found if p["score"] >= cuts[p["category_id"] - 1].conf]


def deployment_counts(
    grouped: list[list[dict]], labelled: list[list[dict]], cuts: tuple[Threshold, ...], samples: list[Sample]
) -> tuple[tuple[str, int, int, int], ...]:
    """Per image (name, TP, FP, FN) at the deployment thresholds, for paired comparisons."""
    counts = []
    for sample, found, labels in zip(samples, grouped, labelled, strict=True):
        kept = kept_predictions(found, cuts)
        predicted = np.array([[*xyxy(p["bbox"]), p["score"], p["category_id"] - 1] for p in kept])
        boxes = np.array([[*xyxy(a["bbox"]), a["category_id"] - 1] for a in labels])
        tp, fp, fn = image_counts(predicted.reshape(-1, 6), boxes.reshape(-1, 5))
        counts.append((sample.image.name, tp, fp, fn))
    return tuple(counts)


def xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def as_tensors(items: list[dict], score_key: str | None, torch) -> dict[str, Any]:
    boxes = torch.tensor([xyxy(i["bbox"]) for i in items]).reshape(-1, 4)
    found = {"cls": torch.tensor([i["category_id"] - 1 for i in items], dtype=torch.float32), "bboxes": boxes}
    if score_key:
        found["conf"] = torch.tensor([i[score_key] for i in items], dtype=torch.float32)
    return found


# ---- the stage ------------------------------------------------------------------------------------


def validate(cfg: PipelineConfig, weights: Path, split: str, info: ModelInfo, save_dir: Path) -> Any:
    """Ultralytics' validator with JSON predictions and curve plots written to `save_dir`."""
    import_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(weights)).val(
        data=str(Artifacts.of(cfg).data_yaml),
        split=split,
        imgsz=info.imgsz,
        batch=cfg.evaluate.batch,
        conf=cfg.evaluate.conf,
        iou=cfg.evaluate.iou,
        device=cfg.hardware.device,
        workers=cfg.hardware.workers,
        save_json=True,
        plots=True,
        project=str(save_dir.parent),
        name=save_dir.name,
        exist_ok=True,
        verbose=False,
    )


def run(cfg: PipelineConfig) -> Evaluation:
    """Evaluate best.pt; the plots go to {paths.evaluation}/plots (the validator draws them as files)."""
    weights = require_weights(Artifacts.of(cfg).best_weights)
    info = read_model_info(weights)
    split, note = resolve_split(Path(cfg.paths.prepared), cfg.evaluate.split)
    samples = read_split(Path(cfg.paths.prepared), split)
    plots = Path(cfg.paths.evaluation) / "plots"
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
        metrics = validate(cfg, weights, split, info, Path(scratch) / "val")
        kill_if_armed("evaluate_validated")
        predictions = read_json(Path(scratch) / "val" / "predictions.json")
        copy_curves(Path(scratch) / "val", plots)
    grouped = predictions_by_image(predictions, samples)
    truth = coco_ground_truth(samples, len(info.names))
    cuts = thresholds(metrics, info.names, cfg.evaluate.target_precision)
    labelled = truth_by_image(truth, len(grouped))
    matrix = confusion(grouped, labelled, info.names, cuts)
    draw_confusion(matrix, plots)
    evaluation = summarise(
        metrics, info, split, note, samples, coco_summary(truth, renumbered(grouped)), cuts
    )
    attributes = image_attributes([s.image.name for s in samples], cfg.evaluate)
    evaluation = replace(
        evaluation, slices=tuple(slice_metrics(samples, grouped, attributes, len(info.names)))
    )
    evaluation = replace(evaluation, image_counts=deployment_counts(grouped, labelled, cuts, samples))
    evaluation = with_warnings(evaluation, matrix.matrix, cfg.evaluate)
    draw_class_ap(evaluation, plots / AP_PER_CLASS_PLOT)
    return evaluation


def summarise(
    metrics: Any,
    info: ModelInfo,
    split: str,
    note: str,
    samples: list[Sample],
    coco: CocoSummary,
    cuts: tuple[Threshold, ...],
) -> Evaluation:
    box = metrics.box
    return Evaluation(
        split=split,
        split_note=note,
        images=len(samples),
        instances=int(sum(len(s.labels) for s in samples)),
        precision=as_float(box.mp),
        recall=as_float(box.mr),
        map50=as_float(box.map50),
        map50_95=as_float(box.map),
        classes=class_metrics(metrics, info.names),
        by_size={k: as_float(v) for k, v in coco.by_size.items()},
        coco_map50_95=as_float(coco.map50_95),
        thresholds=cuts,
        confusion=(),
        warnings=(),
    )


def with_warnings(e: Evaluation, matrix: np.ndarray, cfg: EvaluateConfig) -> Evaluation:
    counts = tuple(tuple(int(v) for v in row) for row in matrix)
    return replace(e, confusion=counts, warnings=all_warnings(e, matrix, cfg))


def copy_curves(val_dir: Path, plots: Path) -> None:
    plots.mkdir(parents=True, exist_ok=True)
    for source, target in CURVE_PLOTS.items():
        if (val_dir / source).exists():
            shutil.copy2(val_dir / source, plots / target)


def draw_confusion(matrix: Any, plots: Path) -> None:
    """Counts and column-normalised (share of each true class), background included."""
    for normalize in (False, True):
        matrix.plot(normalize=normalize, save_dir=plots)


def draw_class_ap(e: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in e.classes]
    figure, axis = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.5))
    axis.bar(np.arange(len(names)) - 0.2, [c.ap50 or 0 for c in e.classes], 0.4, label="AP50")
    axis.bar(np.arange(len(names)) + 0.2, [c.ap50_95 or 0 for c in e.classes], 0.4, label="AP50-95")
    axis.set(xticks=range(len(names)), ylim=(0, 1), ylabel="AP", title=f"AP per class ({e.split} split)")
    axis.set_xticklabels(names, rotation=30, ha="right")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def register(cfg: PipelineConfig, weights: Path, run_id: str, metrics: dict[str, float]) -> str:
    """Log the weights to the run and register that artifact as a new version aliased `candidate`."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.log_artifact(str(weights), artifact_path="model")
    source = mlflow.get_artifact_uri(f"model/{weights.name}")
    client, name = MlflowClient(tracking.tracking_uri(cfg)), cfg.track.register_model
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="YOLO detector trained by the pipeline")
    tags = {k: f"{v:.5f}" for k, v in metrics.items()}
    version = pending_version(client, name, run_id)
    if version is None:
        version = client.create_model_version(name, source, run_id=run_id, tags={**tags, PENDING_TAG: "true"})
    else:  # a killed evaluation of this run registered it: refresh its figures, keep its number
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return str(version.version)


def pending_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version an evaluation of `run_id` registered and was killed before writing its outputs."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    pending = [v for v in found if PENDING_TAG in v.tags]
    return max(pending, key=lambda v: int(v.version)) if pending else None


def write_outputs(cfg: PipelineConfig, e: Evaluation, run_id: str, version: str) -> Path:
    files = Artifacts.of(cfg)
    write_json(files.evaluation_metrics, metrics_json(e))
    write_json(files.evaluation_details, details_json(e))
    write_json(files.thresholds, thresholds_json(e, cfg.evaluate.target_precision))
    write_text(files.evaluation_report, render(e, cfg.track.register_model, run_id, version, ALIAS))
    return files.evaluation


def main(argv: list[str], prog: str = "evaluate", command: str = "evaluate") -> int:
    import mlflow
    from mlflow import MlflowClient

    parser = stage_parser(prog, "Evaluate best.pt on the held-out split; write metrics, thresholds, report.")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    e = run(cfg)
    weights = Artifacts.of(cfg).best_weights
    with tracking.stage_run(cfg) as active:
        run_id = active.info.run_id
        version = register(cfg, weights, run_id, {k: v for k, v in flat_metrics(e).items() if "/" not in k})
        kill_if_armed("evaluate_registered")
        out = write_outputs(cfg, e, run_id, version)
        MlflowClient(tracking.tracking_uri(cfg)).delete_model_version_tag(
            cfg.track.register_model, version, PENDING_TAG
        )
        tracking.log_metrics(flat_metrics(e), prefix="eval/")
        mlflow.set_tags(tracking.scrubbed({"eval.split": e.split, "eval.warnings": len(e.warnings)}))
        mlflow.log_artifacts(str(out), artifact_path="evaluate")
    print(f"{e.split}: mAP50 {fmt(e.map50)}, mAP50-95 {fmt(e.map50_95)}; {len(e.warnings)} warning(s)")
    report = Artifacts.of(cfg).evaluation_report
    print(f"registered {cfg.track.register_model} version {version} as '{ALIAS}'; report {report}")
    return 0
