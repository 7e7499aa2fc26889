"""Dataset readers: YOLO txt, COCO JSON, Pascal VOC XML and the synthetic generator, into one table.

Each reader lists its source as `Entry` rows, one per image, holding the label records as the
format wrote them (class token and coordinate tokens, not yet checked): deciding what is wrong
with them is `pipeline.data.validation`'s job, so every format gets the same checks. Readers only
read; the source dataset is never modified. Problems that concern no image (a label file or a
split-list line without an image) come back as `orphan_label` findings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.data_config import SPLITS, DataConfig
from pipeline.core.errors import DataError
from pipeline.core.layout import IMAGE_SUFFIXES, label_path
from pipeline.data.read_coco import read_coco
from pipeline.data.read_voc import read_voc
from pipeline.data.source import SPLIT_ALIASES, Entry, LabelRecord, Source, orphan, relative
from pipeline.data.synthetic import CLASSES, generate
from pipeline.data.validation import Finding

NAME_FILES = ("classes.txt", "obj.names", "classes.names")


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
