"""What every dataset reader returns: `Entry` rows (one per image, labels as the format wrote them)
inside a `Source`, and the helpers the readers share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.validation import Finding

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class LabelRecord:
    """One box as the source wrote it; `pipeline.data.validation` parses and checks it."""

    line: int | None  # 1-based line in the label file, where the format has lines
    cls: str  # class token: an id ("0") or, where `Source.names_in_labels`, a name ("RBC")
    values: tuple[Any, ...]  # coordinate tokens as written
    layout: str  # "cxcywh" normalised (YOLO; more values: a polygon), "xyxy" or "xywh" in pixels
    ref: str = ""  # where lines do not help, e.g. "annotation id=12"
    offset: float = 0.0  # subtracted from pixel coordinates (1 for VOC's 1-based indices)


@dataclass(frozen=True)
class Entry:
    """One image of the source and what its annotation says about it."""

    key: str  # the image's path relative to the dataset root (synthetic: synthetic/<name>)
    stem: str
    image: Path | None  # the file; None for synthetic frames
    label_file: str | None  # the label source relative to the root; None: the image has none
    labels: tuple[LabelRecord, ...] = ()
    split: str | None = None  # the source's split, if it has splits
    group: str | None = None  # a group the source knows (synthetic sequences)
    stated_size: tuple[int, int] | None = None  # (width, height) the annotation states
    frame: np.ndarray | None = field(default=None, compare=False)  # synthetic pixels
    label_error: str | None = None  # the label file does not parse (the whole file)
    label_error_line: int | None = None
    listed: bool = True  # False: the source has split lists and none names this image


@dataclass(frozen=True)
class Source:
    entries: Callable[[], Iterator[Entry]]  # may be called more than once (dataset-wide statistics)
    count: int
    class_names: dict[int, str] | None  # class id -> source name; None: labels carry names
    has_splits: bool
    orphans: tuple[Finding, ...] = ()
    root: Path | None = None


def orphan(file: str, line: int | None, message: str, boxes: int | None = None) -> Finding:
    detail = f" ({boxes} box(es) ignored)" if boxes else ""
    return Finding("orphan_label", file, line, message + detail)


def relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def stated_size(width: Any, height: Any) -> tuple[int, int] | None:
    try:
        size = (int(float(width)), int(float(height)))
    except (TypeError, ValueError):
        return None
    return size if min(size) > 0 else None
