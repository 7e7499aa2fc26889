"""Reading a YOLO dataset fast: the data.yaml splits, image sizes and every label file at once.

Label files are read as raw bytes (one `os.read` each), joined, and parsed in a single call to
pandas' C tokenizer; boxes are mapped back to their files by per-file line counts. The guide's
per-line Python loop (section 17.1) spends its time in the interpreter, and `np.fromstring` or
`np.loadtxt` are several times slower than the tokenizer on the same text (see
scripts/benchmark_labels.py). A malformed file is located afterwards, in plain Python, only when
the vectorised checks fail, so the error names the file, line and text.
"""

from __future__ import annotations

import codecs
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.core.artifacts import PreparedDataset
from pipeline.core.errors import DataError
from pipeline.core.io import read_json
from pipeline.core.layout import IMAGE_SUFFIXES, label_path

SPLIT_KEYS = ("train", "val", "test")
LABEL_FIELDS = 5  # class cx cy w h
READ_CHUNK = 1 << 16
EXIF_ORIENTATION = 274
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # stored sideways: the displayed frame swaps width and height
LINE_FORMAT = "`class cx cy w h` (class an integer id, coordinates normalised to [0, 1])"


@dataclass(frozen=True)
class LabelTable:
    """Every box of one split; `file_index` says which image (row of `files`) a box belongs to."""

    files: tuple[str, ...]
    classes: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64: cx, cy, w, h normalised
    file_index: np.ndarray  # (N,) int64
    missing: np.ndarray  # (F,) bool: no label file (Ultralytics treats the image as background)

    def boxes_per_file(self) -> np.ndarray:
        return np.bincount(self.file_index, minlength=len(self.files))


@dataclass(frozen=True)
class Split:
    name: str
    images: tuple[Path, ...]
    labels: tuple[str, ...]


# ---- dataset layout ------------------------------------------------------------------------------


def class_names(data: dict, source: Path) -> list[str]:
    """data.yaml `names` as a list in id order (it may be a list or an {id: name} mapping)."""
    names = data.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DataError(f"{source}: `names` is {names!r}; list the class names (e.g. names: {{0: person}})")


def split_dir(root: Path, data: dict, key: str) -> Path | None:
    """Image folder of a split, resolved like Ultralytics does (relative to `path`, else the yaml)."""
    value = data.get(key)
    if not value:
        return None
    if not isinstance(value, str):
        raise DataError(f"{root / 'data.yaml'}: `{key}: {value!r}` must be one image folder")
    base = root / data.get("path", "")
    folder = base / value
    if not folder.exists() and value.startswith("../"):  # Roboflow exports point one level too high
        folder = base / value[3:]
    if not folder.is_dir():
        raise DataError(f"{root / 'data.yaml'}: `{key}: {value}` is not a folder ({folder} does not exist)")
    return folder


def list_images(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))


def read_splits(root: Path, data: dict) -> list[Split]:
    splits = []
    for key in SPLIT_KEYS:
        folder = split_dir(root, data, key)
        if folder is not None:
            images = list_images(folder)
            splits.append(Split(key, images, tuple(str(label_path(p)) for p in images)))
    if not splits or splits[0].name != "train" or not splits[0].images:
        raise DataError(f"{PreparedDataset(root).data_yaml}: no training images (check its `train:` folder)")
    return splits


def manifest_sizes(root: Path) -> dict[str, tuple[int, int]]:
    """(width, height) per image path relative to `root`, as prepare recorded them in manifest.json:
    the frame its labels are normalised by, known without opening 50,000 image headers."""
    path = PreparedDataset(root).manifest
    files = read_json(path).get("files", []) if path.exists() else []
    return {f["path"]: (int(f["width"]), int(f["height"])) for f in files if "width" in f}


def read_image_sizes(images: Sequence[Path], root: Path, known: dict[str, tuple[int, int]]) -> np.ndarray:
    """(F, 2) width, height of each image: from `known` (the manifest), else from its header."""
    sizes = np.empty((len(images), 2), dtype=np.int64)
    for i, path in enumerate(tqdm(images, desc="image sizes", unit="img", disable=None, leave=False)):
        key = path.relative_to(root).as_posix() if path.is_relative_to(root) else None
        sizes[i] = known.get(key) or header_size(path)
    return sizes


def header_size(path: Path) -> tuple[int, int]:
    """Width and height as displayed (EXIF rotation applied), without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION) in ROTATED_ORIENTATIONS:
                return height, width
            return width, height
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read the image header ({exc}); prepare drops such files") from None


# ---- label files ---------------------------------------------------------------------------------


def read_labels(paths: Sequence[str], num_classes: int) -> LabelTable:
    """All boxes in `paths` (one label file per image; a missing file means no boxes)."""
    chunks, missing = read_bytes(paths)
    text = b"\n".join(chunks)
    values = _parse(text, chunks, paths)
    counts = np.fromiter((_line_count(c) for c in chunks), dtype=np.int64, count=len(chunks))
    # Each file's newline count is at least its box count (blank lines are skipped), so equal totals
    # mean equal counts per file; a bare CR also ends a line for the parser: count exactly then.
    if b"\r" in text or len(values) != counts.sum():
        counts = np.fromiter((_data_lines(c) for c in chunks), dtype=np.int64, count=len(chunks))
    if len(values) != counts.sum():
        raise DataError(f"labels beside {paths[0]}: {len(values)} boxes parsed from {counts.sum()} lines")
    classes = values[:, 0]
    if not _valid(values, classes, num_classes):
        _raise_first_bad_line(chunks, paths, num_classes)
    return LabelTable(
        files=tuple(str(p) for p in paths),
        classes=classes.astype(np.int64),
        boxes=values[:, 1:],
        file_index=np.repeat(np.arange(len(paths), dtype=np.int64), counts),
        missing=missing,
    )


def read_bytes(paths: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
    """Each file's bytes (b"" when absent) and which were absent. Raw os calls: a buffered
    file object per file costs more than reading these few hundred bytes."""
    chunks, missing = [], np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(tqdm(paths, desc="label files", unit="file", disable=None, leave=False)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            missing[i] = True
            chunks.append(b"")
            continue
        try:
            chunks.append(_read_all(fd).removeprefix(codecs.BOM_UTF8))  # Windows editors write one
        finally:
            os.close(fd)
    return chunks, missing


def _read_all(fd: int) -> bytes:
    data = os.read(fd, READ_CHUNK)
    if len(data) < READ_CHUNK:
        return data
    parts = [data]
    while part := os.read(fd, READ_CHUNK):
        parts.append(part)
    return b"".join(parts)


def _line_count(chunk: bytes) -> int:
    """Newline-separated lines, blank ones included."""
    return chunk.count(b"\n") + (not chunk.endswith(b"\n")) if chunk else 0


def _data_lines(chunk: bytes) -> int:
    """Lines that are not blank, ended by LF, CRLF or CR as the parser ends them."""
    return sum(1 for line in chunk.splitlines() if line.strip())


def _parse(text: bytes, chunks: list[bytes], paths: Sequence[str]) -> np.ndarray:
    """(N, 5) float64 from whitespace-separated text; blank lines are skipped."""
    import pandas as pd

    if not text or text.isspace():  # isspace stops at the first character that is not (strip copies)
        return np.empty((0, LABEL_FIELDS), dtype=np.float64)
    try:  # single spaces, as YOLO tools write them: about twice as fast as the regex separator
        values = pd.read_csv(io.BytesIO(text), sep=" ", header=None, dtype=np.float64, engine="c").to_numpy()
        if values.shape[1] == LABEL_FIELDS and np.isfinite(values).all():
            return values
    except (ValueError, pd.errors.ParserError):
        pass  # tabs, runs of spaces or a bad line: the general whitespace parse below decides
    try:
        frame = pd.read_csv(io.BytesIO(text), sep=r"\s+", header=None, dtype=np.float64, engine="c")
    except (ValueError, pd.errors.ParserError):  # a field that is not a number, or too many fields
        _raise_first_bad_line(chunks, paths, num_classes=None)
    if frame.shape[1] != LABEL_FIELDS:
        _raise_first_bad_line(chunks, paths, num_classes=None)
    return frame.to_numpy()


def _valid(values: np.ndarray, classes: np.ndarray, num_classes: int) -> bool:
    finite = bool(np.isfinite(values).all())  # a short line parses with NaN in its missing fields
    return finite and bool(((classes >= 0) & (classes < num_classes) & (classes == np.floor(classes))).all())


def _raise_first_bad_line(chunks: list[bytes], paths: Sequence[str], num_classes: int | None) -> NoReturn:
    for chunk, path in zip(chunks, paths, strict=True):
        for number, line in enumerate(chunk.decode("utf-8", errors="replace").splitlines(), start=1):
            problem = line_problem(line, num_classes)
            if problem:
                raise DataError(
                    f"{path}:{number}: {line.strip()!r} {problem}; each line must be {LINE_FORMAT}. "
                    "Fix or remove the line (the prepare stage validates and repairs labels)"
                )
    raise DataError(f"labels in {Path(paths[0]).parent} could not be parsed as {LINE_FORMAT}")


def line_problem(line: str, num_classes: int | None) -> str | None:
    """Why one label line is unusable, or None."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) != LABEL_FIELDS:
        return f"has {len(fields)} fields, not {LABEL_FIELDS} (polygon or extra columns?)"
    try:
        numbers = [float(f) for f in fields]
    except ValueError:
        return "holds a field that is not a number"
    if not all(np.isfinite(numbers)):
        return "holds a NaN or infinite value"
    cls = numbers[0]
    if cls != int(cls) or cls < 0:
        return f"has class {fields[0]}, not a non-negative integer id"
    if num_classes is not None and cls >= num_classes:
        return f"has class {int(cls)}, but data.yaml names only {num_classes} classes (0-{num_classes - 1})"
    return None
