"""COCO JSON: one annotation file per split (data.coco.files), or one for all, re-split here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.core.data_config import CocoConfig, DataConfig
from pipeline.core.errors import DataError
from pipeline.core.layout import IMAGE_SUFFIXES
from pipeline.data.source import (
    SPLIT_ALIASES,
    Entry,
    LabelRecord,
    Source,
    orphan,
    relative,
    stated_size,
)
from pipeline.data.validation import Finding


def read_coco(data: DataConfig, root: Path, target_names: list[str]) -> Source:
    spec = data.coco
    base = root.parent if root.is_file() else root
    files = coco_files(spec, root)
    entries: list[Entry] = []
    orphans: list[Finding] = []
    names: dict[int, str] = {}
    for split, json_path in files.items():
        doc = load_coco_json(json_path, spec)
        names.update(coco_categories(doc, spec, json_path, target_names, names))
        split_entries, split_orphans = coco_entries(doc, spec, json_path, base, split)
        entries += split_entries
        orphans += split_orphans
    entries += unlisted_coco_images(entries, base)
    has_splits = {"train", "val"} <= set(files)
    return Source(lambda: iter(entries), len(entries), names, has_splits, tuple(orphans), base)


def coco_files(spec: CocoConfig, root: Path) -> dict[str | None, Path]:
    if root.is_file():
        return {None: root}
    if spec.files:
        return {split: root / name for split, name in spec.files.items()}
    candidates = sorted({*root.glob("*.json"), *root.glob("annotations/*.json"), *root.glob("*/*.json")})
    by_split: dict[str | None, list[Path]] = {}
    for path in candidates:
        by_split.setdefault(split_of(path, root), []).append(path)
    if len(candidates) == 1:
        return {split_of(candidates[0], root): candidates[0]}
    if candidates and None not in by_split and all(len(v) == 1 for v in by_split.values()):
        return {split: paths[0] for split, paths in by_split.items()}
    raise DataError(
        f"data.path={root}: cannot tell which COCO JSON is which split (found "
        f"{[str(p.relative_to(root)) for p in candidates] or 'none'}); set "
        f"data.coco.files={{train: <json>, val: <json>}} or point data.path at one JSON file"
    )


def split_of(path: Path, root: Path) -> str | None:
    """The split a JSON file's name or folder names: instances_val2017.json, valid/_annotations..."""
    tokens = re.split(r"[^a-z]+", path.stem.lower())
    if path.parent != root and path.parent.name.lower() != "annotations":
        tokens.append(path.parent.name.lower())
    splits = {SPLIT_ALIASES[t] for t in tokens if t in SPLIT_ALIASES}
    return splits.pop() if len(splits) == 1 else None


def load_coco_json(path: Path, spec: CocoConfig) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found: check data.path and data.coco.files")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix or re-export it") from None
    for key in ("images", "annotations"):
        name = getattr(spec.keys, key)
        if not isinstance(doc, dict) or not isinstance(doc.get(name), list):
            found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise DataError(
                f"{path}: no list under key {name!r} (top-level keys: {found}); if your exporter names "
                f"it differently, set data.coco.keys.{key}=<its name>"
            )
    return doc


def coco_categories(
    doc: dict, spec: CocoConfig, path: Path, target_names: list[str], known: dict[int, str]
) -> dict[int, str]:
    raw = doc.get(spec.keys.categories)
    if not raw:
        return {spec.category_id_base + i: name for i, name in enumerate(target_names)}
    names = {}
    for index, category in enumerate(raw):
        if isinstance(category, str):
            names[spec.category_id_base + index] = category
        elif isinstance(category, dict) and spec.keys.id in category:
            names[category_id(category[spec.keys.id], path)] = str(category.get(spec.keys.name, index))
        elif isinstance(category, dict):
            names[spec.category_id_base + index] = str(category.get(spec.keys.name, index))
        else:
            raise DataError(f"{path}: category #{index} is {category!r}; expected {{id, name}} or a name")
    clashes = {i: (known[i], n) for i, n in names.items() if i in known and known[i] != n}
    if clashes:
        raise DataError(f"{path}: category ids name other classes than in the other split files: {clashes}")
    return names


def category_id(value: Any, path: Path) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: category id {value!r} is not an integer; fix the categories list") from None


def coco_entries(
    doc: dict, spec: CocoConfig, path: Path, base: Path, split: str | None
) -> tuple[list[Entry], list[Finding]]:
    keys = spec.keys
    json_key = relative(path, base)
    by_image: dict[Any, list[LabelRecord]] = {}
    for ann in doc[keys.annotations]:
        if isinstance(ann, dict) and not ann.get(keys.iscrowd):  # crowd regions are not boxes
            by_image.setdefault(ann.get(keys.image_id), []).append(coco_record(ann, keys))
    entries, orphans, seen = [], [], set()
    # Images may sit in a folder named after the JSON's own split (test/ for test.json) even when
    # data.coco.files maps that JSON to another split.
    splits = [s for s in (split, split_of(path, base)) if s]
    for index, image in enumerate(doc[keys.images]):
        if not isinstance(image, dict):
            raise DataError(
                f"{path}: {keys.images}[{index}] is {image!r}, not an object with {keys.file_name}"
            )
        image_id, file_name = image.get(keys.id), str(image.get(keys.file_name, ""))
        seen.add(image_id)
        found = coco_image_path(spec, base, path.parent, file_name, splits)
        labels = tuple(by_image.get(image_id, ()))
        if found is None:
            where = f"image id={image_id}"
            orphans.append(orphan(json_key, None, f"{where} file_name={file_name!r} not found", len(labels)))
            continue
        size = stated_size(image.get(keys.width), image.get(keys.height))
        entries.append(Entry(relative(found, base), found.stem, found, json_key, labels, split, None, size))
    refuse_missing_images(len(doc[keys.images]), len(entries), path, spec)
    for image_id in sorted(set(by_image) - seen, key=str):
        n = len(by_image[image_id])
        orphans.append(orphan(json_key, None, f"{n} annotation(s) name image_id={image_id!r}, not in images"))
    return entries, orphans


def coco_record(ann: dict, keys: Any) -> LabelRecord:
    bbox = ann.get(keys.bbox)
    values = tuple(bbox) if isinstance(bbox, list) else ()
    return LabelRecord(
        None, str(ann.get(keys.category_id)), values, "xywh", f"annotation id={ann.get(keys.id)}"
    )


MAX_MISSING_IMAGES = 0.5  # more of a JSON's images missing than this is a wrong folder, not a few strays


def refuse_missing_images(listed: int, found: int, path: Path, spec: CocoConfig) -> None:
    """A JSON most of whose images are missing points at the wrong folder: training on the rest
    while reporting `status: ok` would hide it."""
    missing = listed - found
    if listed and missing / listed > MAX_MISSING_IMAGES:
        where = f"data.coco.image_dir={spec.image_dir!r}" if spec.image_dir else "the folders searched"
        raise DataError(
            f"{path}: {missing} of the {listed} images it lists were not found in {where}; "
            "set data.coco.image_dir to the folder that its file_name values are relative to"
        )


def coco_image_path(
    spec: CocoConfig, base: Path, json_dir: Path, name: str, split_names: list[str]
) -> Path | None:
    if spec.image_dir is not None:
        candidates = [base / spec.image_dir / name]
    else:
        splits = [a for a, s in SPLIT_ALIASES.items() if s in split_names]
        folders = [json_dir, json_dir / "images", base, base / "images", json_dir.parent / "images"]
        folders += [base / a for a in splits] + [base / "images" / a for a in splits]
        candidates = [folder / name for folder in folders]
    return next((c for c in candidates if name and c.is_file()), None)


def unlisted_coco_images(entries: list[Entry], base: Path) -> list[Entry]:
    """Images beside the listed ones that no JSON lists: unlabelled, so `missing_label`."""
    listed = {e.image for e in entries}
    folders = sorted({e.image.parent for e in entries if e.image})
    extra = [p for f in folders for p in sorted(f.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return [Entry(relative(p, base), p.stem, p, None) for p in extra if p not in listed]
