"""`python -m pipeline audit`: val/test with the trained model; `--split train --folds K` out of fold.

A model's scores on images it trained on are not honest: it has learnt their labels, errors
included. So the train split is cut into K folds (a seeded permutation of its images; with
`data.split.group_pattern`, of its sequences, so near-identical frames of one sequence never sit
both in the fold being audited and in the model auditing it), and for each fold a model is trained
on the other K-1 with the same plan, scaled down to `audit.fold_epochs` epochs (each a child MLflow
run of one `audit` run; its project in {paths.audit}/folds/fold<k>/). Each fold's images are scored
by its own model with pipeline/evaluate/audit.py, and the folds' issues are merged into one ranking,
each naming the fold model that produced it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.core import tracking
from pipeline.core.artifacts import Artifacts, AuditFiles
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import ConfigError
from pipeline.evaluate import audit
from pipeline.model.info import read_model_info
from pipeline.model.scoring import Sample, read_split
from pipeline.ops.scaling import subset_config
from pipeline.ops.select import group_of
from pipeline.train import stage as train_stage


@dataclass(frozen=True)
class Thresholds:
    """The audit's scoring options (see pipeline/evaluate/audit.py)."""

    max_score: float = audit.MAX_SCORE
    high_confidence: float = audit.HIGH_CONFIDENCE
    low_confidence: float = audit.LOW_CONFIDENCE


def assign_folds(
    images: Sequence[Path], folds: int, seed: int, group_pattern: str | None
) -> list[list[Path]]:
    """`folds` disjoint lists covering `images`. Groups (the first capture group of `group_pattern` on
    the file stem; each image its own without one) are shuffled with `seed` and dealt in that order,
    each to the fold holding the fewest images so far: one group never spans two folds."""
    if folds < 2:
        raise ConfigError(f"--folds {folds}: out-of-fold auditing needs at least 2 folds; pass --folds 2+")
    groups: dict[str, list[Path]] = {}
    for image in sorted(images):
        groups.setdefault(group_of(image, group_pattern), []).append(image)
    if len(groups) < folds:
        raise ConfigError(too_many_folds(folds, len(images), len(groups), group_pattern))
    keys = sorted(groups)
    dealt: list[list[Path]] = [[] for _ in range(folds)]
    for i in np.random.default_rng(seed).permutation(len(keys)):
        smallest = min(range(folds), key=lambda k: len(dealt[k]))
        dealt[smallest] += groups[keys[i]]
    return [sorted(fold) for fold in dealt]


def too_many_folds(folds: int, images: int, groups: int, group_pattern: str | None) -> str:
    what = f"{images} image(s)"
    if group_pattern is not None:
        what += f" in {groups} sequence(s) of data.split.group_pattern {group_pattern!r} (one fold each)"
    fix = f"pass --folds {groups} or fewer" if groups >= 2 else "audit val or test instead"
    return f"--folds {folds}: the train split has {what}, too few for {folds} non-empty folds; {fix}"


def fold_config(cfg: PipelineConfig, out: Path, fold: int, folds: int, images: list[Path]) -> PipelineConfig:
    """The plan scaled down: trained on `images` (the other folds) for audit.fold_epochs epochs."""
    sub = subset_config(cfg, images, AuditFiles(out).fold(fold), f"audit-fold{fold}of{folds}")
    return replace(sub, train=replace(sub.train, epochs=cfg.audit.fold_epochs))


def train_fold(cfg: PipelineConfig, out: Path, fold: int, folds: int, images: list[Path], parent_id: str):
    result = train_stage.run(fold_config(cfg, out, fold, folds, images))
    name = f"audit-fold{fold}of{folds}"
    tracking.adopt_as_child(cfg, result.run_id, parent_id, name, {"audit.fold": str(fold)})
    return result


def source_note(folds: int, epochs: int) -> str:
    return (
        f"scores from {folds} scaled-down out-of-fold models ({epochs} epochs each, audit.fold_epochs), "
        "each scoring only the fold it did not train on"
    )


def run(
    cfg: PipelineConfig, folds: int, out: Path, thresholds: Thresholds = Thresholds()
) -> list[audit.Issue]:
    samples = read_split(Path(cfg.paths.prepared), "train", needed_for="audit")
    by_image = {s.image: s for s in samples}
    split = assign_folds(list(by_image), folds, cfg.seed, cfg.data.split.group_pattern)
    mlflow = tracking.configure(cfg)
    with mlflow.start_run(run_name="audit") as parent:
        parent_id = parent.info.run_id
        params = {"split": "train", "folds": folds, "fold_epochs": cfg.audit.fold_epochs, "seed": cfg.seed}
        mlflow.log_params({f"audit.{k}": v for k, v in params.items()})
    labels, detections, issues, names = [], [], [], ()
    for k in tqdm(range(folds), desc="audit: folds", unit="fold"):
        others = sorted(image for j, fold in enumerate(split) if j != k for image in fold)
        result = train_fold(cfg, out, k, folds, others, parent_id)
        names = read_model_info(result.weights).names
        scored: list[Sample] = [by_image[image] for image in split[k]]
        fold_labels, fold_detections, fold_issues = audit.score(
            result.weights,
            scored,
            thresholds.max_score,
            thresholds.high_confidence,
            thresholds.low_confidence,
            os.cpu_count() or 1,
        )
        labels += fold_labels
        detections += fold_detections
        issues += [replace(issue, fold=k) for issue in fold_issues]
    ranked = audit.rank(issues)
    note = source_note(folds, cfg.audit.fold_epochs)
    audit.write_outputs(out, ranked, labels, detections, names, note=note.capitalize())
    with mlflow.start_run(run_id=parent_id):
        mlflow.set_tag("audit.scores", note)
        tracking.log_metrics(audit.counts(ranked) | {"issues": len(ranked)}, prefix="audit/train/")
        for path in (AuditFiles(out).issues, AuditFiles(out).page):  # not folds/: each is its own run
            mlflow.log_artifact(str(path), artifact_path="audit")
    return ranked


def main(argv: list[str], prog: str = "python -m pipeline audit", command: str = "audit") -> int:
    args = audit.parser(prog).parse_args(argv)
    audit.check_split(args.split, args.folds)
    if args.folds is None:
        return audit.main(argv, prog, command)
    cfg = load_params(args.params)
    out = args.out or Artifacts.of(cfg).audit.folder
    thresholds = Thresholds(args.max_score, args.high_confidence, args.low_confidence)
    issues = run(cfg, args.folds, out, thresholds)
    print(audit.summary("train", issues, out, f"; {source_note(args.folds, cfg.audit.fold_epochs)}"))
    return 0
