"""`python -m pipeline audit`: likely label errors, found by the trained model and cleanlab's ObjectLab.

The model predicts on a split it did not train on (val by default); cleanlab's object-detection
module compares those predictions with the labels and scores every box: an **overlooked** object
(a confident prediction no label covers), a **swapped** class (a confident prediction of another
class on a label box), a **badly located** box (the same class predicted at a different place).
cleanlab has no score for a **spurious** label (a box on nothing), so this module adds one: the
highest confidence of any prediction overlapping the box. Every score is a label quality in [0, 1]:
low means the label is probably wrong; the list is ranked lowest first, spurious labels last: unless
the model finds nearly every object, "the model sees nothing there" is mostly the model's own miss,
which is weaker evidence than a confident prediction contradicting a label.

Outputs in `reports/audit/`: issues.json (the ranked list) and index.html (the review page, whose
accept/reject buttons save corrections.json for `prepare` to apply; see pipeline/data/corrections.py).
The train split is audited by out-of-fold models (`--folds K`, pipeline/ops/audit_folds.py), which
call `score` per fold and `write_outputs` on the merged ranking.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.core import tracking
from pipeline.core.artifacts import CORRECTIONS_FILE, Artifacts, AuditFiles
from pipeline.core.boxes import iou_matrix
from pipeline.core.cli import stage_parser
from pipeline.core.config import load_params
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_json
from pipeline.evaluate.review_page import write_review_page
from pipeline.model.images import load_image
from pipeline.model.inference import PREDICT_CHUNK, Detections, open_runner, predict
from pipeline.model.info import read_model_info, require_weights
from pipeline.model.scoring import Sample, image_shape, read_split

KINDS = ("overlooked", "swapped", "badly_located", "spurious")
PREDICT_CONF = 0.01  # keep weak predictions: a spurious label is one that not even a weak box covers
PREDICT_IOU = 0.7
MAX_SCORE = 0.5  # report boxes whose label quality is below this
SPURIOUS_IOU = 0.3  # a prediction this close to a label box counts as "the model sees something there"
# A prediction this sure testifies to an overlooked or swapped box. cleanlab's default is 0.95, made
# for calibrated classifier probabilities; a YOLO detector's box confidences seldom reach it, and on
# scripts/benchmark_audit.py (2 models, 5 plantings each) 0.95 found 0.24-0.27 of the planted errors
# in the top N, 0.7 0.43-0.55, 0.5 0.62-0.68: more likely right than wrong is the project's default.
HIGH_CONFIDENCE = 0.5
LOW_CONFIDENCE = 0.5  # cleanlab's default: weaker predictions say nothing about a labelled box


@dataclass(frozen=True)
class ImageLabels:
    image: str
    classes: np.ndarray  # (N,) int
    boxes: np.ndarray  # (N, 4) x1 y1 x2 y2 pixels


@dataclass(frozen=True)
class Issue:
    image: str
    kind: str
    score: float  # label quality in [0, 1]: lower is more likely wrong
    image_quality: float  # cleanlab's score for the whole image
    label_index: int | None  # row of the image's label file; None for an overlooked object
    label_class: int | None
    label_box: list[float] | None  # x1 y1 x2 y2 pixels
    predicted_class: int | None  # None for a spurious label
    predicted_box: list[float] | None
    confidence: float | None
    fold: int | None = None  # --folds K: the out-of-fold model that scored it (trained without its fold)


# ---- cleanlab's formats ----------------------------------------------------------------------------


def cleanlab_labels(labels: Sequence[ImageLabels]) -> list[dict]:
    return [
        {
            "bboxes": np.asarray(item.boxes, dtype=np.float32).reshape(-1, 4),
            "labels": item.classes.astype(int),
        }
        for item in labels
    ]


def cleanlab_predictions(detections: Sequence[Detections], num_classes: int) -> list[list[np.ndarray]]:
    """One (M, 5) array per class (x1 y1 x2 y2 confidence), as cleanlab takes detector output."""
    return [
        [
            np.hstack([d.boxes[d.classes == k], d.scores[d.classes == k, None]])
            .astype(np.float32)
            .reshape(-1, 5)
            for k in range(num_classes)
        ]
        for d in detections
    ]


# ---- ranking ---------------------------------------------------------------------------------------


def find_issues(
    labels: Sequence[ImageLabels],
    detections: Sequence[Detections],
    num_classes: int,
    max_score: float = MAX_SCORE,
    high_confidence: float = HIGH_CONFIDENCE,
    low_confidence: float = LOW_CONFIDENCE,
) -> list[Issue]:
    """Every box whose label quality is under `max_score`, worst first (spurious labels last)."""
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
        get_label_quality_scores,
    )

    detections = [in_class_order(d) for d in detections]  # overlooked scores index cleanlab's order
    given, predicted = cleanlab_labels(labels), cleanlab_predictions(detections, num_classes)
    per_box = {
        "overlooked": compute_overlooked_box_scores(
            labels=given, predictions=predicted, high_probability_threshold=high_confidence
        ),
        "swapped": compute_swap_box_scores(
            labels=given, predictions=predicted, high_probability_threshold=high_confidence
        ),
        "badly_located": compute_badloc_box_scores(
            labels=given, predictions=predicted, low_probability_threshold=low_confidence
        ),
    }
    image_quality = get_label_quality_scores(given, predicted, verbose=False)
    issues = []
    for i, (item, found) in enumerate(zip(labels, detections, strict=True)):
        scores = {kind: per_box[kind][i] for kind in per_box} | {"spurious": spurious_scores(item, found)}
        issues += image_issues(item, found, scores, float(image_quality[i]), max_score, low_confidence)
    return rank(issues)


def in_class_order(found: Detections) -> Detections:
    """The boxes grouped by class, as cleanlab concatenates its per-class arrays: its overlooked
    scores are one per predicted box in that order, so the index of a score is then ours too."""
    order = np.argsort(found.classes, kind="stable")
    return Detections(found.boxes[order], found.scores[order], found.classes[order])


def rank(issues: Sequence[Issue]) -> list[Issue]:
    """Worst first, spurious labels last (see the module's docstring)."""
    return sorted(issues, key=lambda issue: (issue.kind == "spurious", issue.score))


def spurious_scores(item: ImageLabels, found: Detections) -> np.ndarray:
    """Per label box: the confidence of the strongest prediction (any class) on it; 0 where none is."""
    overlap = iou_matrix(item.boxes, found.boxes) >= SPURIOUS_IOU
    return np.where(overlap, found.scores[None], 0.0).max(axis=1, initial=0.0)


def image_issues(
    item: ImageLabels,
    found: Detections,
    scores: dict[str, np.ndarray],
    quality: float,
    max_score: float,
    low_confidence: float,
) -> list[Issue]:
    """A spurious label is one no prediction above `low_confidence` vouches for."""
    ious = iou_matrix(item.boxes, found.boxes)
    issues = []
    for kind, values in scores.items():
        for j in np.flatnonzero(np.nan_to_num(values, nan=1.0) < max_score):
            if kind == "spurious" and values[j] >= low_confidence:
                continue
            issues.append(make_issue(item, found, ious, kind, int(j), float(values[j]), quality))
    return issues


def make_issue(
    item: ImageLabels, found: Detections, ious: np.ndarray, kind: str, j: int, score: float, quality: float
) -> Issue:
    """`j` is a prediction for an overlooked object and a label box for the other kinds."""
    if kind == "overlooked":
        label, pred = None, j
    else:
        label, pred = j, partner(item, found, ious, kind, j)
    box = lambda boxes, k: None if k is None else [round(float(v), 2) for v in boxes[k]]  # noqa: E731
    return Issue(
        image=item.image,
        kind=kind,
        score=round(score, 5),
        image_quality=round(quality, 5),
        label_index=label,
        label_class=None if label is None else int(item.classes[label]),
        label_box=box(item.boxes, label),
        predicted_class=None if pred is None else int(found.classes[pred]),
        predicted_box=box(found.boxes, pred),
        confidence=None if pred is None else round(float(found.scores[pred]), 4),
    )


def partner(item: ImageLabels, found: Detections, ious: np.ndarray, kind: str, j: int) -> int | None:
    """The prediction that testifies against label box `j`: the most confident overlapping one of the
    other class (swapped) or of the same class (badly located); none for a spurious label."""
    if kind == "spurious" or not len(found.scores):
        return None
    same = found.classes == item.classes[j]
    candidates = (~same if kind == "swapped" else same) & (ious[j] > 0)
    if not candidates.any():
        return None
    return int(np.argmax(np.where(candidates, found.scores * ious[j], -1.0)))


# ---- the split on disk -----------------------------------------------------------------------------


def pixel_labels(image: str, labels: np.ndarray, height: int, width: int) -> ImageLabels:
    """YOLO rows (class cx cy w h normalised) to pixel corners."""
    cls, cx, cy, w, h = (labels[:, i] for i in range(5))
    boxes = np.stack(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1
    )
    return ImageLabels(image, cls.astype(int), boxes.reshape(-1, 4))


def predict_split(weights: Path, images: Sequence[Path], threads: int) -> list[Detections]:
    info = read_model_info(weights)
    runner = open_runner(weights, threads)
    detections: list[Detections] = []
    with tqdm(total=len(images), desc="audit: predicting", unit="image") as bar:
        for start in range(0, len(images), PREDICT_CHUNK):
            part = [load_image(p, info.channels) for p in images[start : start + PREDICT_CHUNK]]
            detections += predict(runner, part, info, PREDICT_CONF, PREDICT_IOU, multi_label=False)
            bar.update(len(part))
    return detections


def score(
    weights: Path,
    samples: Sequence[Sample],
    max_score: float = MAX_SCORE,
    high_confidence: float = HIGH_CONFIDENCE,
    low_confidence: float = LOW_CONFIDENCE,
    threads: int = 1,
) -> tuple[list[ImageLabels], list[Detections], list[Issue]]:
    """One model's predictions on `samples` (images it did not train on) and the issues they reveal."""
    names = read_model_info(require_weights(weights)).names
    detections = predict_split(weights, [s.image for s in samples], threads)
    labels = [pixel_labels(str(s.image), s.labels, *image_shape(s.image)) for s in samples]
    issues = find_issues(labels, detections, len(names), max_score, high_confidence, low_confidence)
    return labels, detections, issues


def write_outputs(
    out: Path,
    issues: Sequence[Issue],
    labels: Sequence[ImageLabels],
    detections: Sequence[Detections],
    names: Sequence[str],
    note: str | None = None,
) -> None:
    """issues.json and the review page; `note` (where the scores come from) goes under its heading."""
    write_json(AuditFiles(out).issues, [asdict(issue) for issue in issues])
    write_review_page(out, issues, labels, detections, names, KINDS, note or "")


def audit(
    prepared: Path,
    weights: Path,
    split: str,
    out: Path,
    max_score: float = MAX_SCORE,
    high_confidence: float = HIGH_CONFIDENCE,
    low_confidence: float = LOW_CONFIDENCE,
    threads: int = 1,
) -> list[Issue]:
    names = read_model_info(require_weights(weights)).names
    samples = read_split(prepared, split, needed_for="audit")
    labels, detections, issues = score(weights, samples, max_score, high_confidence, low_confidence, threads)
    write_outputs(out, issues, labels, detections, names)
    return issues


def counts(issues: Sequence[Issue]) -> dict[str, int]:
    return {kind: sum(issue.kind == kind for issue in issues) for kind in KINDS}


def summary(split: str, issues: Sequence[Issue], out: Path, source: str = "") -> str:
    found = ", ".join(f"{n} {kind}" for kind, n in counts(issues).items())
    return f"{split}: {len(issues)} likely label issue(s) ({found}){source}; review {AuditFiles(out).page}"


def parser(prog: str) -> argparse.ArgumentParser:
    p = stage_parser(
        prog,
        "Rank likely label errors on a split the model did not train on: overlooked objects, swapped "
        f"classes, badly located boxes, spurious labels (cleanlab's ObjectLab scores). Writes "
        "{paths.audit}/issues.json (worst first) and index.html, a review page whose accept/reject "
        f"buttons save {CORRECTIONS_FILE} for the next prepare (data.corrections).",
    )
    p.add_argument(
        "--split", choices=("val", "test", "train"), default="val", help="split to audit (default: val)"
    )
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help="train split only: train K scaled-down out-of-fold models (audit.fold_epochs epochs each), "
        "each scoring the fold it did not train on",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: paths.audit)")
    p.add_argument(
        "--max-score",
        type=float,
        default=MAX_SCORE,
        help=f"report boxes with label quality below this ({MAX_SCORE})",
    )
    p.add_argument(
        "--high-confidence",
        type=float,
        default=HIGH_CONFIDENCE,
        help="confidence a prediction needs to call a box overlooked or swapped "
        f"(default {HIGH_CONFIDENCE}; cleanlab's own 0.95 suits calibrated classifiers, which a detector's "
        "box confidences are not); raise it for fewer, surer suggestions",
    )
    p.add_argument(
        "--low-confidence",
        type=float,
        default=LOW_CONFIDENCE,
        help="confidence below which a prediction says nothing about a box's place "
        f"(cleanlab's default: {LOW_CONFIDENCE})",
    )
    return p


def check_split(split: str, folds: int | None) -> None:
    """The train split only with out-of-fold models, and those only for the train split."""
    if split == "train" and folds is None:
        raise ConfigError(
            "--split train: the model trained on these images, so its scores would not be honest; "
            "audit val or test, or pass --folds K for out-of-fold models"
        )
    if folds is not None and split != "train":
        raise ConfigError(
            f"--folds {folds} with --split {split}: out-of-fold models are for the train split; the "
            f"trained model never saw {split}, so drop --folds (or pass --split train)"
        )
    if folds is not None and folds < 2:
        raise ConfigError(
            f"--folds {folds}: out-of-fold auditing needs at least 2 folds (each model trains on the "
            "others); pass --folds 2 or more, e.g. --folds 5"
        )


def main(argv: list[str], prog: str = "python -m pipeline audit", command: str = "audit") -> int:
    import mlflow

    args = parser(prog).parse_args(argv)
    check_split(args.split, args.folds)
    if args.folds is not None:  # this stage scores one trained model; ops trains the fold models
        raise ConfigError(f"--folds {args.folds}: run `python -m pipeline audit` (pipeline.ops.audit_folds)")
    cfg = load_params(args.params)
    weights = Artifacts.of(cfg).best_weights
    out = args.out or Artifacts.of(cfg).audit.folder
    issues = audit(
        Path(cfg.paths.prepared),
        weights,
        args.split,
        out,
        args.max_score,
        args.high_confidence,
        args.low_confidence,
        os.cpu_count() or 1,
    )
    with tracking.stage_run(cfg):
        tracking.log_metrics(counts(issues) | {"issues": len(issues)}, prefix=f"audit/{args.split}/")
        for path in (AuditFiles(out).issues, AuditFiles(out).page):  # not folds/: the fold models' runs
            mlflow.log_artifact(str(path), artifact_path="audit")
    print(summary(args.split, issues, out))
    return 0
