"""Validation: what is wrong with a label or an image, what the policy does about it, and the report.

Every problem becomes a `Finding` (kind, file, line, message, fix hint). `FindingLog` looks up
the configured action for its kind (`data.validation.policy`, actions in
`pipeline.core.config.FINDING_ACTIONS`) and keeps the record; the callers apply the action. The
checks here are pure functions of one image's labels (boxes) or of the hashes of all images
(duplicates), so they are unit-tested on tiny inputs.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.boxes import iou_matrix
from pipeline.core.data_config import PolicyConfig, ValidationConfig

if TYPE_CHECKING:
    from pipeline.data.source import Entry, LabelRecord

HINTS = {
    "unreadable_image": "re-export the image or remove it; the file cannot be decoded",
    "exif_orientation": "save the image with its rotation applied to the pixels and no EXIF "
    "orientation tag (policy fix writes it so in the labels' frame)",
    "size_mismatch": "correct the annotation's width/height, or re-export the image at that size",
    "bad_line": "a YOLO line is `class cx cy w h` (5 numbers, class an integer); fix or delete it",
    "class_out_of_range": "use an id from the source's class list (data.yaml names / COCO categories)",
    "unknown_class": "add it to classes.names or map it: -S '+data.class_map.<name>=<target>' "
    "(null drops it)",
    "out_of_bounds": "coordinates must lie in the image (YOLO: normalised 0-1, not pixels); fix the box",
    "slightly_out_of_bounds": "the box overhangs the frame a little; policy fix clips it",
    "degenerate_box": "width and height must be positive; redraw or delete the box",
    "tiny_box": "boxes under data.validation.min_box_pixels are rarely learnable; check the annotation",
    "duplicate_box": "the same box is listed twice; delete one",
    "near_duplicate_box": "two same-class boxes cover nearly the same area; delete one if one object",
    "missing_label": "add a label file (an empty one for a background image), or set "
    "data.validation.missing_label_is_background=true if such images have no objects",
    "background_image": "an empty label file marks a background image; label it if it shows objects",
    "orphan_label": "add the missing image, or delete the label / list line",
    "unlisted_image": "add the image to a split list, or set data.split.mode=group to re-split",
    "no_group": "adjust data.split.group_pattern so every file name matches",
    "duplicate_image": "delete the copy from the source",
    "near_duplicate_image": "near-identical frames add little; thin out bursts of one scene",
    "split_leakage": "near-identical images in two splits inflate validation metrics; keep each "
    "scene in one split (policy fix moves them together)",
    "zero_based_voc": "set data.voc.one_based=false for this exporter (1-based VOC starts at pixel 1)",
}
EXACT_TOLERANCE = 1e-6  # normalised coordinates closer than this are the same box
ROUNDING = 1e-6  # a box overhanging the frame by less than this is clipped without a finding


@dataclass(frozen=True)
class Finding:
    kind: str
    file: str
    line: int | None
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Record:
    finding: Finding
    action: str

    def to_dict(self) -> dict[str, Any]:
        f = self.finding
        hint = f.hint or HINTS[f.kind]
        return {
            "kind": f.kind,
            "action": self.action,
            "file": f.file,
            "line": f.line,
            "message": f.message,
            "hint": hint,
        }


class FindingLog:
    """Collects findings; `add` answers with the configured action for the finding's kind."""

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self.records: list[Record] = []

    def action(self, kind: str) -> str:
        return getattr(self.policy, kind)

    def add(self, finding: Finding) -> str:
        action = getattr(self.policy, finding.kind)
        self.records.append(Record(finding, action))
        return action

    def report(self, kind: str, file: str, line: int | None, message: str, hint: str = "") -> str:
        return self.add(Finding(kind, file, line, message, hint))

    def errors(self) -> list[Record]:
        return [r for r in self.records if r.action == "error"]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.finding.kind for r in self.records).items()))


# ---- classes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassResolution:
    target: int | None  # index in classes.names; None: the box goes
    kind: str | None = None  # the finding, if any
    message: str = ""


@dataclass(frozen=True)
class ClassResolver:
    """Source class token -> target id: source names, then `data.class_map`, then classes.names."""

    source_names: dict[int, str] | None  # None: tokens are names (VOC)
    class_map: dict[str, str | None]
    target: tuple[str, ...]

    def resolve(self, token: str) -> ClassResolution:
        name = token
        if self.source_names is not None:
            try:
                number = float(token)
            except ValueError:
                return ClassResolution(None, "bad_line", f"class id {token!r} is not a number")
            if not number.is_integer():
                return ClassResolution(None, "bad_line", f"class id {token!r} is not an integer")
            if int(number) not in self.source_names:
                known = f"{min(self.source_names)}..{max(self.source_names)}" if self.source_names else "none"
                return ClassResolution(None, "class_out_of_range", f"class id {int(number)} not in {known}")
            name = self.source_names[int(number)]
        if name in self.class_map:
            if self.class_map[name] is None:
                return ClassResolution(None)  # dropped on purpose by data.class_map
            name = str(self.class_map[name])
        if name not in self.target:
            return ClassResolution(
                None, "unknown_class", f"class {name!r} is not in classes.names {list(self.target)}"
            )
        return ClassResolution(self.target.index(name))


# ---- boxes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelCheck:
    boxes: np.ndarray  # (N, 5) float: target class, x0, y0, x1, y1 normalised, after the policies
    drop_image: bool = False
    unmapped: int = 0  # boxes class_map dropped on purpose


@dataclass(frozen=True)
class Coordinates:
    xyxy: tuple[float, float, float, float] | None
    problem: str = ""  # why the record is a bad line
    repairable: bool = False  # a polygon: policy fix turns it into its bounding box


def check_labels(
    entry: Entry, frame: tuple[int, int], classes: ClassResolver, rules: ValidationConfig, log: FindingLog
) -> LabelCheck:
    """Every label record of one image against every rule; returns the boxes the policies keep."""
    file = entry.label_file or entry.key
    if entry.label_error:  # nothing can be kept or repaired of a file that does not parse
        log.report("bad_line", file, entry.label_error_line, f"{entry.label_error}; the image is dropped")
        return LabelCheck(np.zeros((0, 5)), drop_image=True)
    kept, unmapped = [], 0
    for record in entry.labels:
        box = check_record(record, file, frame, classes, rules, log)
        unmapped += box is None and is_unmapped(record, classes)
        if box is not None:
            kept.append((record, box))
    kept = drop_duplicate_boxes(kept, file, rules, log)
    boxes = np.array([box for _, box in kept], dtype=np.float64).reshape(-1, 5)
    return LabelCheck(boxes, unmapped=unmapped)


def is_unmapped(record: LabelRecord, classes: ClassResolver) -> bool:
    resolution = classes.resolve(record.cls)
    return resolution.target is None and resolution.kind is None


def check_record(
    record: LabelRecord,
    file: str,
    frame: tuple[int, int],
    classes: ClassResolver,
    rules: ValidationConfig,
    log: FindingLog,
) -> np.ndarray | None:
    where = f"{record.ref}: " if record.ref else ""
    coords = parse_coordinates(record, frame)
    if coords.problem:
        action = log.report("bad_line", file, record.line, f"{where}{coords.problem}")
        if not (coords.repairable and action == "fix"):
            return None
    resolution = classes.resolve(record.cls)
    if resolution.kind:
        log.report(resolution.kind, file, record.line, f"{where}{resolution.message}")
    if resolution.target is None or coords.xyxy is None:
        return None
    return check_geometry(resolution.target, coords.xyxy, frame, rules, log, file, record, where)


def parse_coordinates(record: LabelRecord, frame: tuple[int, int]) -> Coordinates:
    try:
        values = [float(v) for v in record.values]
    except (TypeError, ValueError):
        return Coordinates(None, f"coordinates {list(record.values)} are not all numbers")
    if not all(np.isfinite(values)):
        return Coordinates(None, f"coordinates {values} are not finite")
    if record.layout == "cxcywh":
        return yolo_coordinates(values)
    if len(values) != 4:
        return Coordinates(None, f"{len(values)} box values {values}, expected 4 ({record.layout})")
    width, height = frame
    a, b, c, d = (v - record.offset for v in values) if record.layout == "xyxy" else values
    x1, y1 = (c, d) if record.layout == "xyxy" else (a + c, b + d)
    return Coordinates((a / width, b / height, x1 / width, y1 / height))


def yolo_coordinates(values: list[float]) -> Coordinates:
    if len(values) == 4:
        cx, cy, w, h = values
        return Coordinates((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    fields = len(values) + 1
    if len(values) >= 6 and len(values) % 2 == 0:  # a segmentation polygon: class x1 y1 x2 y2 ...
        xs, ys = values[0::2], values[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
        return Coordinates(box, f"{fields} fields: a polygon, not a box (fix: its bounding box)", True)
    return Coordinates(None, f"{fields} fields, expected 5 (class cx cy w h); cannot be repaired")


def check_geometry(
    cls: int,
    xyxy: tuple[float, float, float, float],
    frame: tuple[int, int],
    rules: ValidationConfig,
    log: FindingLog,
    file: str,
    record: LabelRecord,
    where: str,
) -> np.ndarray | None:
    x0, y0, x1, y1 = xyxy
    shown = f"{where}box {list(record.values)}"
    if x1 <= x0 or y1 <= y0:
        log.report("degenerate_box", file, record.line, f"{shown} has zero or negative width or height")
        return None
    overhang = max(-x0, -y0, x1 - 1, y1 - 1, 0.0)
    if overhang <= ROUNDING:  # float32 or 6-decimal rounding, not an annotation problem
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        overhang = 0.0
    if overhang > rules.clip_tolerance:
        message = f"{shown} lies outside the image by {overhang:.3g} (tolerance {rules.clip_tolerance})"
        log.report("out_of_bounds", file, record.line, message)
        return None
    if overhang > 0:
        message = f"{shown} overhangs the image by {overhang:.3g} (within tolerance: fix clips it)"
        if log.report("slightly_out_of_bounds", file, record.line, message) != "fix":
            return None
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        if x1 <= x0 or y1 <= y0:
            log.report("degenerate_box", file, record.line, f"{shown} has no area left inside the image")
            return None
    width_px, height_px = (x1 - x0) * frame[0], (y1 - y0) * frame[1]
    if min(width_px, height_px) < rules.min_box_pixels:
        message = f"{shown} is {width_px:.1f}x{height_px:.1f} px, under {rules.min_box_pixels} px"
        if log.report("tiny_box", file, record.line, message) != "warn":
            return None
    return np.array([cls, x0, y0, x1, y1], dtype=np.float64)


def drop_duplicate_boxes(
    kept: list[tuple[LabelRecord, np.ndarray]], file: str, rules: ValidationConfig, log: FindingLog
) -> list[tuple[LabelRecord, np.ndarray]]:
    """Exact repeats and same-class near-duplicates (IoU >= threshold); the later one is the finding."""
    if len(kept) < 2:
        return kept
    boxes = np.stack([box for _, box in kept])
    same_class = boxes[:, None, 0] == boxes[None, :, 0]
    exact = same_class & (np.abs(boxes[:, None, 1:] - boxes[None, :, 1:]).max(axis=2) < EXACT_TOLERANCE)
    iou = iou_matrix(boxes[:, 1:], boxes[:, 1:])
    near = same_class & (iou >= rules.near_duplicate_box_iou) & ~exact
    removed: set[int] = set()
    for i, j in zip(*np.nonzero(np.triu(exact | near, k=1)), strict=True):
        if i in removed or j in removed:
            continue
        first, second = kept[i][0], kept[j][0]
        kind = "duplicate_box" if exact[i, j] else "near_duplicate_box"
        what = "repeats" if exact[i, j] else f"overlaps (IoU {iou[i, j]:.2f})"
        other = first.ref or f"the box on line {first.line}"
        message = f"{second.ref or 'box'} {list(second.values)} {what} {other}"
        if log.report(kind, file, second.line, message) != "warn":
            removed.add(int(j))
    return [item for index, item in enumerate(kept) if index not in removed]


# ---- images ------------------------------------------------------------------------------------


def hash_bits(phashes: Iterable[np.ndarray]) -> np.ndarray:
    """imagehash's 8x8 boolean phash arrays -> one uint64 per image."""
    bits = np.array([h.reshape(-1) for h in phashes], dtype=bool).reshape(-1, 64)
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> dict[tuple[int, int], int]:
    """(i, j) -> Hamming distance for every pair within `max_distance`, without comparing all pairs.

    Pigeonhole: split the 64 bits into max_distance + 1 blocks; two hashes that differ in at most
    max_distance bits agree exactly on at least one block, so only hashes sharing a block value
    are compared. Scales to hundreds of thousands of images.
    """
    blocks = max_distance + 1
    edges = np.linspace(0, 64, blocks + 1).astype(int)
    pairs: dict[tuple[int, int], int] = {}
    for start, stop in itertools.pairwise(edges):
        mask = np.uint64((1 << int(stop - start)) - 1)
        keys = (hashes >> np.uint64(start)) & mask
        order = np.argsort(keys, kind="stable")
        runs = np.split(order, np.flatnonzero(np.diff(keys[order])) + 1)
        for members in (r for r in runs if len(r) > 1):
            pairs.update(close_pairs(hashes, np.sort(members), max_distance))
    return pairs


def close_pairs(hashes: np.ndarray, members: np.ndarray, max_distance: int) -> dict[tuple[int, int], int]:
    i, j = np.triu_indices(len(members), k=1)
    distance = np.bitwise_count(hashes[members[i]] ^ hashes[members[j]])
    close = distance <= max_distance
    return {
        (int(a), int(b)): int(d)
        for a, b, d in zip(members[i][close], members[j][close], distance[close], strict=True)
    }
