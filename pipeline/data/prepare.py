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

import re
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.data_config import SplitConfig
from pipeline.data.corrections import apply_corrections, read_corrections
from pipeline.data.frames import POOL, Context, Item, dataset_range, decide_frame, decode, stage_image
from pipeline.data.readers import read_source
from pipeline.data.source import Entry, Source
from pipeline.data.split import assign_splits, check_duplicates, split_history
from pipeline.data.validation import (
    ClassResolver,
    FindingLog,
    check_labels,
)
from pipeline.data.write import PrepareResult, finish, staging

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
        items = corrected(ingest(source, context), data.corrections)
        own_splits = sorted({item.split for item in items if item.split})
        items, mode = assign_splits(items, source, data.split, cfg.seed)
        assigned = {item.key: item.split for item in items}
        items = check_duplicates(
            items, data.validation, log, mode == "source" and not data.split.move_source_images
        )
        return finish(stage, out, items, mode, context, split_history(assigned, items, mode, own_splits))


def main(argv: list[str], prog: str = "python -m pipeline prepare", command: str = "prepare") -> int:
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


def corrected(items: list[Item], corrections: str | None) -> list[Item]:
    """The audit's accepted fixes applied to the labels read (the source files stay as they are)."""
    if not corrections:
        return items
    fixes = read_corrections(Path(corrections))
    return [replace(item, boxes=apply_corrections(item.name, item.boxes, fixes)) for item in items]


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


def group_of(entry: Entry, spec: SplitConfig, log: FindingLog) -> str:
    if spec.group_pattern is None:
        return entry.stem
    match = re.search(spec.group_pattern, entry.stem)
    if match is None:
        message = f"name {entry.stem!r} does not match group_pattern {spec.group_pattern!r}: its own group"
        log.report("no_group", entry.key, None, message)
        return entry.stem
    return match.group(1) if match.groups() else match.group(0)
