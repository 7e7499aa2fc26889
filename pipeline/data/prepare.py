"""Stage 1, prepare: read a dataset, validate every image and label, split it, write the YOLO layout.

`run(cfg)` reads the source (`pipeline.data.readers`: YOLO txt, COCO JSON, Pascal VOC XML or the
synthetic generator), checks each image and box (`pipeline.data.validation`) and applies the
configured policy to each finding, turns 16-bit thermal frames into 8-bit images, keeps the
source's splits or splits by group, checks for duplicate images within and across the final
splits, and writes {paths.prepared}/:

    images/{train,val,test}/   hard links to the source images where no conversion is needed
    labels/{train,val,test}/   YOLO txt, one per image (empty: a background image)
    data.yaml                  relative paths, no `path:` key, names
    manifest.json              per-file sha256, counts per split and class, dataset_hash
    report.json, report.md     every finding with file, line, action and fix hint

Everything is written into a temporary sibling folder that replaces the output only at the end
(`pipeline.core.io.swap_dir`), so an interrupted run never leaves half a dataset, and the next run
removes what a killed one left. When any finding's policy is `error`, the previous dataset is kept
as it was, the reports go to {paths.prepared}.failed-report/ and a DataError names them. The
source is never modified; a JPEG Ultralytics would rewrite ("corrupt JPEG restored") is re-encoded
here, so training never changes a prepared file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.core.config import (
    SPLITS,
    DataConfig,
    NormalizeConfig,
    PipelineConfig,
    SplitConfig,
    ValidationConfig,
)
from pipeline.core.errors import DataError
from pipeline.core.io import recover_swap, swap_dir, write_json, write_text
from pipeline.data.readers import Entry, Source, read_source
from pipeline.data.validation import (
    ClassResolver,
    FindingLog,
    LabelCheck,
    check_labels,
    first_errors,
    hash_bits,
    near_pairs,
    render_markdown,
    report_payload,
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
FAILED_REPORT_SUFFIX = ".failed-report"  # {paths.prepared}.failed-report/: a failed run's reports
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class PrepareResult:
    output_dir: Path
    dataset_hash: str
    split_mode: str  # "source": the source's splits kept; "group": split by group here
    images: dict[str, int]  # per split
    boxes: dict[str, int]  # per split
    per_class: dict[str, int]
    findings: dict[str, int]  # count per finding kind
    actions: dict[str, str]  # what the policy did for each kind found
    report: Path
    split_origins: dict[str, str]  # per split: where it came from and what changed it


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


# ---- stage entry points ------------------------------------------------------------------------


def run(cfg: PipelineConfig) -> PrepareResult:
    """Prepare `cfg.data` into `cfg.paths.prepared`; DataError when a finding's policy is `error`."""
    data = cfg.data
    source = read_source(data, cfg.classes.names)
    log = FindingLog(data.validation.policy)
    for finding in source.orphans:
        log.add(finding)
    classes = ClassResolver(source.class_names, dict(data.class_map), tuple(cfg.classes.names))
    out = Path(cfg.paths.prepared)
    with staging(out) as stage:
        context = Context(cfg, classes, log, stage / "images" / POOL, dataset_range(source, data.normalize))
        items = ingest(source, context)
        items, mode = assign_splits(items, source, data.split, cfg.seed)
        assigned = {item.key: item.split for item in items}
        items = check_duplicates(
            items, data.validation, log, mode == "source" and not data.split.move_source_images
        )
        return finish(stage, out, items, mode, context, split_history(assigned, items, mode))


def main(argv: list[str], prog: str = "python -m pipeline prepare", command: str = "prepare") -> int:
    from pipeline.core.cli import stage_parser
    from pipeline.core.config import load_params

    parser = stage_parser(prog, "Read, validate and split the dataset `data` describes into paths.prepared.")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    started = time.perf_counter()
    result = run(cfg)
    print(describe(result, time.perf_counter() - started))
    return 0


def describe(result: PrepareResult, seconds: float) -> str:
    splits = ", ".join(f"{s} {n}" for s, n in result.images.items())
    origins = "".join(f"\n    {s}: {text}" for s, text in result.split_origins.items())
    classes = ", ".join(f"{c} {n}" for c, n in result.per_class.items())
    found = ", ".join(f"{k} {n} ({result.actions[k]})" for k, n in result.findings.items()) or "none"
    return (
        f"prepared {sum(result.images.values())} images, {sum(result.boxes.values())} boxes -> "
        f"{result.output_dir} in {seconds:.1f} s\n"
        f"  splits ({result.split_mode}): {splits}{origins}\n  boxes per class: {classes}\n"
        f"  findings: {found}\n  dataset_hash {result.dataset_hash}\n  report: {result.report}"
    )


# ---- ingest: one image at a time ---------------------------------------------------------------


def ingest(source: Source, context: Context) -> list[Item]:
    context.pool.mkdir(parents=True)
    names: set[str] = set()
    items = []
    entries = tqdm(source.entries(), total=source.count, desc="prepare", unit="image", disable=None)
    for entry in entries:
        item = ingest_one(entry, context, names)
        if item is not None:
            items.append(item)
    return items


def ingest_one(entry: Entry, context: Context, names: set[str]) -> Item | None:
    rules, log = context.cfg.data.validation, context.log
    split = entry.split
    if not entry.listed:
        message = "is in no split list (ImageSets); warn puts it in train"
        if log.report("unlisted_image", entry.key, None, message) != "warn":
            return None
        split = "train"
    missing = entry.label_file is None and not rules.missing_label_is_background
    if missing and log.report("missing_label", entry.key, None, "has no label file") != "warn":
        return None
    decoded = decode(entry, log)
    if decoded is None:
        return None
    decision = decide_frame(entry, decoded, rules, log)
    if decision is None:
        return None
    check = check_labels(entry, decision.size, context.classes, rules, log)
    if check.drop_image:
        return None
    empty = entry.label_file is not None and not entry.labels and not entry.label_error
    message = f"{entry.key} has no boxes: a background image"
    if empty and log.report("background_image", entry.label_file, None, message) == "drop":
        return None
    group = entry.group or group_of(entry, context.cfg.data.split, log)
    return stage_image(entry, decoded, decision, check, split, group, context, names)


def decode(entry: Entry, log: FindingLog) -> Decoded | None:
    if entry.frame is not None:
        return Decoded(None, entry.frame, None, 1)
    assert entry.image is not None  # readers give every entry a file or a frame
    try:
        data = entry.image.read_bytes()
        image = pillow_open(io.BytesIO(data))
        image.load()  # decodes everything: a truncated file raises here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        log.report("unreadable_image", entry.key, None, f"cannot be decoded: {exc}")
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


def group_of(entry: Entry, spec: SplitConfig, log: FindingLog) -> str:
    if spec.group_pattern is None:
        return entry.stem
    match = re.search(spec.group_pattern, entry.stem)
    if match is None:
        message = f"name {entry.stem!r} does not match group_pattern {spec.group_pattern!r}: its own group"
        log.report("no_group", entry.key, None, message)
        return entry.stem
    return match.group(1) if match.groups() else match.group(0)


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
        digest = write_png(output, context.pool / name)
    size = (output.shape[1], output.shape[0])
    if placed != "converted" and decoded.orientation in (5, 6, 7, 8):
        size = size[::-1]  # a linked file keeps its EXIF rotation, which Ultralytics applies when reading
    hashes = (digest, pixel_hash(output), phash(output))
    return Item(
        *(entry.key, name, split, group, check.boxes, size, *hashes, placed, deep, check.unmapped),
        repaired=decoded.repaired,
    )


def linkable(entry: Entry, decoded: Decoded, decision: FrameDecision, channels: int) -> bool:
    """The source file can serve as it is: intact, 8-bit, the output's channels or 8-bit grey for a
    3-channel model (Ultralytics' cv2.imread makes grey 3-channel itself), no rotation to apply."""
    wanted = ("L",) if channels == 1 else ("RGB", "L")
    intact = not (decision.reencode or decoded.repaired)
    return entry.image is not None and intact and decoded.image.mode in wanted


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


# ---- splits ------------------------------------------------------------------------------------


def assign_splits(items: list[Item], source: Source, spec: SplitConfig, seed: int) -> tuple[list[Item], str]:
    """Keep the source's train/val(/test), or split by group, stratified by class presence."""
    present = {item.split for item in items}
    has_source_splits = source.has_splits and {"train", "val"} <= present
    if spec.mode == "source" and not has_source_splits:
        raise DataError(
            f"data.split.mode=source, but the source has no train and val splits (found "
            f"{sorted(map(str, present))}); use data.split.mode=auto or group to split by group"
        )
    if spec.mode != "group" and has_source_splits:
        return items, "source"
    where = split_groups(items, spec, seed)
    return [replace(item, split=where[item.group]) for item in items], "group"


def split_groups(items: list[Item], spec: SplitConfig, seed: int) -> dict[str, str]:
    """Whole groups to splits, stratified by class presence (iterative stratification on groups).

    Each split wants its share of every class's frames and of all frames. The class with the
    fewest frames still unplaced goes first: its groups (in a seeded-hash order, so the split is
    deterministic) each go to the split that wants that class most, ties broken by the frames
    it still wants. Groups without boxes then fill the frame shares."""
    presence, frames = group_presence(items)
    ratios = {s: r for s, r in (("train", spec.train), ("val", spec.val), ("test", spec.test)) if r > 0}
    totals = Counter()
    for counts in presence.values():
        totals.update(counts)
    want = {s: {c: r * n for c, n in totals.items()} for s, r in ratios.items()}
    want_frames = {s: r * frames.total() for s, r in ratios.items()}
    where: dict[str, str] = {}
    unplaced = sorted(frames, key=lambda g: seeded(seed, g))
    while unplaced:
        remaining = Counter()
        for group in unplaced:
            remaining.update(presence[group])
        rarest = min(remaining, key=lambda c: (remaining[c], c), default=None)
        batch = [g for g in unplaced if rarest is None or presence[g][rarest] > 0]
        for group in batch:
            split = max(ratios, key=lambda s: (want[s].get(rarest, 0.0), want_frames[s]))
            where[group] = split
            want_frames[split] -= frames[group]
            for cls, n in presence[group].items():
                want[split][cls] -= n
        unplaced = [g for g in unplaced if g not in where]
    return fill_empty_splits(where, frames, ratios)


def group_presence(items: list[Item]) -> tuple[dict[str, Counter[int]], Counter[str]]:
    """Per group: how many of its frames show each class; and its frame count."""
    presence: dict[str, Counter[int]] = defaultdict(Counter)
    frames: Counter[str] = Counter()
    for item in items:
        frames[item.group] += 1
        presence[item.group].update({int(c) for c in item.boxes[:, 0]})
    return presence, frames


def fill_empty_splits(
    where: dict[str, str], frames: Counter[str], ratios: dict[str, float]
) -> dict[str, str]:
    """A split with a share but no group takes the smallest group of the split with the most groups."""
    for split in ratios if where else ():
        members = Counter(where.values())
        donor, count = max(members.items(), key=lambda kv: (kv[1], kv[0] == "train"))
        if members[split] == 0 and count > 1:
            smallest = min((g for g, s in where.items() if s == donor), key=lambda g: (frames[g], g))
            where[smallest] = split
    return where


def seeded(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


# ---- duplicates within and across the final splits ---------------------------------------------


def check_duplicates(
    items: list[Item], rules: ValidationConfig, log: FindingLog, keep_splits: bool = False
) -> list[Item]:
    """Leakage (identical or near-identical images in two splits) first, then duplicates within a split.
    `keep_splits`: the source's own splits; split_leakage=fix reports the leakage instead of moving images."""
    if len(items) < 2:
        return items
    pairs = near_pairs(hash_bits(item.phash for item in items), rules.near_duplicate_image_distance)
    exact = {(i, j) for i, j in pairs if items[i].pixel_hash == items[j].pixel_hash}
    cross = {p for p in pairs if items[p[0]].split != items[p[1]].split}
    items, dropped = resolve_leakage(items, pairs, sorted(cross), exact, log, keep_splits)
    # a near pair is reported once, as leakage; an identical pair moved together is still a duplicate
    within = {p: d for p, d in pairs.items() if p not in cross or p in exact}
    return drop_split_duplicates(items, within, exact, dropped, log)


def resolve_leakage(
    items: list[Item],
    pairs: dict[tuple[int, int], int],
    cross: list,
    exact: set,
    log: FindingLog,
    keep_splits: bool,
) -> tuple[list[Item], set[int]]:
    action, dropped = log.action("split_leakage"), set()
    if action == "fix" and keep_splits:
        action = "keep"
    effect = {
        "fix": "moved, with its group, to the earliest split",
        "drop": "dropped",
        "keep": "kept in the source's split (data.split.move_source_images=true lets fix move it)",
    }.get(action, "kept")
    for pair in cross:
        i, j = sorted(pair, key=lambda k: (SPLITS.index(items[k].split), k))
        first, later = items[i], items[j]
        similar = likeness(pairs[pair], pair in exact)
        message = f"in {later.split}: {similar} {first.key} in {first.split}; {effect}"
        log.report("split_leakage", later.key, None, message)
        dropped.add(j)
    if action == "fix":
        return merge_leaking_groups(items, cross), set()
    return items, dropped if action == "drop" else set()


def merge_leaking_groups(items: list[Item], cross: list[tuple[int, int]]) -> list[Item]:
    """Each connected set of leaking images, with all of their groups, goes to its earliest split."""
    parent = {item.group: item.group for item in items}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for i, j in cross:
        parent[root(items[i].group)] = root(items[j].group)
    earliest: dict[str, int] = {}
    for item in items:
        r = root(item.group)
        earliest[r] = min(earliest.get(r, len(SPLITS)), SPLITS.index(item.split))
    return [replace(item, split=SPLITS[earliest[root(item.group)]]) for item in items]


def drop_split_duplicates(
    items: list[Item], pairs: dict[tuple[int, int], int], exact: set, dropped: set[int], log: FindingLog
) -> list[Item]:
    for (i, j), distance in sorted(pairs.items()):
        a, b, same = items[i], items[j], (i, j) in exact
        if i in dropped or j in dropped or a.split != b.split or (not same and a.group == b.group):
            continue  # near-identical frames of one sequence are expected; grouping keeps them together
        kind = "duplicate_image" if same else "near_duplicate_image"
        message = f"{likeness(distance, same)} {a.key} (both in {a.split})"
        if log.report(kind, b.key, None, message) != "warn":
            dropped.add(j)
    return [item for index, item in enumerate(items) if index not in dropped]


def likeness(distance: int, exact: bool) -> str:
    return "identical pixels to" if exact else f"a near-duplicate (phash distance {distance}) of"


# ---- output ------------------------------------------------------------------------------------


def finish(
    stage: Path, out: Path, items: list[Item], mode: str, context: Context, origins: dict[str, str]
) -> PrepareResult:
    cfg, log = context.cfg, context.log
    names = list(cfg.classes.names)
    files = write_layout(stage, items)
    files.append(("data.yaml", write_data_yaml(stage, items, names, cfg.sensor.channels)))
    counts = count(items, names)
    manifest = build_manifest(cfg.data, items, files, mode, counts, context)
    empty = [s for s in ("train", "val") if counts["splits"][s]["images"] == 0]
    status = "failed" if log.errors() or empty else "ok"
    summary = {
        "status": status,
        "dataset_hash": manifest["dataset_hash"],
        "split_mode": mode,
        "split_origins": origins,
        **counts,
    }
    payload = report_payload(log, status, summary)
    if status == "failed":
        clear_dataset(stage)
    else:
        write_json(stage / "manifest.json", manifest | {"split_origins": origins})
    write_json(stage / "report.json", payload)
    write_text(stage / "report.md", render_markdown(payload))
    if status == "failed":
        kept = out.exists()
        swap_dir(stage, failed_report_dir(out))
        raise DataError(failure_message(log, empty, out, kept))
    swap_dir(stage, out)
    shutil.rmtree(failed_report_dir(out), ignore_errors=True)  # an earlier failure's reports no longer apply
    return result_of(out, manifest, counts, log, mode, origins)


def failed_report_dir(out: Path) -> Path:
    return out.parent / f"{out.name}{FAILED_REPORT_SUFFIX}"


def split_history(assigned: dict[str, str | None], items: list[Item], mode: str) -> dict[str, str]:
    """Per split, in words: where its images came from, and what moved or dropped them afterwards."""
    final = {item.key: item.split for item in items}
    origin = "the source's own split" if mode == "source" else "split by group here (data.split)"
    history = {}
    for split in SPLITS:
        moved_in = Counter(assigned[k] for k, s in final.items() if s == split and assigned[k] != split)
        moved_out = sum(1 for k, s in assigned.items() if s == split and final.get(k, s) != s)
        dropped = sum(1 for k, s in assigned.items() if s == split and k not in final)
        changes = [f"{n} moved in from {src}" for src, n in sorted(moved_in.items())]
        changes += [f"{moved_out} moved out"] * bool(moved_out) + [f"{dropped} dropped as duplicates"] * bool(
            dropped
        )
        history[split] = f"{origin}; " + (
            ", ".join(changes) + " (split_leakage / duplicates)" if changes else "unchanged"
        )
    return history


def write_layout(stage: Path, items: list[Item]) -> list[tuple[str, str]]:
    files = []
    for item in sorted(items, key=lambda it: (SPLITS.index(it.split), it.name)):
        image, label = f"images/{item.split}/{item.name}", f"labels/{item.split}/{Path(item.name).stem}.txt"
        (stage / image).parent.mkdir(parents=True, exist_ok=True)
        (stage / label).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / "images" / POOL / item.name, stage / image)
        text = yolo_lines(item.boxes)
        (stage / label).write_text(text, encoding="utf-8")
        files += [(image, item.sha256), (label, hashlib.sha256(text.encode()).hexdigest())]
    shutil.rmtree(stage / "images" / POOL)  # what is left there was dropped
    return files


def yolo_lines(boxes: np.ndarray) -> str:
    lines = []
    for cls, x0, y0, x1, y1 in boxes:
        lines.append(f"{int(cls)} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}\n")
    return "".join(lines)


def write_data_yaml(stage: Path, items: list[Item], names: list[str], channels: int) -> str:
    present = {item.split for item in items}
    doc: dict[str, Any] = {s: f"images/{s}" for s in SPLITS if s in present or s != "test"}
    for split in doc:
        (stage / "images" / split).mkdir(parents=True, exist_ok=True)
    doc["nc"] = len(names)
    doc["names"] = dict(enumerate(names))
    if channels == 1:
        doc["channels"] = 1
    text = "# Written by `python -m pipeline prepare`; paths are relative to this file.\n"
    text += yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    (stage / "data.yaml").write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def count(items: list[Item], names: list[str]) -> dict[str, Any]:
    splits = {}
    for split in SPLITS:
        members = [item for item in items if item.split == split]
        classes = Counter(int(c) for item in members for c in item.boxes[:, 0])
        splits[split] = {
            "images": len(members),
            "backgrounds": sum(len(item.boxes) == 0 for item in members),
            "boxes": sum(len(item.boxes) for item in members),
            "per_class": {name: classes.get(i, 0) for i, name in enumerate(names)},
        }
    per_class = {name: sum(s["per_class"][name] for s in splits.values()) for name in names}
    total = {
        "images": len(items),
        "boxes": sum(len(item.boxes) for item in items),
        "dropped_by_class_map": sum(item.unmapped for item in items),
    }
    return {**total, "per_class": per_class, "splits": splits}


def build_manifest(
    data: DataConfig,
    items: list[Item],
    files: list[tuple[str, str]],
    mode: str,
    counts: dict,
    context: Context,
) -> dict[str, Any]:
    sizes = {f"images/{item.split}/{item.name}": item.size for item in items}
    listing = [
        {
            "path": path,
            "sha256": digest,
            **({"width": sizes[path][0], "height": sizes[path][1]} if path in sizes else {}),
        }
        for path, digest in sorted(files)
    ]
    placed = Counter(item.placed for item in items)
    repaired = sorted(item.key for item in items if item.repaired)
    deep = sum(item.deep for item in items)
    normalize = (
        {**vars(data.normalize), "frames": deep, "dataset_range": context.deep_range} if deep else None
    )
    return {
        "dataset_hash": dataset_hash(files),
        "name": data.name,
        "format": data.format,
        "source": data.path if data.format != "synthetic" else vars(data.synthetic),
        "split_mode": mode,
        "classes": list(context.cfg.classes.names),
        "channels": context.cfg.sensor.channels,
        **counts,
        "placed": dict(sorted(placed.items())),
        "repaired_jpegs": repaired,  # bytes after the end marker: re-encoded, the source left as it is
        "normalize": normalize,
        "files": listing,
    }


def dataset_hash(files: list[tuple[str, str]]) -> str:
    """The dataset's identity: a hash of every output file's path and content hash."""
    lines = "".join(f"{path}\t{digest}\n" for path, digest in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def result_of(
    out: Path, manifest: dict, counts: dict, log: FindingLog, mode: str, origins: dict[str, str]
) -> PrepareResult:
    splits = counts["splits"]
    found = log.counts()
    return PrepareResult(
        output_dir=out,
        dataset_hash=manifest["dataset_hash"],
        split_mode=mode,
        images={s: v["images"] for s, v in splits.items()},
        boxes={s: v["boxes"] for s, v in splits.items()},
        per_class=counts["per_class"],
        findings=found,
        actions={kind: log.action(kind) for kind in found},
        report=out / "report.md",
        split_origins=origins,
    )


def failure_message(log: FindingLog, empty: list[str], out: Path, kept: bool) -> str:
    errors = log.errors()
    kinds = ", ".join(f"{k} {n}" for k, n in Counter(r.finding.kind for r in errors).items())
    reports = failed_report_dir(out)
    previous = f"the previous dataset in {out} was kept as it was" if kept else f"{out} was not created"
    parts = [
        f"prepare failed; no dataset was written ({previous}).",
        f"Reports: {reports / 'report.md'} and .json.",
    ]
    if errors:
        parts.append(f"{len(errors)} finding(s) whose policy is error ({kinds}). First: {first_errors(log)}.")
        parts.append("Fix the data, or choose another action: data.validation.policy.<kind>=drop|fix|warn.")
    if empty:
        parts.append(f"The {' and '.join(empty)} split is empty after validation: add data or re-split.")
    return " ".join(parts)


# ---- atomic output -----------------------------------------------------------------------------


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out`; removed if the run fails before publishing it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_stages(out)
    recover_swap(out)  # a run killed mid-swap left the previous dataset beside `out`
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when published


def remove_abandoned_stages(out: Path) -> None:
    """Temporary folders of killed runs (their process is gone) would otherwise pile up."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        pid = int(stale.name.split("-")[-2]) if stale.name.split("-")[-2].isdigit() else None
        if pid is not None and not process_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_dataset(stage: Path) -> None:
    for name in ("images", "labels"):
        shutil.rmtree(stage / name, ignore_errors=True)
    (stage / "data.yaml").unlink(missing_ok=True)
