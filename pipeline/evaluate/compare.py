"""A paired bootstrap interval for the difference between two detectors on the same images.

The per-image statistic is honest and simple: each model's boxes are matched to the image's ground
truth (same class, IoU >= 0.5, greedily by confidence, each object matched once), giving per-image
counts of true positives, false positives and missed objects. F1 = 2 TP / (2 TP + FP + FN) is then
computed from the counts summed over a set of images (micro-averaged: frames without objects still
count their false positives, and no image's 0/0 is averaged in).

The bootstrap resamples images, not boxes, because the objects of one frame are correlated (same
scene, same lighting). It is paired: both models are scored on the same resampled images, so the
variation in difficulty between images, which both models share, cancels out and the interval
bounds the difference (challenger - champion) only. A fixed seed makes the interval reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.boxes import iou_matrix

IOU_MATCH = 0.5
TP, FP, FN = 0, 1, 2  # columns of a (images, 3) counts array


@dataclass(frozen=True)
class Interval:
    """Challenger - champion F1 on all images, and its bootstrap confidence interval."""

    delta: float
    low: float
    high: float
    level: float
    resamples: int
    seeds: int = 1  # challenger trainings (retrain --seeds) the interval averages over

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def clears(self, margin: float) -> bool:
        """The challenger's win is at least `margin` with the interval's confidence."""
        return self.low >= margin


def image_counts(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image. `predicted`: (P, 6) xyxy, confidence, class; `truth`: (G, 5)
    xyxy, class. Predictions below the deployment confidence must be filtered out beforehand."""
    free = np.ones(len(truth), dtype=bool)
    hits = 0
    for row in predicted[np.argsort(-predicted[:, 4])] if len(predicted) else []:
        candidates = free & (truth[:, 4] == row[5]) if len(truth) else free
        if not candidates.any():
            continue
        overlaps = np.where(candidates, iou_matrix(row[:4], truth[:, :4])[0], 0.0)
        best = int(np.argmax(overlaps))
        if overlaps[best] >= IOU_MATCH:
            free[best] = False
            hits += 1
    return hits, len(predicted) - hits, len(truth) - hits


def f1(counts: np.ndarray) -> np.ndarray:
    """F1 of the summed counts along the second-to-last axis: (..., images, 3) -> (...)."""
    total = counts.sum(axis=-2)
    denominator = 2 * total[..., TP] + total[..., FP] + total[..., FN]
    return np.where(denominator > 0, 2 * total[..., TP] / np.maximum(denominator, 1), 1.0)


def paired_bootstrap(
    champion: np.ndarray, challenger: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile interval of F1(challenger) - F1(champion) over images resampled with replacement.

    Each side is (images, 3) TP/FP/FN counts on the same images, in the same order, or (seeds,
    images, 3): one recipe trained with several seeds (`retrain --seeds`, the plan benchmark). A
    side's F1 is then the mean over its seeds, and each resample also draws that side's seeds with
    replacement, so the interval holds the training noise as well as the images'.
    """
    ours, theirs = as_runs(challenger), as_runs(champion)
    paired = ours.shape[1:] == theirs.shape[1:] and ours.shape[2:] == (3,)
    if not (paired and ours.shape[1] and len(ours) and len(theirs)):
        raise ValueError(
            "paired counts must both be (images, 3) with at least one image, on the same images "
            f"(or (seeds, images, 3)); got {champion.shape} and {challenger.shape}"
        )
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, ours.shape[1], size=(resamples, ours.shape[1]))
    deltas = resampled_f1(ours, picks, rng) - resampled_f1(theirs, picks, rng)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    delta = float(f1(ours).mean() - f1(theirs).mean())
    return Interval(round(delta, 5), round(float(low), 5), round(float(high), 5), level, resamples, len(ours))


def as_runs(counts: np.ndarray) -> np.ndarray:
    """(images, 3) counts as one run of (seeds, images, 3)."""
    return counts if counts.ndim == 3 else counts[None]


def resampled_f1(runs: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per resample: the mean F1 over seeds drawn with replacement, each on the resample's images."""
    per_seed = f1(runs[:, picks]).T  # (resamples, seeds)
    drawn = rng.integers(0, len(runs), size=per_seed.shape)
    return np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)
