"""`python -m pipeline select --pool DIR --budget N`: which unlabelled frames to label next.

The trained model predicts on every frame of the pool, on the frame and on its mirror image, and
each frame gets an uncertainty: the mean of (1 - its top confidence), (1 - the relative margin
between the two best class scores of its top box) and the disagreement between the frame's and the mirror's
boxes (test-time augmentation). Frames are then taken most uncertain first, with diversity: never
two near-duplicates (perceptual hash within data.validation.near_duplicate_image_distance, the
check prepare applies), and frames of one sequence (data.split.group_pattern) spread out: a
sequence gives its second frame only once every sequence with a candidate left has given one.

Outputs in {paths.select}/: selection.json (each pick with its scores and reason), a Label Studio
import (tasks with the model's boxes as predictions, so labellers correct rather than draw), and
YOLO txt pre-annotations, one per picked frame.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.core.artifacts import Artifacts
from pipeline.core.boxes import iou_matrix
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import DataError
from pipeline.core.io import write_json, write_text
from pipeline.core.layout import IMAGE_SUFFIXES
from pipeline.data.frames import phash
from pipeline.data.validation import hash_bits
from pipeline.model.images import load_image
from pipeline.model.inference import Detections, open_runner, predict
from pipeline.model.info import ModelInfo, read_model_info, require_weights
from pipeline.model.scoring import MAP_IOU

SAME_BOX_IOU = 0.5  # two boxes this close are one object (the class margin; the flip agreement)
REASONS = {
    "low_confidence": "the model is not confident of anything in it",
    "small_margin": "its top box is torn between two classes",
    "flip_disagreement": "the model sees different boxes in the frame and in its mirror image",
}


@dataclass(frozen=True)
class Candidate:
    image: Path
    group: str  # the sequence it belongs to (data.split.group_pattern), else its own name
    phash: int  # 64-bit perceptual hash
    confidence: float  # the top detection's score; 0 without any
    margin: float  # (top-1 - top-2 class score) / top-1 on the top box: 1 when no other class claims it
    disagreement: float  # 1 - agreement of the boxes found in the frame and in its mirror image

    @property
    def terms(self) -> dict[str, float]:
        return {
            "low_confidence": 1 - self.confidence,
            "small_margin": 1 - self.margin,
            "flip_disagreement": self.disagreement,
        }

    @property
    def uncertainty(self) -> float:
        return float(np.mean(list(self.terms.values())))

    @property
    def reason(self) -> str:
        """The term that makes the frame most uncertain, in words."""
        kind = max(self.terms, key=self.terms.get)
        return f"{kind}: {REASONS[kind]} ({self.terms[kind]:.2f})"


# ---- uncertainty --------------------------------------------------------------------------------


def class_margin(found: Detections) -> float:
    """How far the top box's class is ahead of the best other class on (nearly) the same box
    (multi-label NMS keeps one box per class), relative to its score, so that a frame with only
    faint boxes counts as low confidence, not as torn; 1 without a rival or without any box."""
    if len(found.scores) == 0 or found.scores.max() <= 0:
        return 1.0
    top = int(np.argmax(found.scores))
    overlap = iou_matrix(found.boxes[top : top + 1], found.boxes)[0]
    rivals = found.scores[(overlap >= SAME_BOX_IOU) & (found.classes != found.classes[top])]
    return float(1 - (rivals.max() if len(rivals) else 0.0) / found.scores[top])


def mirrored_back(found: Detections, width: int) -> Detections:
    """Boxes found on the mirrored image, mapped back onto the original."""
    boxes = found.boxes.copy()
    boxes[:, [0, 2]] = width - found.boxes[:, [2, 0]]
    return Detections(boxes, found.scores, found.classes)


def confident(found: Detections, conf: float) -> Detections:
    keep = found.scores >= conf
    return Detections(found.boxes[keep], found.scores[keep], found.classes[keep])


def box_disagreement(a: Detections, b: Detections) -> float:
    """1 - the mean, over the boxes of both sets, of each box's best same-class IoU in the other set."""
    if len(a.scores) + len(b.scores) == 0:
        return 0.0
    if len(a.scores) == 0 or len(b.scores) == 0:
        return 1.0
    iou = iou_matrix(a.boxes, b.boxes) * (a.classes[:, None] == b.classes[None, :])
    agreement = (iou.max(axis=1).sum() + iou.max(axis=0).sum()) / (len(a.scores) + len(b.scores))
    return float(1 - agreement)


def candidate(
    image: Path, group: str, bits: int, plain: Detections, mirror: Detections, conf: float
) -> Candidate:
    top = float(plain.scores.max()) if len(plain.scores) else 0.0
    disagreement = box_disagreement(confident(plain, conf), confident(mirror, conf))
    return Candidate(image, group, bits, top, class_margin(plain), disagreement)


# ---- diversity ----------------------------------------------------------------------------------


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def pick(candidates: Sequence[Candidate], budget: int, max_distance: int) -> list[Candidate]:
    """Most uncertain first, in rounds: a sequence gives its k-th frame only in round k, and a frame
    within `max_distance` bits of one already picked is never taken."""
    ranked = sorted(candidates, key=lambda c: (-c.uncertainty, str(c.image)))
    chosen: list[Candidate] = []
    taken: dict[str, int] = {}
    skipped: set[Path] = set()
    for round_ in range(len(ranked)):
        for c in ranked:
            if len(chosen) == budget:
                return chosen
            if c.image in skipped or taken.get(c.group, 0) != round_:
                continue
            if any(hamming(c.phash, p.phash) <= max_distance for p in chosen):
                skipped.add(c.image)  # a near-duplicate stays one for every later round
                continue
            chosen.append(c)
            skipped.add(c.image)
            taken[c.group] = round_ + 1
    return chosen


# ---- pre-annotations ----------------------------------------------------------------------------


def label_studio_task(
    image: str, found: Detections, shape: tuple[int, int], names: Sequence[str], model_version: str
) -> dict[str, Any]:
    """One Label Studio task with the model's boxes as a prediction (coordinates in percent)."""
    height, width = shape
    result = [
        {
            "type": "rectanglelabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "value": {
                "x": 100 * x1 / width,
                "y": 100 * y1 / height,
                "width": 100 * (x2 - x1) / width,
                "height": 100 * (y2 - y1) / height,
                "rectanglelabels": [names[int(c)]],
            },
            "score": float(s),
        }
        for (x1, y1, x2, y2), s, c in zip(found.boxes.tolist(), found.scores, found.classes, strict=True)
    ]
    score = float(found.scores.mean()) if len(found.scores) else 0.0
    return {
        "data": {"image": image},
        "predictions": [{"model_version": model_version, "score": score, "result": result}],
    }


def yolo_lines(found: Detections, shape: tuple[int, int]) -> str:
    height, width = shape
    rows = [
        (int(c), (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        for (x1, y1, x2, y2), c in zip(found.boxes.tolist(), found.classes, strict=True)
    ]
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows)


# ---- the command --------------------------------------------------------------------------------


def pool_images(pool: Path) -> list[Path]:
    if not Path(pool).is_dir():
        raise DataError(f"--pool {pool}: not a folder of unlabelled images")
    images = sorted(p for p in Path(pool).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"--pool {pool}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in it")
    return images


def group_of(image: Path, pattern: str | None) -> str:
    """The sequence key as prepare computes it: the first group of the pattern, else the whole match."""
    match = re.search(pattern, image.stem) if pattern else None
    if match is None:
        return image.stem
    return match.group(1) if match.groups() else match.group(0)


def image_hash(image: np.ndarray) -> int:
    pixels = image[..., 0] if image.shape[-1] == 1 else image[..., ::-1]
    return int(hash_bits([phash(np.ascontiguousarray(pixels))])[0])


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    found: Detections  # confident boxes, for the pre-annotations
    shape: tuple[int, int]


def score_pool(cfg: PipelineConfig, weights: Path, images: list[Path], info: ModelInfo) -> list[Scored]:
    runner = open_runner(weights, threads=os.cpu_count() or 1)
    scored = []
    for path in tqdm(images, desc="select: predicting", unit="image"):
        pixels = load_image(path, info.channels)
        plain, mirror = predict(runner, [pixels, pixels[:, ::-1]], info, 0.001, MAP_IOU, multi_label=True)
        width = pixels.shape[1]
        group = group_of(path, cfg.data.split.group_pattern)
        c = candidate(path, group, image_hash(pixels), plain, mirrored_back(mirror, width), cfg.select.conf)
        scored.append(Scored(c, confident(plain, cfg.select.conf), pixels.shape[:2]))
    return scored


def run(cfg: PipelineConfig, pool: Path, budget: int) -> dict[str, Any]:
    weights = require_weights(Artifacts.of(cfg).best_weights)
    images = pool_images(pool)
    info = read_model_info(weights)
    scored = {s.candidate.image: s for s in score_pool(cfg, weights, images, info)}
    picks = pick(
        [s.candidate for s in scored.values()], budget, cfg.data.validation.near_duplicate_image_distance
    )
    files = Artifacts.of(cfg).select
    version = f"{weights.name} sha256:{info.sha256[:12]}"
    tasks = []
    for c in picks:
        s = scored[c.image]
        tasks.append(
            label_studio_task(
                cfg.select.image_prefix + c.image.resolve().as_posix(), s.found, s.shape, info.names, version
            )
        )
        write_text(files.preannotations / f"{c.image.stem}.txt", yolo_lines(s.found, s.shape))
    write_json(files.label_studio, tasks)
    selection = {
        "pool": str(pool),
        "pool_images": len(images),
        "budget": budget,
        "model": version,
        "picks": [pick_entry(rank, c) for rank, c in enumerate(picks, start=1)],
    }
    write_json(files.selection, selection)
    return selection


def pick_entry(rank: int, c: Candidate) -> dict[str, Any]:
    entry = {k: v for k, v in asdict(c).items() if k != "phash"}
    return {"rank": rank, **entry, "image": str(c.image), "uncertainty": c.uncertainty, "reason": c.reason}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: the budget is a number of images, at least 1")
    return value


def main(argv: list[str], prog: str = "select", command: str = "select") -> int:
    parser = stage_parser(prog, __doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--pool", type=Path, required=True, help="folder of unlabelled images (searched recursively)"
    )
    parser.add_argument(
        "--budget", type=positive, required=True, help="how many images to pick for labelling"
    )
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    selection = run(cfg, args.pool, args.budget)
    files = Artifacts.of(cfg).select
    print(f"picked {len(selection['picks'])} of {selection['pool_images']} images; {files.selection}")
    for p in selection["picks"][:10]:
        print(f"  {p['rank']:>3}. {Path(p['image']).name}  uncertainty {p['uncertainty']:.2f}  {p['reason']}")
    print(f"Label Studio import: {files.label_studio}; YOLO pre-annotations: {files.preannotations}/")
    return 0
