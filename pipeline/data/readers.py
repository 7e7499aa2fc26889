"""Dataset readers: YOLO txt, COCO JSON, Pascal VOC XML and the synthetic generator, into one table.

Each reader lists its source as `Entry` rows, one per image, holding the label records as the
format wrote them (class token and coordinate tokens, not yet checked): deciding what is wrong
with them is `pipeline.data.validation`'s job, so every format gets the same checks. Readers only
read; the source dataset is never modified. Problems that concern no image (a label file or a
split-list line without an image) come back as `orphan_label` findings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.parsers import expat

import numpy as np
import yaml

from pipeline.core.config import SPLITS, CocoConfig, DataConfig, VocConfig
from pipeline.core.errors import DataError
from pipeline.data.validation import Finding

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
NAME_FILES = ("classes.txt", "obj.names", "classes.names")


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


def read_source(data: DataConfig, target_names: list[str]) -> Source:
    """The reader for `data.format`; relative paths are resolved from the working directory."""
    if data.format == "synthetic":
        return read_synthetic(data)
    root = Path(str(data.path)).expanduser()
    if not root.exists():
        raise DataError(
            f"data.path={data.path!r} does not exist (resolved to {root.resolve()}); relative paths "
            f"start at the working directory, so run from the project root or give an absolute path"
        )
    readers = {"yolo": read_yolo, "coco": read_coco, "voc": read_voc}
    return readers[data.format](data, root, target_names)


# ---- synthetic ---------------------------------------------------------------------------------


def read_synthetic(data: DataConfig) -> Source:
    from pipeline.data.synthetic import CLASSES, generate

    spec = data.synthetic

    def entries() -> Iterator[Entry]:
        for frame in generate(spec.sensor, spec.images, spec.size, spec.seed):
            labels = tuple(
                LabelRecord(n, str(int(box[0])), tuple(float(v) for v in box[1:]), "cxcywh")
                for n, box in enumerate(frame.boxes, start=1)
            )
            key = f"synthetic/{frame.name}"
            yield Entry(key, frame.name, None, f"{key}.txt", labels, group=frame.group, frame=frame.image)

    return Source(entries, spec.images, dict(enumerate(CLASSES)), has_splits=False)


# ---- YOLO txt ----------------------------------------------------------------------------------


def read_yolo(data: DataConfig, root: Path, target_names: list[str]) -> Source:
    yaml_file = root if root.is_file() else find_data_yaml(root)
    base = yaml_file.parent if yaml_file else root
    names, split_dirs = read_data_yaml(yaml_file, data.allow_outside_paths) if yaml_file else (None, {})
    declared = set(split_dirs)  # a split the yaml names must hold images; a conventional folder may not
    for split, dirs in conventional_split_dirs(base).items():
        split_dirs.setdefault(split, dirs)  # a split the yaml leaves out (Roboflow's test)
    if not split_dirs:
        split_dirs = {None: [flat_image_dir(base)]}
    names = names or read_name_file(base) or dict(enumerate(target_names))
    entries, label_files = [], set()
    for split, sources in split_dirs.items():
        images = list_images(sources, base, data.allow_outside_paths)
        if not images and split in declared:
            raise DataError(
                f"{yaml_file}: {split}: declares the {split} split but {[str(s) for s in sources]} holds no "
                f"images; point {split}: at the folder or list that holds them, or remove the key"
            )
        for image in images:
            entry = yolo_entry(image, base, split)
            entries.append(entry)
            label_files.add(label_path(image))
    orphans = tuple(yolo_orphans(split_dirs, label_files, base))
    has_splits = {"train", "val"} <= set(split_dirs)
    return Source(lambda: iter(entries), len(entries), names, has_splits, orphans, base)


def find_data_yaml(root: Path) -> Path | None:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        if (root / name).is_file():
            return root / name
    return None


def load_data_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc}); fix the file or remove it") from None


def read_data_yaml(
    path: Path, allow_outside: bool
) -> tuple[dict[int, str] | None, dict[str | None, list[Path]]]:
    doc = load_data_yaml(path)
    base = path.parent / str(doc["path"]) if doc.get("path") else path.parent
    splits: dict[str | None, list[Path]] = {}
    for key in SPLITS:
        if doc.get(key):
            values = doc[key] if isinstance(doc[key], list) else [doc[key]]
            splits[key] = [resolve_yaml_path(path, base, key, str(v), allow_outside) for v in values]
    return names_from(doc.get("names"), path), splits


def refuse_outside(path: Path, root: Path, where: str, value: str, allow_outside: bool) -> Path:
    """`path` resolved (symlinks followed); one that leaves the dataset folder `root` is an error, so
    a stray `/etc` or `../../..` never brings foreign files into the dataset, unless the user says so."""
    resolved = path.resolve()
    if allow_outside or resolved.is_relative_to(root.resolve()):
        return resolved
    raise DataError(
        f"{where}: {value!r} resolves to {resolved}, outside the dataset folder {root.resolve()}; "
        f"move the files inside it, fix the path, or set data.allow_outside_paths=true to allow it"
    )


def resolve_yaml_path(yaml_file: Path, base: Path, key: str, value: str, allow_outside: bool) -> Path:
    candidate = base / value
    if not candidate.exists() and value.startswith("../"):
        candidate = base / value[3:]  # Roboflow writes ../train/images for a yolov5 checkout beside it
    if not candidate.exists():
        raise DataError(
            f"{yaml_file}: {key}: {value!r} not found (looked at {base / value}); "
            f"fix the path (relative to the yaml's `path:` or its folder)"
        )
    return refuse_outside(candidate, yaml_file.parent, f"{yaml_file}: {key}", value, allow_outside)


def names_from(raw: Any, where: Path) -> dict[int, str] | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        return {i: str(name) for i, name in enumerate(raw)}
    if isinstance(raw, dict):
        return {int(k): str(v) for k, v in raw.items()}
    raise DataError(f"{where}: names must be a list or a mapping of id to name, got {raw!r}")


def read_name_file(base: Path) -> dict[int, str] | None:
    for name in NAME_FILES:
        if (base / name).is_file():
            lines = (base / name).read_text(encoding="utf-8").splitlines()
            return {i: line.strip() for i, line in enumerate(lines) if line.strip()}
    return None


def conventional_split_dirs(base: Path) -> dict[str | None, list[Path]]:
    found: dict[str | None, list[Path]] = {}
    for alias, split in SPLIT_ALIASES.items():
        for candidate in (base / "images" / alias, base / alias / "images"):
            if candidate.is_dir() and split not in found:
                found[split] = [candidate.resolve()]
    return found


def flat_image_dir(base: Path) -> Path:
    return (base / "images") if (base / "images").is_dir() else base


def list_images(sources: list[Path], base: Path, allow_outside: bool) -> list[Path]:
    images: list[Path] = []
    for source in sources:
        if source.is_file() and source.suffix == ".txt":
            images += read_image_list(source, base, allow_outside)
        else:
            found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            images += [refuse_outside(p, base, str(p), p.name, allow_outside) for p in found]
    return images


def read_image_list(path: Path, base: Path, allow_outside: bool) -> list[Path]:
    """An Ultralytics image list: one path a line, relative to the list's folder."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [
        refuse_outside(path.parent / line, base, f"{path}:{number}", line, allow_outside)
        for number, line in enumerate(lines, start=1)
        if line
    ]


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ becomes /labels/, the suffix .txt."""
    parts = image.parts
    if "images" in parts[:-1]:
        at = len(parts) - 2 - parts[:-1][::-1].index("images")
        return Path(*parts[:at], "labels", *parts[at + 1 :]).with_suffix(".txt")
    return image.with_suffix(".txt")


def yolo_entry(image: Path, base: Path, split: str | None) -> Entry:
    label = label_path(image)
    key = relative(image, base)
    if not label.is_file():
        return Entry(key, image.stem, image, None, split=split)
    return Entry(key, image.stem, image, relative(label, base), read_yolo_labels(label), split=split)


def read_yolo_labels(path: Path) -> tuple[LabelRecord, ...]:
    # utf-8-sig: a BOM (Windows editors) is not part of the first class id; splitlines takes CRLF
    text = path.read_text(encoding="utf-8-sig", errors="replace")  # undecodable bytes become bad lines
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            records.append(LabelRecord(number, fields[0], tuple(fields[1:]), "cxcywh"))
    return tuple(records)


def yolo_orphans(split_dirs: dict, used: set[Path], base: Path) -> Iterator[Finding]:
    for sources in split_dirs.values():
        for source in sources:
            if source.is_dir():
                folder = label_path(source / "x.jpg").parent
                for label in sorted(folder.rglob("*.txt")) if folder.is_dir() else ():
                    if label not in used and label.name not in NAME_FILES and folder != base:
                        yield orphan(relative(label, base), None, "label file without an image")


# ---- COCO JSON ---------------------------------------------------------------------------------


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
    for index, image in enumerate(doc[keys.images]):
        if not isinstance(image, dict):
            raise DataError(
                f"{path}: {keys.images}[{index}] is {image!r}, not an object with {keys.file_name}"
            )
        image_id, file_name = image.get(keys.id), str(image.get(keys.file_name, ""))
        seen.add(image_id)
        found = coco_image_path(spec, base, path.parent, file_name, split)
        labels = tuple(by_image.get(image_id, ()))
        if found is None:
            where = f"image id={image_id}"
            orphans.append(orphan(json_key, None, f"{where} file_name={file_name!r} not found", len(labels)))
            continue
        size = stated_size(image.get(keys.width), image.get(keys.height))
        entries.append(Entry(relative(found, base), found.stem, found, json_key, labels, split, None, size))
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


def coco_image_path(
    spec: CocoConfig, base: Path, json_dir: Path, name: str, split: str | None
) -> Path | None:
    if spec.image_dir is not None:
        candidates = [base / spec.image_dir / name]
    else:
        splits = [a for a, s in SPLIT_ALIASES.items() if s == split]
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


def stated_size(width: Any, height: Any) -> tuple[int, int] | None:
    try:
        size = (int(float(width)), int(float(height)))
    except (TypeError, ValueError):
        return None
    return size if min(size) > 0 else None


# ---- Pascal VOC XML ----------------------------------------------------------------------------


def read_voc(data: DataConfig, root: Path, target_names: list[str]) -> Source:
    spec = data.voc
    annotations, image_dir = root / spec.annotations, root / spec.images
    for folder, key in ((annotations, "annotations"), (image_dir, "images")):
        if not folder.is_dir():
            raise DataError(
                f"{folder} not found: point data.path at the VOC folder holding {getattr(spec, key)}/ "
                f"(or set data.voc.{key})"
            )
    images = {p.stem: p for p in sorted(image_dir.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    lists = read_image_sets(root / spec.image_sets)
    split_by_stem = {stem: split for split, rows in lists.items() for stem, _ in rows}
    entries, orphans, used = [], [], set()
    for xml in sorted(annotations.rglob("*.xml")):
        entry = voc_entry(xml, root, images, spec)
        if entry.image is None:
            orphans.append(orphan(entry.label_file, None, f"no image {entry.key!r} in {spec.images}/"))
            continue
        used.add(entry.image)
        split = split_by_stem.get(xml.stem)
        entries.append(replace(entry, split=split, listed=split is not None or not lists))
    for stem, image in images.items():
        if image not in used:
            split = split_by_stem.get(stem)
            listed = split is not None or not lists
            entries.append(Entry(relative(image, root), stem, image, None, (), split, listed=listed))
    orphans += list_orphans(lists, root / spec.image_sets, {e.stem for e in entries}, root)
    return Source(lambda: iter(entries), len(entries), None, bool(lists), tuple(orphans), root)


def read_image_sets(folder: Path) -> dict[str, list[tuple[str, int]]]:
    """train/val/test.txt (first column of each line); splits are used only with train and val."""
    lists = {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.txt"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()  # splitlines drops \r of CRLF files
            lists[split] = [(line.split()[0], n) for n, line in enumerate(lines, 1) if line.strip()]
    return lists if {"train", "val"} <= set(lists) else {}


def voc_entry(xml: Path, root: Path, images: dict[str, Path], spec: VocConfig) -> Entry:
    label_file = relative(xml, root)
    try:
        tree = parse_xml_with_lines(xml.read_bytes())
    except expat.ExpatError as exc:
        image = images.get(xml.stem)
        key = relative(image, root) if image else xml.stem
        error = f"XML does not parse: {expat.ErrorString(exc.code)}"
        return Entry(key, xml.stem, image, label_file, label_error=error, label_error_line=exc.lineno)
    filename = (tree.findtext("filename") or "").strip()
    image = root / spec.images / filename if filename else None
    if image is None or not image.is_file():
        image = images.get(Path(filename).stem if filename else xml.stem, images.get(xml.stem))
    key = relative(image, root) if image else f"{spec.images}/{filename or xml.stem}"
    size = stated_size(tree.findtext("size/width"), tree.findtext("size/height"))
    offset = 1.0 if spec.one_based else 0.0
    labels = tuple(voc_record(obj, offset) for obj in tree.iter("object"))
    return Entry(key, xml.stem, image, label_file, labels, stated_size=size)


def voc_record(obj: ElementTree.Element, offset: float) -> LabelRecord:
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    corners = ("xmin", "ymin", "xmax", "ymax")
    values = tuple((box.findtext(k) or "").strip() for k in corners) if box is not None else ()
    return LabelRecord(int(obj.get("_line", 0)) or None, name, values, "xyxy", offset=offset)


def parse_xml_with_lines(data: bytes) -> ElementTree.Element:
    """ElementTree with each element's source line in its `_line` attribute (for findings)."""
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()

    def start(tag: str, attrs: dict[str, str]) -> None:
        builder.start(tag, {**attrs, "_line": str(parser.CurrentLineNumber)})

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(data, True)
    return builder.close()


def list_orphans(lists: dict, folder: Path, stems: set[str], root: Path) -> Iterator[Finding]:
    for split, rows in lists.items():
        for stem, line in rows:
            if stem not in stems:
                yield orphan(
                    relative(folder / f"{split}.txt", root), line, f"{stem!r} has no annotation or image"
                )


# ---- shared ------------------------------------------------------------------------------------


def orphan(file: str, line: int | None, message: str, boxes: int | None = None) -> Finding:
    detail = f" ({boxes} box(es) ignored)" if boxes else ""
    return Finding("orphan_label", file, line, message + detail)


def relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
