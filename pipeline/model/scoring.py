"""Ground truth and mAP beyond Ultralytics' own validator: YOLO labels to COCO, scored by faster-coco-eval.

The prepared dataset's splits are read here (image paths and label files), turned into a COCO
ground-truth dict, and predictions are scored with faster-coco-eval: mAP50-95, mAP50 and AP by
object size (COCO's small < 32², medium < 96², large, in original image pixels). Export parity,
deploy parity and the benchmark's accuracy column all call `measure_map`; evaluate scores the
validator's own predictions with `coco_summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.artifacts import PreparedDataset
from pipeline.core.errors import DataError
from pipeline.core.layout import IMAGE_SUFFIXES, label_path
from pipeline.core.prepared import read_data_yaml
from pipeline.model.images import load_image
from pipeline.model.inference import Detections, Runner, predict
from pipeline.model.info import ModelInfo

# The validation protocol (Ultralytics' `val` defaults): keep nearly every box so the PR curve is complete.
MAP_CONF = 0.001
MAP_IOU = 0.7
SIZES = ("small", "medium", "large")


@dataclass(frozen=True)
class Sample:
    image: Path
    labels: np.ndarray  # (N, 5): class, cx, cy, w, h normalised to [0, 1]


@dataclass(frozen=True)
class CocoSummary:
    map50_95: float
    map50: float
    by_size: dict[str, float | None]  # None where the split holds no object of that size
    recall50: float = 0.0  # COCO AR at IoU 0.5 (up to 100 detections per image)


# ---- the prepared dataset --------------------------------------------------------------------------


def split_images(prepared: Path, split: str) -> list[Path]:
    """Sorted image files of a split named in data.yaml (a folder, relative to the yaml's folder)."""
    data = read_data_yaml(PreparedDataset(Path(prepared)))
    if not data.get(split):
        return []
    base = Path(data.get("path") or prepared)
    folders = data[split] if isinstance(data[split], list) else [data[split]]
    return sorted(
        p for folder in folders for p in (base / folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )


def resolve_split(prepared: Path, wanted: str) -> tuple[str, str]:
    """(split to use, why): the wanted split, or val when the dataset has no images in it."""
    if split_images(prepared, wanted):
        return wanted, f"the {wanted} split"
    if wanted != "val" and split_images(prepared, "val"):
        return "val", f"the val split, because the dataset has no {wanted} split"
    raise DataError(f"{Path(prepared) / 'data.yaml'}: no images in the {wanted} or val split")


def read_labels(path: Path) -> np.ndarray:
    if not path.exists() or not path.read_text().strip():
        return np.zeros((0, 5), dtype=np.float32)
    return np.loadtxt(path, dtype=np.float32, ndmin=2)[:, :5]


def read_split(
    prepared: Path, split: str, limit: int | None = None, needed_for: str | None = None
) -> list[Sample]:
    """The first `limit` images of a split (sorted, so every stage sees the same subset) with labels.

    With `needed_for`, an empty split is an error naming what needed it.
    """
    images = split_images(prepared, split)[:limit]
    if needed_for and not images:
        raise DataError(
            f"{needed_for} needs images in the {split} split of {Path(prepared) / 'data.yaml'}: it has none"
        )
    return [Sample(image, read_labels(label_path(image))) for image in images]


# ---- COCO ------------------------------------------------------------------------------------------


def image_shape(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.height, image.width


def coco_ground_truth(samples: Sequence[Sample], num_classes: int) -> dict[str, Any]:
    """COCO ground truth: image id = position + 1, category id = class + 1 (as Ultralytics' JSON output)."""
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        height, width = image_shape(sample.image)
        images.append({"id": image_id, "width": width, "height": height, "file_name": sample.image.name})
        for cls, cx, cy, w, h in sample.labels.tolist():
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_predictions(detections: Sequence[Detections]) -> list[dict[str, Any]]:
    """Detections in COCO result format (xywh in pixels), image ids in the same order as the ground truth."""
    return [
        {
            "image_id": image_id,
            "category_id": int(c) + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(s),
        }
        for image_id, found in enumerate(detections, start=1)
        for (x1, y1, x2, y2), s, c in zip(found.boxes.tolist(), found.scores, found.classes, strict=True)
    ]


def renumbered(grouped: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """COCO results with image ids = position + 1, as `coco_ground_truth` numbers the images."""
    return [{**p, "image_id": i} for i, group in enumerate(grouped, start=1) for p in group]


def coco_summary(ground_truth: dict[str, Any], predictions: list[dict[str, Any]]) -> CocoSummary:
    from faster_coco_eval import COCO, COCOeval_faster

    coco = COCO(ground_truth)
    evaluator = COCOeval_faster(coco, coco.loadRes(predictions), "bbox", print_function=lambda *_: None)
    evaluator.run()
    stats = evaluator.stats_as_dict
    by_size = {size: (stats[f"AP_{size}"] if stats[f"AP_{size}"] >= 0 else None) for size in SIZES}
    return CocoSummary(max(stats["AP_all"], 0.0), max(stats["AP_50"], 0.0), by_size, max(stats["AR_50"], 0.0))


def load_images(samples: Sequence[Sample], channels: int) -> list[np.ndarray]:
    return [load_image(s.image, channels) for s in samples]


def measure_map(
    runner: Runner, samples: Sequence[Sample], images: Sequence[np.ndarray], info: ModelInfo
) -> CocoSummary:
    """mAP of a runner on labelled images under the validation protocol."""
    detections = predict(runner, images, info, MAP_CONF, MAP_IOU, multi_label=True)
    return coco_summary(coco_ground_truth(samples, len(info.names)), coco_predictions(detections))
