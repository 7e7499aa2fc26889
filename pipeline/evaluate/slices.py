"""Metrics per slice of the evaluation split: by an attribute read from the file name or from a CSV.

A slice is one value of one attribute (`light=night`). The attribute comes from a named group of
`evaluate.slices` matched against the image's file stem (`_(?P<light>day|night)_`), or from a
column of `evaluate.slices_csv` (a column `image` with the file name, one column per attribute).
Each slice is scored by faster-coco-eval on its own images: mAP50, mAP50-95 and recall at IoU 0.5,
with its instance count, so a slice far below its siblings is visible even when the mean looks fine.
`slice_regressions` compares two models' slices for a promotion gate.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import EvaluateConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.model.scoring import Sample, coco_ground_truth, coco_summary, renumbered

CSV_IMAGE_COLUMN = "image"
Attributes = dict[str, str]  # attribute name -> value, for one image


@dataclass(frozen=True)
class SliceMetrics:
    attribute: str
    value: str
    images: int
    instances: int
    map50: float
    map50_95: float
    recall: float  # COCO AR at IoU 0.5

    @property
    def key(self) -> str:
        return f"{self.attribute}={self.value}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def attributes_from_pattern(names: Sequence[str], pattern: str) -> list[Attributes]:
    """Named groups of `pattern` searched in each file stem; an image that does not match has none."""
    regex = re.compile(pattern)
    if not regex.groupindex:
        raise ConfigError(f"evaluate.slices {pattern!r}: needs named groups, e.g. '_(?P<light>day|night)_'")
    found = [regex.search(Path(name).stem) for name in names]
    return [{k: v for k, v in m.groupdict().items() if v is not None} if m else {} for m in found]


def attributes_from_csv(names: Sequence[str], path: Path) -> list[Attributes]:
    """Per-image attributes from a CSV keyed by file name (column `image`); unlisted images have none."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and CSV_IMAGE_COLUMN not in rows[0]:
        raise DataError(f"{path}:1: evaluate.slices_csv needs a column {CSV_IMAGE_COLUMN!r} with file names")
    by_name = {Path(row.pop(CSV_IMAGE_COLUMN)).name: {k: v for k, v in row.items() if v} for row in rows}
    return [by_name.get(Path(name).name, {}) for name in names]


def image_attributes(names: Sequence[str], cfg: EvaluateConfig) -> list[Attributes]:
    """Each image's attributes under the configuration: the CSV's, then the file name's (which win)."""
    from_csv = attributes_from_csv(names, Path(cfg.slices_csv)) if cfg.slices_csv else [{} for _ in names]
    from_name = attributes_from_pattern(names, cfg.slices) if cfg.slices else [{} for _ in names]
    return [a | b for a, b in zip(from_csv, from_name, strict=True)]


def slice_members(attributes: Sequence[Attributes]) -> dict[tuple[str, str], list[int]]:
    """(attribute, value) -> positions of the images in that slice, in sorted order of slices."""
    members: dict[tuple[str, str], list[int]] = {}
    for position, values in enumerate(attributes):
        for attribute, value in values.items():
            members.setdefault((attribute, value), []).append(position)
    return dict(sorted(members.items()))


def slice_metrics(
    samples: Sequence[Sample],
    grouped: Sequence[list[dict[str, Any]]],
    attributes: Sequence[Attributes],
    classes: int,
) -> list[SliceMetrics]:
    """Score each slice on its own images (`grouped`: each image's COCO predictions, in sample order)."""
    results = []
    for (attribute, value), positions in slice_members(attributes).items():
        subset = [samples[i] for i in positions]
        summary = coco_summary(
            coco_ground_truth(subset, classes), renumbered([grouped[i] for i in positions])
        )
        instances = int(sum(len(s.labels) for s in subset))
        results.append(
            SliceMetrics(
                attribute, value, len(subset), instances, summary.map50, summary.map50_95, summary.recall50
            )
        )
    return results


def low_slice_warnings(slices: Sequence[SliceMetrics], ratio: float, min_instances: int) -> list[str]:
    """A slice whose mAP50-95 is below `ratio` x the mean of the other values of its attribute."""
    warnings = []
    for s in slices:
        siblings = [o.map50_95 for o in slices if o.attribute == s.attribute and o.value != s.value]
        if s.instances < min_instances or not siblings:
            continue
        rest = sum(siblings) / len(siblings)
        if s.map50_95 < ratio * rest:
            warnings.append(
                f"slice {s.key} ({s.instances} objects): mAP50-95 {s.map50_95:.3f} is below {ratio} x "
                f"the rest of {s.attribute} ({rest:.3f}): more or better data for it"
            )
    return warnings


def slice_regressions(
    champion_slices: Sequence[SliceMetrics | dict[str, Any]],
    challenger_slices: Sequence[SliceMetrics | dict[str, Any]],
    max_drop: float,
    min_instances: int,
) -> list[str]:
    """The slices (with at least `min_instances` objects in the challenger's evaluation) where the
    challenger's mAP50-95 falls more than `max_drop` below the champion's; a reason per slice."""
    champion = {s.key: s for s in map(as_slice, champion_slices)}
    reasons = []
    for s in map(as_slice, challenger_slices):
        before = champion.get(s.key)
        if before is None or s.instances < min_instances:
            continue
        drop = before.map50_95 - s.map50_95
        if drop > max_drop:
            reasons.append(
                f"slice {s.key} ({s.instances} objects): mAP50-95 {before.map50_95:.3f} -> {s.map50_95:.3f}, "
                f"a drop of {drop:.3f} > retrain.max_slice_drop {max_drop}"
            )
    return reasons


def as_slice(value: SliceMetrics | dict[str, Any]) -> SliceMetrics:
    """Slices as evaluate writes them to details.json, or as objects."""
    return value if isinstance(value, SliceMetrics) else SliceMetrics(**value)
