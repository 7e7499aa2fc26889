"""The contenders of a retrain, scored on the current split with the evaluate stage's own code.

The champion and the challenger come from the registry; with `retrain --seeds N` the challenger's
recipe is also trained with N-1 other seeds (replicas, never registered), so the decision can
tell a better recipe from one lucky training. Each model's per-image (TP, FP, FN) counts feed the
paired bootstrap interval (pipeline/evaluate/compare.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core import tracking
from pipeline.core.config import RETRAIN_METRICS, PipelineConfig
from pipeline.evaluate import results
from pipeline.evaluate import stage as evaluate
from pipeline.evaluate.compare import Interval, paired_bootstrap
from pipeline.ops.decision import ModelScore
from pipeline.ops.registry import Registry, RetrainError
from pipeline.train import stage as train_stage


def score(cfg: PipelineConfig, registry: Registry, version, scratch: Path) -> tuple[ModelScore, dict]:
    """The version's weights from the registry, scored by the evaluate stage's code on the current
    split; with its per-image (TP, FP, FN) by image name, for the paired interval."""
    folder = scratch / f"v{version.version}"
    weights = registry.download(version, folder / "weights")
    identity = (str(version.version), version.run_id, registry.dataset_hash(version))
    return evaluated(cfg, weights, folder / "evaluation", *identity)


def evaluated(
    cfg: PipelineConfig, weights: Path, out: Path, version: str, run_id: str, dataset_hash: str | None
) -> tuple[ModelScore, dict]:
    """`weights` (a run folder's weights/best.pt) scored by the evaluate stage's code into `out`."""
    paths = replace(cfg.paths, train=str(weights.parent.parent), evaluation=str(out))
    result = evaluate.run(replace(cfg, paths=paths))
    flat = results.metrics_json(result)
    per_class = {c.name: c.ap50_95 for c in result.classes if c.ap50_95 is not None}
    measured = f"{result.split} split ({result.images} images, {result.instances} objects)"
    metrics = {key: float(flat[key] or 0.0) for key in RETRAIN_METRICS}
    slices = tuple(s.as_dict() for s in result.slices)
    model_score = ModelScore(version, run_id, dataset_hash, metrics, per_class, measured, slices)
    return model_score, {name: counts for name, *counts in result.image_counts}


def replica_seeds(cfg: PipelineConfig, seeds: int) -> list[int]:
    """--seeds N: the pipeline's own training has `seed`; the other N-1 take the next seeds."""
    return [cfg.seed + k for k in range(1, seeds)]


def seed_replica(
    cfg: PipelineConfig, seed: int, challenger, data_hash: str, scratch: Path
) -> tuple[ModelScore, dict]:
    """The challenger's recipe (this config, this data) trained again with another seed, beside the
    pipeline's run so a killed retrain resumes it; an MLflow child run of the challenger's run."""
    folder = Path(cfg.paths.train).parent / f"retrain-seed{seed}"
    paths = replace(cfg.paths, train=str(folder / "train"), train_report=str(folder / "report"))
    result = train_stage.run(replace(cfg, seed=seed, paths=paths))
    tracking.adopt_as_child(
        cfg, result.run_id, challenger.run_id, f"retrain-seed{seed}", {"retrain.seed": str(seed)}
    )
    version = f"{challenger.version} seed {seed}, unregistered"
    return evaluated(cfg, result.weights, scratch / f"seed{seed}", version, result.run_id, data_hash)


def paired_interval(champion: dict, challengers: list[dict], cfg: PipelineConfig) -> Interval:
    """All models were scored on the same current split; pair their images by name. `challengers`:
    the challenger's counts, then those of its seed replicas."""
    names = sorted(set(champion).intersection(*challengers))
    if not names:
        raise RetrainError("the champion and the challenger were scored on no common image")
    return paired_bootstrap(
        np.array([champion[n] for n in names]),
        np.array([[c[n] for n in names] for c in challengers]),
        resamples=cfg.retrain.resamples,
        level=cfg.retrain.confidence,
        seed=cfg.seed,
    )


def recorded_score(registry: Registry, version) -> ModelScore:
    """The metrics the evaluate stage tagged the version with when it registered it."""
    metrics = {key: float(version.tags[key]) for key in RETRAIN_METRICS if key in version.tags}
    measured = "as registered by the evaluate stage"
    return ModelScore(
        str(version.version), version.run_id, registry.dataset_hash(version), metrics, {}, measured
    )
