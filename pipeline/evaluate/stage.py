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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import Artifacts
from pipeline.core.cli import stage_parser
from pipeline.core.config import EvaluateConfig, PipelineConfig, load_params
from pipeline.core.faults import kill_if_armed
from pipeline.core.io import read_json, write_json, write_text
from pipeline.evaluate.report import render, true_by_predicted
from pipeline.evaluate.slices import SliceMetrics, image_attributes, low_slice_warnings, slice_metrics
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
DEFAULT_CONF = 0.25  # for a class the split has no instance of: Ultralytics' prediction default
CURVE_PLOTS = {"BoxPR_curve.png": "pr_curve.png", "BoxF1_curve.png": "f1_curve.png"}
CURVE_PLOTS |= {"BoxP_curve.png": "precision_curve.png", "BoxR_curve.png": "recall_curve.png"}


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    instances: int
    precision: float | None  # None: the split has no instance of this class
    recall: float | None
    ap50: float | None
    ap50_95: float | None


@dataclass(frozen=True)
class Threshold:
    name: str
    conf: float
    precision: float | None
    recall: float | None
    f1: float | None
    rule: str


@dataclass(frozen=True)
class Evaluation:
    split: str
    split_note: str
    images: int
    instances: int
    precision: float
    recall: float
    map50: float
    map50_95: float
    classes: tuple[ClassMetrics, ...]
    by_size: dict[str, float | None]
    coco_map50_95: float
    thresholds: tuple[Threshold, ...]
    confusion: tuple[tuple[int, ...], ...]  # [predicted][true], last row/column = background
    warnings: tuple[str, ...]
    slices: tuple[SliceMetrics, ...] = ()  # evaluate.slices / slices_csv; empty when neither is set


# ---- per-class numbers from the validator ----------------------------------------------------------


def class_metrics(metrics: Any, names: tuple[str, ...]) -> tuple[ClassMetrics, ...]:
    """Per-class rows; Ultralytics lists only classes with instances in `ap_class_index`."""
    box, rows = metrics.box, []
    position = {int(c): i for i, c in enumerate(box.ap_class_index)}
    for cls, name in enumerate(names):
        i = position.get(cls)
        values = (None,) * 4 if i is None else (box.p[i], box.r[i], box.ap50[i], box.ap[i])
        rows.append(ClassMetrics(name, int(metrics.nt_per_class[cls]), *map(as_float, values)))
    return tuple(rows)


def as_float(value: Any) -> float | None:
    return None if value is None else round(float(value), 5)


def class_threshold(name: str, i: int, box: Any, target: float | None) -> Threshold:
    """Best-F1 confidence on the class's curves, or the lowest one reaching the target precision."""
    f1, precision, recall, conf = box.f1_curve[i], box.p_curve[i], box.r_curve[i], box.px
    reached = np.flatnonzero(precision >= target) if target is not None else np.array([], dtype=int)
    if not f1.any():
        return Threshold(name, DEFAULT_CONF, 0.0, 0.0, 0.0, f"no correct detection: default {DEFAULT_CONF}")
    if reached.size:
        j, rule = int(reached[0]), f"lowest confidence with precision >= {target}"
    else:
        j = int(np.argmax(f1))
        rule = "best F1" if target is None else f"best F1 (precision {target} never reached)"
    return Threshold(
        name, as_float(conf[j]), as_float(precision[j]), as_float(recall[j]), as_float(f1[j]), rule
    )


def thresholds(metrics: Any, names: tuple[str, ...], target: float | None) -> tuple[Threshold, ...]:
    position = {int(c): i for i, c in enumerate(metrics.box.ap_class_index)}
    return tuple(
        class_threshold(name, position[cls], metrics.box, target)
        if cls in position
        else Threshold(
            name, DEFAULT_CONF, None, None, None, f"no instances in the split: default {DEFAULT_CONF}"
        )
        for cls, name in enumerate(names)
    )


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
    ground_truth: dict[str, Any],
    names: tuple[str, ...],
    cuts: tuple[Threshold, ...],
) -> Any:
    """Ultralytics' confusion matrix of the predictions kept by each class's threshold."""
    import torch
    from ultralytics.utils.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(names=dict(enumerate(names)))
    truth = [[] for _ in grouped]
    for a in ground_truth["annotations"]:
        truth[a["image_id"] - 1].append(a)
    for found, labels in zip(grouped, truth, strict=True):
        kept = [p for p in found if p["score"] >= cuts[p["category_id"] - 1].conf]
        matrix.process_batch(as_tensors(kept, "score", torch), as_tensors(labels, None, torch), conf=0.0)
    return matrix


def as_tensors(items: list[dict], score_key: str | None, torch) -> dict[str, Any]:
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (i["bbox"] for i in items)]).reshape(-1, 4)
    found = {"cls": torch.tensor([i["category_id"] - 1 for i in items], dtype=torch.float32), "bboxes": boxes}
    if score_key:
        found["conf"] = torch.tensor([i[score_key] for i in items], dtype=torch.float32)
    return found


# ---- warnings in plain words -----------------------------------------------------------------------


def localisation_warning(map50: float, map50_95: float, ratio: float) -> list[str]:
    if map50 <= 0 or map50_95 >= ratio * map50:
        return []
    return [
        f"Weak localisation: mAP50-95 ({map50_95:.3f}) is under {ratio:.0%} of mAP50 ({map50:.3f}). "
        "The model finds the objects but its boxes fit them loosely. Check that labels are tight, then "
        "try a higher image size or more epochs."
    ]


def weak_class_warnings(classes: tuple[ClassMetrics, ...], ratio: float) -> list[str]:
    scored = [c for c in classes if c.ap50_95 is not None]
    mean = sum(c.ap50_95 for c in scored) / len(scored) if scored else 0.0
    return [
        f"Weak class '{c.name}': AP50-95 {c.ap50_95:.3f} is under {ratio:.0%} of the mean over classes "
        f"({mean:.3f}), on {c.instances} instances. More (and more varied) examples of it usually help most."
        for c in scored
        if mean > 0 and c.ap50_95 < ratio * mean
    ]


def swap_warnings(matrix: np.ndarray, classes: tuple[ClassMetrics, ...], fraction: float) -> list[str]:
    """Pairs whose objects are taken for each other (matrix is [predicted, true]) in `fraction` of them."""
    found = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            swapped = int(matrix[j, i] + matrix[i, j])
            total = classes[i].instances + classes[j].instances
            if swapped and total and swapped >= fraction * total:
                a, b = classes[i].name, classes[j].name
                found.append(
                    f"Classes '{a}' and '{b}' are mistaken for each other: {swapped} of their {total} "
                    f"objects were given the other's label ({int(matrix[j, i])} '{a}' as '{b}', "
                    f"{int(matrix[i, j])} the other way). Add examples that show what tells them apart, "
                    "or consider merging them."
                )
    return found


def selection_warning(split: str) -> list[str]:
    """val chose best.pt (and early stopping watched it): scores on it flatter the model."""
    if split != "val":
        return []
    return [
        "Optimistic figures: evaluated on the val split, which training used to pick best.pt and to stop "
        "early. Give the dataset a test split (data.split.test > 0, or the source's own) for an unbiased "
        "estimate."
    ]


def all_warnings(e: Evaluation, matrix: np.ndarray, cfg: EvaluateConfig) -> tuple[str, ...]:
    return tuple(
        selection_warning(e.split)
        + localisation_warning(e.map50, e.map50_95, cfg.localisation_ratio)
        + weak_class_warnings(e.classes, cfg.weak_class_ratio)
        + swap_warnings(matrix, e.classes, cfg.swap_fraction)
        + low_slice_warnings(e.slices, cfg.slice_ratio, cfg.slice_min_instances)
    )


# ---- the stage ------------------------------------------------------------------------------------


def validate(cfg: PipelineConfig, weights: Path, split: str, info: ModelInfo, save_dir: Path) -> Any:
    """Ultralytics' validator with JSON predictions and curve plots written to `save_dir`."""
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(weights)).val(
        data=str(Path(cfg.paths.prepared) / "data.yaml"),
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
    matrix = confusion(grouped, truth, info.names, cuts)
    draw_confusion(matrix, plots)
    evaluation = summarise(
        metrics, info, split, note, samples, coco_summary(truth, renumbered(grouped)), cuts
    )
    attributes = image_attributes([s.image.name for s in samples], cfg.evaluate)
    evaluation = replace(
        evaluation, slices=tuple(slice_metrics(samples, grouped, attributes, len(info.names)))
    )
    evaluation = with_warnings(evaluation, matrix.matrix, cfg.evaluate)
    draw_class_ap(evaluation, plots / "ap_per_class.png")
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


# ---- outputs --------------------------------------------------------------------------------------


def metrics_json(e: Evaluation) -> dict[str, Any]:
    """The DVC metrics file: headline figures only, so `dvc exp show` fits a terminal."""
    return {"precision": e.precision, "recall": e.recall, "mAP50": e.map50, "mAP50-95": e.map50_95}


def details_json(e: Evaluation) -> dict[str, Any]:
    """Everything behind the headline: per size, per class and the confusion matrix."""
    names = [c.name for c in e.classes]
    return {
        "split": e.split,
        "images": e.images,
        "instances": e.instances,
        "coco_mAP50-95": e.coco_map50_95,
        **{f"AP_{size}": value for size, value in e.by_size.items()},
        "per_class": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in e.classes},
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "labels": [*names, "background"],
            "counts": true_by_predicted(e.confusion),
        },
        "warnings": len(e.warnings),
        "slices": [s.as_dict() for s in e.slices],
    }


def thresholds_json(e: Evaluation, target: float | None) -> dict[str, Any]:
    """What the deployment side reads: a confidence per class, by id and name."""
    return {
        "rule": "best F1" if target is None else f"lowest confidence with precision >= {target}",
        "split": e.split,
        "classes": {
            str(i): {
                "name": t.name,
                "conf": t.conf,
                "precision": t.precision,
                "recall": t.recall,
                "f1": t.f1,
                "rule": t.rule,
            }
            for i, t in enumerate(e.thresholds)
        },
    }


def flat_metrics(e: Evaluation) -> dict[str, float]:
    values: dict[str, Any] = {"precision": e.precision, "recall": e.recall, "mAP50": e.map50}
    values |= {"mAP50-95": e.map50_95, **{f"AP_{k}": v for k, v in e.by_size.items()}}
    for c in e.classes:
        values |= {f"{c.name}/AP50": c.ap50, f"{c.name}/AP50-95": c.ap50_95}
    return {k: v for k, v in values.items() if v is not None}


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def register(cfg: PipelineConfig, weights: Path, run_id: str, metrics: dict[str, float]) -> str:
    """Log the weights to the run and register that artifact as a new version aliased `candidate`."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.core import tracking

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

    from pipeline.core import tracking

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
