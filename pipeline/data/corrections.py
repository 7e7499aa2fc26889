"""Apply the audit's reviewed corrections (corrections.json from the review page) to an image's boxes.

A correction names the image by file name and the box it changes by class and position (normalised
x0 y0 x1 y1), not by row number, so it survives a re-ordering of the labels. Only accepted
corrections are applied: an overlooked object adds the predicted box, a swapped class takes the
predicted class, a badly located box takes the predicted box, a spurious label is removed.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import CORRECTIONS_FILE, CORRECTIONS_FORMAT
from pipeline.core.boxes import iou_matrix
from pipeline.core.errors import DataError
from pipeline.core.io import read_json

MATCH_IOU = 0.9  # the label box a correction names must still be (almost exactly) where it was


def read_corrections(path: Path) -> dict[str, list[dict]]:
    """Accepted corrections by image file name."""
    payload = read_json(path)
    if payload.get("format") != CORRECTIONS_FORMAT:
        raise DataError(
            f"{path}: format {payload.get('format')!r}; expected {CORRECTIONS_FORMAT} (save it again)"
        )
    by_image: dict[str, list[dict]] = defaultdict(list)
    for entry in payload["corrections"]:
        if entry["decision"] == "accept":
            by_image[entry["image"]].append(entry)
    return dict(by_image)


def matching_row(boxes: np.ndarray, entry: dict, image: str) -> int:
    """The row (class, x0, y0, x1, y1) the correction names; an error when the labels have moved on."""
    same_class = boxes[:, 0] == entry["label_class"]
    overlap = np.where(same_class, iou_matrix(entry["label_box"], boxes[:, 1:5])[0], 0.0)
    if not len(boxes) or overlap.max() < MATCH_IOU:
        raise DataError(
            f"{CORRECTIONS_FILE}: {entry['kind']} correction for {image}: no class-{entry['label_class']} "
            f"box at {entry['label_box']} any more; the labels changed since the audit: audit again"
        )
    return int(np.argmax(overlap))


def apply_corrections(image: str, boxes: np.ndarray, corrections: dict[str, list[dict]]) -> np.ndarray:
    """`boxes` (N, 5): class, x0, y0, x1, y1 normalised; returns the corrected copy."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 5)
    removed, added = [], []
    for entry in corrections.get(image, []):
        if entry["kind"] == "overlooked":
            added.append([entry["predicted_class"], *entry["predicted_box"]])
            continue
        row = matching_row(boxes, entry, image)
        if entry["kind"] == "swapped":
            boxes[row, 0] = entry["predicted_class"]
        elif entry["kind"] == "badly_located":
            boxes[row, 1:5] = entry["predicted_box"]
        else:  # spurious
            removed.append(row)
    kept = np.delete(boxes, removed, axis=0)
    return np.vstack([kept, np.asarray(added, dtype=np.float64).reshape(-1, 5)])
