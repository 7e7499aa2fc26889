"""Prepare, per image: decode and check the file, decide the labels' frame, turn its pixels into the
output's (8-bit, the model's channels), and link the source file where it can serve as it is or
write a PNG where it cannot (16-bit, EXIF rotation to apply, a JPEG Ultralytics would rewrite)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.core.config import PipelineConfig
from pipeline.core.data_config import NormalizeConfig, ValidationConfig
from pipeline.core.errors import DataError
from pipeline.core.layout import label_path
from pipeline.data.source import Entry, Source
from pipeline.data.validation import (
    ClassResolver,
    FindingLog,
    LabelCheck,
)

DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL modes of 16-bit (and 32-bit int) frames
ORIENTATIONS = {
    2: "mirrored",
    3: "rotated 180",
    4: "flipped vertically",
    5: "mirrored and rotated 90 CCW",
    6: "rotated 90 CW",
    7: "mirrored and rotated 90 CW",
    8: "rotated 90 CCW",
}
LINK_FALLBACKS = {
    "hardlink": ("hardlink", "symlink", "copy"),
    "symlink": ("symlink", "copy"),
    "copy": ("copy",),
}
POOL = ".pool"  # staging folder beside images/<split>/, same depth, so relative symlinks survive moves
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class Item:
    """An image that passed ingest: staged in the pool, waiting for its split."""

    key: str
    name: str  # output file name (unique stem + suffix)
    split: str | None
    group: str
    boxes: np.ndarray  # (N, 5): class, x0, y0, x1, y1 normalised
    size: tuple[int, int]
    sha256: str
    pixel_hash: str
    phash: np.ndarray  # imagehash's 8x8 bits
    placed: str  # hardlink, symlink, copy or converted
    deep: bool  # normalised from more than 8 bits
    unmapped: int  # boxes data.class_map dropped on purpose
    repaired: bool = (
        False  # a JPEG with bytes after its end marker, re-encoded (Ultralytics would rewrite it)
    )
    label_link: Path | None = None  # the source's label file, already what prepare would write


@dataclass(frozen=True)
class Decoded:
    image: Image.Image | None  # files
    array: np.ndarray | None  # synthetic frames
    data: bytes | None  # the file's bytes (hashed when the file is linked)
    orientation: int
    repaired: bool = False  # decodes, but must be re-encoded: Ultralytics would rewrite it in place


@dataclass(frozen=True)
class FrameDecision:
    size: tuple[int, int]  # (width, height) the labels are normalised by
    transpose: bool  # apply the EXIF orientation to the pixels
    reencode: bool  # the file cannot be linked as it is


@dataclass(frozen=True)
class Context:
    cfg: PipelineConfig
    classes: ClassResolver
    log: FindingLog
    pool: Path
    deep_range: tuple[float, float] | None  # dataset-wide stretch, when normalize.scope=dataset


# ---- decoding: what the file holds, and the frame its labels refer to ----------------------------


def decode(entry: Entry, log: FindingLog) -> Decoded | None:
    if entry.frame is not None:
        return Decoded(None, entry.frame, None, 1)
    assert entry.image is not None  # readers give every entry a file or a frame
    try:
        data = entry.image.read_bytes()
        stream = io.BytesIO(data)
        image = pillow_open(stream)
        image.load()  # decodes everything: a truncated file raises here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL names the in-memory stream it read from; the user needs the file
        message = str(exc).replace(repr(stream), str(entry.image))
        log.report("unreadable_image", entry.key, None, f"cannot be decoded: {message}")
        return None
    if image.format == "JPEG" and JPEG_END not in data[2:]:
        log.report("unreadable_image", entry.key, None, "truncated JPEG: no end-of-image marker")
        return None
    repaired = image.format == "JPEG" and not data.endswith(JPEG_END)  # Ultralytics checks the last 2 bytes
    if image.mode == "F":
        message = "32-bit float frame: convert it to 16-bit counts (PNG/TIFF) first"
        log.report("unreadable_image", entry.key, None, message, "export radiometric frames as 16-bit")
        return None
    return Decoded(image, None, data, int(image.getexif().get(0x0112, 1) or 1), repaired)


def pillow_open(file: Any) -> Image.Image:
    """Pillow's own Image.open. Once imported, Ultralytics wraps it so that a file Pillow cannot
    identify makes it pip-install a HEIF plugin; validating a dataset must never install anything."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)(file)


def decide_frame(
    entry: Entry, decoded: Decoded, rules: ValidationConfig, log: FindingLog
) -> FrameDecision | None:
    """The frame the labels refer to, from EXIF orientation and the annotation's stated size."""
    raw = (
        (decoded.array.shape[1], decoded.array.shape[0]) if decoded.array is not None else decoded.image.size
    )
    size, transpose, reencode = raw, False, False
    if decoded.orientation in ORIENTATIONS:
        displayed = raw[::-1] if decoded.orientation >= 5 else raw
        frame, how = labels_frame(entry.stated_size, raw, displayed, rules)
        message = (
            f"EXIF orientation {decoded.orientation} ({ORIENTATIONS[decoded.orientation]}): OpenCV and "
            f"Ultralytics apply it, Pillow-based tools do not; the labels are taken to be in the {frame} "
            f"frame ({how})"
        )
        action = log.report("exif_orientation", entry.key, None, message)
        if action in ("error", "drop"):
            return None
        size = displayed if frame == "displayed" else raw
        transpose, reencode = action == "fix" and frame == "displayed", action == "fix"
    if entry.stated_size and entry.stated_size != size:
        stated = "x".join(map(str, entry.stated_size))
        message = f"the annotation says {stated} px, the image {entry.key} is {size[0]}x{size[1]}"
        if log.report("size_mismatch", entry.label_file or entry.key, None, message) != "warn":
            return None
        size = entry.stated_size  # warn: the annotation's pixel coordinates refer to its own size
    return FrameDecision(size, transpose, reencode)


def labels_frame(
    stated: tuple[int, int] | None, raw: tuple[int, int], displayed: tuple[int, int], rules: ValidationConfig
) -> tuple[str, str]:
    if stated and stated == displayed != raw:
        return "displayed", "the annotation's width/height match it"
    if stated and stated == raw != displayed:
        return "stored", "the annotation's width/height match it"
    return rules.exif_labels_frame, "data.validation.exif_labels_frame"


# ---- pixels: normalise, convert, link ----------------------------------------------------------


def stage_image(
    entry: Entry,
    decoded: Decoded,
    decision: FrameDecision,
    check: LabelCheck,
    split: str | None,
    group: str,
    context: Context,
    names: set[str],
) -> Item:
    channels = context.cfg.sensor.channels
    pixels, deep = source_pixels(decoded, decision)
    output = to_output(pixels, channels, context.cfg.data.normalize, context.deep_range)
    stem = unique_name(entry.stem, names)
    if linkable(entry, decoded, decision, channels):
        name = stem + entry.image.suffix
        placed = place(entry.image, context.pool / name, context.cfg.data.link)
        digest = hashlib.sha256(decoded.data).hexdigest()
    else:
        name, placed = stem + ".png", "converted"
        digest = write_png(stored_pixels(output, pixels), context.pool / name)
    size = (output.shape[1], output.shape[0])
    if placed != "converted" and decoded.orientation in (5, 6, 7, 8):
        size = size[::-1]  # a linked file keeps its EXIF rotation, which Ultralytics applies when reading
    hashes = (digest, pixel_hash(output), phash(output))
    return Item(
        *(entry.key, name, split, group, check.boxes, size, *hashes, placed, deep, check.unmapped),
        repaired=decoded.repaired,
        label_link=verbatim_label(entry, check.boxes),
    )


def verbatim_label(entry: Entry, boxes: np.ndarray) -> Path | None:
    """The source's YOLO label file when it already says what prepare would write: the output
    links it like the image instead of rewriting it, so the source's bytes stay (full precision) and
    cost no disk. Only plain ASCII lines of five numbers (no BOM, CR or polygon, which Ultralytics
    would read differently) holding the same boxes in the same order."""
    if entry.image is None or not (entry.label_file or "").endswith(".txt"):
        return None
    path = label_path(entry.image)
    data = path.read_bytes()
    lines = data.decode("ascii", errors="replace").strip().splitlines()
    if not data.isascii() or b"\r" in data or any(len(line.split()) != 5 for line in lines):
        return None
    try:
        rows = np.array([line.split() for line in lines], dtype=float).reshape(-1, 5)
    except ValueError:  # a token that is not a number
        return None
    x0, y0, x1, y1 = boxes[:, 1:].T
    written = np.stack([boxes[:, 0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)
    same = rows.shape == written.shape and np.allclose(rows, written, rtol=0, atol=1e-9)
    return path if same else None


def linkable(entry: Entry, decoded: Decoded, decision: FrameDecision, channels: int) -> bool:
    """The source file can serve as it is: intact, 8-bit, the output's channels or 8-bit grey for a
    3-channel model (Ultralytics' cv2.imread makes grey 3-channel itself), no rotation to apply."""
    wanted = ("L",) if channels == 1 else ("RGB", "L")
    intact = not (decision.reencode or decoded.repaired)
    return entry.image is not None and intact and decoded.image.mode in wanted


def stored_pixels(output: np.ndarray, source: np.ndarray) -> np.ndarray:
    """What the PNG holds: grey stays one channel even for a 3-channel model (a third of the disk),
    because Ultralytics' cv2.imread replicates it into the same three channels `output` holds."""
    return output[..., 0] if source.ndim == 2 and output.ndim == 3 else output


def source_pixels(decoded: Decoded, decision: FrameDecision) -> tuple[np.ndarray, bool]:
    """Pixels in the labels' frame: uint8 grey (H, W) or RGB (H, W, 3), or deeper grey counts."""
    if decoded.array is not None:
        return decoded.array, decoded.array.dtype != np.uint8
    image = ImageOps.exif_transpose(decoded.image) if decision.transpose else decoded.image
    if image.mode in DEEP_MODES:
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16), True
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    return np.asarray(image), False


def to_output(
    pixels: np.ndarray, channels: int, spec: NormalizeConfig, deep_range: tuple | None
) -> np.ndarray:
    if pixels.dtype != np.uint8:
        pixels = normalise(pixels, spec, deep_range)
    if channels == 1 and pixels.ndim == 3:
        return np.asarray(Image.fromarray(pixels).convert("L"))
    if channels == 3 and pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)  # thermal grey replicated, as Ultralytics expects
    return pixels


def normalise(counts: np.ndarray, spec: NormalizeConfig, deep_range: tuple | None) -> np.ndarray:
    """16-bit counts -> 8 bit: fixed range, or a percentile stretch of this frame or the dataset."""
    if spec.method == "fixed":
        low, high = spec.fixed_low, spec.fixed_high
    elif deep_range is not None:
        low, high = deep_range
    else:
        histogram = np.bincount(counts.ravel(), minlength=65536)
        low, high = percentile_range(histogram, spec.low_percentile, spec.high_percentile)
    scaled = (counts.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def percentile_range(histogram: np.ndarray, low: float, high: float) -> tuple[float, float]:
    cumulative = np.cumsum(histogram)
    total = cumulative[-1]
    lo = float(np.searchsorted(cumulative, total * low / 100.0))
    hi = float(np.searchsorted(cumulative, total * high / 100.0))
    return lo, max(hi, lo + 1.0)


def dataset_range(source: Source, spec: NormalizeConfig) -> tuple[float, float] | None:
    """One percentile stretch for all deep frames (normalize.scope=dataset): a first pass of histograms."""
    if spec.method != "percentile" or spec.scope != "dataset":
        return None
    histogram = np.zeros(65536, dtype=np.int64)
    for entry in tqdm(
        source.entries(), total=source.count, desc="prepare: range", unit="image", disable=None
    ):
        counts = deep_counts(entry)
        if counts is not None:
            histogram += np.bincount(counts.ravel(), minlength=65536)
    return percentile_range(histogram, spec.low_percentile, spec.high_percentile) if histogram.any() else None


def deep_counts(entry: Entry) -> np.ndarray | None:
    if entry.frame is not None:
        return entry.frame if entry.frame.dtype == np.uint16 else None
    try:
        with pillow_open(entry.image) as image:
            return (
                np.clip(np.asarray(image), 0, 65535).astype(np.uint16) if image.mode in DEEP_MODES else None
            )
    except (OSError, SyntaxError, ValueError):
        return None  # the main pass reports it as unreadable_image


def unique_name(stem: str, taken: set[str]) -> str:
    """Output stems are unique across splits (case-insensitively, for case-insensitive filesystems)."""
    name, n = stem, 1
    while name.casefold() in taken:
        n += 1
        name = f"{stem}__{n}"
    taken.add(name.casefold())
    return name


def place(source: Path, target: Path, mode: str) -> str:
    """Link the unconverted source image into the output, falling back where the filesystem refuses."""
    for method in LINK_FALLBACKS[mode]:
        try:
            if method == "hardlink":
                os.link(source, target)
            elif method == "symlink":
                os.symlink(os.path.relpath(source.resolve(), target.parent), target)
            else:
                shutil.copyfile(source, target)
            return method
        except OSError:
            target.unlink(missing_ok=True)
    raise DataError(f"cannot link or copy {source} to {target}: check permissions and free space")


def write_png(pixels: np.ndarray, target: Path) -> str:
    import cv2

    bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise DataError(f"OpenCV could not encode {target.name} as PNG")
    data = encoded.tobytes()
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def pixel_hash(pixels: np.ndarray) -> str:
    """Identity of the decoded pixels: equal for byte-different files showing the same image."""
    digest = hashlib.sha1(str(pixels.shape).encode(), usedforsecurity=False)
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def phash(pixels: np.ndarray) -> np.ndarray:
    import imagehash

    return imagehash.phash(Image.fromarray(pixels)).hash
