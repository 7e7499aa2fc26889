"""The evaluation's warnings in plain words: weak localisation, weak classes, swapped classes, and a
figure measured on the split the weights were selected on."""

from __future__ import annotations

import numpy as np

from pipeline.core.config import EvaluateConfig
from pipeline.evaluate.results import ClassMetrics, Evaluation
from pipeline.evaluate.slices import low_slice_warnings


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
