"""Prepare's output: the YOLO layout, data.yaml, manifest and reports, written into a staging folder
that replaces {paths.prepared} whole (or, on failure, {paths.prepared}.failed-report) at the end."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.core.artifacts import PreparedDataset
from pipeline.core.data_config import SPLITS, DataConfig
from pipeline.core.errors import DataError
from pipeline.core.io import recover_swap, swap_dir, write_json, write_text
from pipeline.data.frames import POOL, Context, Item, place
from pipeline.data.prepare_report import first_errors, policy_choices, render_markdown, report_payload
from pipeline.data.validation import FindingLog


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


# ---- output ------------------------------------------------------------------------------------


def finish(
    stage: Path, out: Path, items: list[Item], mode: str, context: Context, origins: dict[str, str]
) -> PrepareResult:
    cfg, log = context.cfg, context.log
    names = list(cfg.classes.names)
    files = write_layout(stage, items, cfg.data.link)
    data_yaml_hash = write_data_yaml(stage, items, names, cfg.sensor.channels)
    files.append((PreparedDataset(stage).data_yaml.name, data_yaml_hash))
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
        write_json(PreparedDataset(stage).manifest, manifest | {"split_origins": origins})
    write_json(PreparedDataset(stage).report_json, payload)
    write_text(PreparedDataset(stage).report_md, render_markdown(payload))
    if status == "failed":
        kept = out.exists()
        swap_dir(stage, failed_report_dir(out))
        raise DataError(failure_message(log, empty, out, kept))
    swap_dir(stage, out)
    shutil.rmtree(failed_report_dir(out), ignore_errors=True)  # an earlier failure's reports no longer apply
    return result_of(out, manifest, counts, log, mode, origins)


def failed_report_dir(out: Path) -> Path:
    return PreparedDataset(out).failed_report.folder


def write_layout(stage: Path, items: list[Item], link: str) -> list[tuple[str, str]]:
    """Images from the pool into their split; labels written, or linked where the source's file
    already says the same (`Item.label_link`)."""
    files = []
    for item in sorted(items, key=lambda it: (SPLITS.index(it.split), it.name)):
        image, label = f"images/{item.split}/{item.name}", f"labels/{item.split}/{Path(item.name).stem}.txt"
        (stage / image).parent.mkdir(parents=True, exist_ok=True)
        (stage / label).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / "images" / POOL / item.name, stage / image)
        files += [(image, item.sha256), (label, place_label(item, stage / label, link))]
    shutil.rmtree(stage / "images" / POOL)  # what is left there was dropped
    return files


def place_label(item: Item, target: Path, link: str) -> str:
    """The label file's sha256, once it is in place."""
    if item.label_link is not None:
        place(item.label_link, target, link)
        data = target.read_bytes()
    else:
        data = yolo_lines(item.boxes).encode()
        target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


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
    PreparedDataset(stage).data_yaml.write_text(text, encoding="utf-8")
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
    linked_labels = sum(item.label_link is not None for item in items)
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
        "labels": {"linked": linked_labels, "written": len(items) - linked_labels},
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
        report=PreparedDataset(out).report_md,
        split_origins=origins,
    )


def failure_message(log: FindingLog, empty: list[str], out: Path, kept: bool) -> str:
    errors = log.errors()
    kinds = ", ".join(f"{k} {n}" for k, n in Counter(r.finding.kind for r in errors).items())
    reports = failed_report_dir(out)
    previous = f"the previous dataset in {out} was kept as it was" if kept else f"{out} was not created"
    parts = [
        f"prepare failed; no dataset was written ({previous}).",
        f"Reports: {PreparedDataset(reports).report_md} and .json.",
    ]
    if errors:
        parts.append(f"{len(errors)} finding(s) whose policy is error ({kinds}). First: {first_errors(log)}.")
        parts.append(f"Fix the data, or: {policy_choices(r.finding.kind for r in errors)}.")
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
    PreparedDataset(stage).data_yaml.unlink(missing_ok=True)
