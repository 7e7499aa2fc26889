"""Pascal VOC XML: Annotations/*.xml, JPEGImages/ and the ImageSets/Main split lists."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree
from xml.parsers import expat

from pipeline.core.data_config import DataConfig, VocConfig
from pipeline.core.errors import DataError
from pipeline.core.layout import IMAGE_SUFFIXES
from pipeline.data.source import Entry, LabelRecord, Source, orphan, relative, stated_size
from pipeline.data.validation import Finding


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
    lists = read_image_sets(root / spec.image_sets, spec.lists)
    usable = {"train", "val"} <= set(lists)  # otherwise re-split by group; the summary says why
    split_by_stem = {stem: split for split, rows in lists.items() for stem, _ in rows}
    entries, orphans, used = [], [], set()
    for xml in sorted(annotations.rglob("*.xml")):
        entry = voc_entry(xml, root, images, spec)
        if entry.image is None:
            orphans.append(orphan(entry.label_file, None, f"no image {entry.key!r} in {spec.images}/"))
            continue
        used.add(entry.image)
        split = split_by_stem.get(xml.stem)
        entries.append(replace(entry, split=split, listed=split is not None or not usable))
    for stem, image in images.items():
        if image not in used:
            split = split_by_stem.get(stem)
            listed = split is not None or not usable
            entries.append(Entry(relative(image, root), stem, image, None, (), split, listed=listed))
    orphans += list_orphans(lists, root / spec.image_sets, {e.stem for e in entries}, root)
    entries, convention = checked_convention(entries, spec, data.validation.policy.zero_based_voc)
    orphans += convention
    return Source(lambda: iter(entries), len(entries), None, usable, tuple(orphans), root)


def checked_convention(
    entries: list[Entry], spec: VocConfig, policy: str
) -> tuple[list[Entry], list[Finding]]:
    """Boxes at pixel 0 cannot be 1-based: a 0-based exporter's files read as 1-based would all shift
    by a pixel (and those at 0 fall off the frame). Policy fix reads every file as 0-based."""
    at_zero = [(e, r) for e in entries for r in e.labels if starts_at_zero(r)] if spec.one_based else []
    if not at_zero:
        return entries, []
    entry, record = at_zero[0]
    files = len({e.label_file for e, _ in at_zero})
    done = "read every file as 0-based" if policy == "fix" else "kept 1-based (policy warn)"
    message = (
        f"{len(at_zero)} box(es) in {files} file(s) start at pixel 0, which 1-based VOC "
        f"(data.voc.one_based=true) cannot have; {done}"
    )
    finding = Finding("zero_based_voc", entry.label_file or entry.key, record.line, message)
    if policy == "fix":
        entries = [replace(e, labels=tuple(replace(r, offset=0.0) for r in e.labels)) for e in entries]
    return entries, [finding]


def starts_at_zero(record: LabelRecord) -> bool:
    try:
        return any(float(v) == 0 for v in record.values[:2])
    except ValueError:
        return False  # not numbers: validation reports the line


def read_image_sets(folder: Path, named: dict[str, str] | None) -> dict[str, list[tuple[str, int]]]:
    """The split lists (first column of each line): `named` (data.voc.lists, split -> file), else
    train/val/test.txt; the caller uses them only when train and val are among them."""
    files = named or {split: f"{split}.txt" for split in ("train", "val", "test")}
    missing = [f"{split}: {name}" for split, name in (named or {}).items() if not (folder / name).is_file()]
    if missing:
        found = sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise DataError(
            f"data.voc.lists names {', '.join(missing)}, not found in {folder} (it holds "
            f"{found or 'no .txt'}); name files that exist there, or set data.voc.image_sets"
        )
    lists = {}
    for split, name in files.items():
        path = folder / name
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()  # splitlines drops \r of CRLF files
            lists[split] = [(line.split()[0], n) for n, line in enumerate(lines, 1) if line.strip()]
    return lists


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
