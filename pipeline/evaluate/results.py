"""What an evaluation is: per-class numbers and thresholds from Ultralytics' validator, and the JSON
files they are written as (metrics.json holds the headline, details.json the rest)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.evaluate.report import true_by_predicted
from pipeline.evaluate.slices import SliceMetrics

DEFAULT_CONF = 0.25  # for a class the split has no instance of: Ultralytics' prediction default


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
    # per image: (file name, TP, FP, FN) of what a deployment keeps (each class's threshold), what a
    # paired bootstrap against another model resamples (pipeline.evaluate.compare)
    image_counts: tuple[tuple[str, int, int, int], ...] = ()


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
