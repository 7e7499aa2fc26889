"""The prepare stage on the real datasets in ../shared/datasets, through their conf/data entries.

Their PROVENANCE.md files list known defects; prepare must report each as a finding of the right
kind (and apply the default policy), never crash on them."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from pipeline.core.compose import compose_config
from pipeline.core.io import read_json
from pipeline.data.prepare import run
from tests.conftest import PROJECT_ROOT, require_shared_dataset

pytestmark = pytest.mark.slow


def prepare_real(tmp_path: Path, monkeypatch, name: str, *overrides: str):
    source = require_shared_dataset(name)
    monkeypatch.chdir(PROJECT_ROOT)  # conf/data/<name>.yaml paths are relative to the project root
    out = tmp_path / "prepared"
    result = run(compose_config([f"data={name}", f"classes={name}", f"paths.prepared={out}", *overrides]))
    return source, result, read_json(out / "report.json"), out


def found(report: dict, kind: str) -> list[tuple[str, int | None]]:
    return [(f["file"], f["line"]) for f in report["findings"] if f["kind"] == kind]


def assert_ultralytics_reads(out: Path) -> None:
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    assert Path(check_det_dataset(str(out / "data.yaml"))["val"]) == (out / "images/val").resolve()


def test_thermal_dogs_people_yolo_with_roboflow_data_yaml(tmp_path, monkeypatch):
    # Consecutive burst frames sit in different source splits; moving them is an explicit choice.
    moving = ("sensor=thermal", "data.split.move_source_images=true")
    source, result, report, out = prepare_real(tmp_path, monkeypatch, "thermal_dogs_people", *moving)
    assert result.split_mode == "source" and report["status"] == "ok"
    assert "moved in from" in result.split_origins["train"]  # the summary says what moved
    assert sum(result.images.values()) == 203 and result.images["test"] > 0  # test/ is not in its data.yaml
    assert sum(result.boxes.values()) == 257 and result.per_class == {"dog": 117, "person": 140}
    backgrounds = found(report, "background_image")  # PROVENANCE: 18 empty label files
    assert len(backgrounds) == 18 and all((source / f).read_text().strip() == "" for f, _ in backgrounds)
    written = {p.name: p.read_text() for p in out.glob("labels/*/*.txt")}
    assert all(written[Path(f).name] == "" for f, _ in backgrounds)
    manifest = read_json(out / "manifest.json")
    assert "converted" not in manifest["placed"] and sum(manifest["placed"].values()) == 203
    assert len(found(report, "split_leakage")) > 0
    assert_no_near_duplicates_across_splits(out, max_distance=4)
    assert_ultralytics_reads(out)


def assert_no_near_duplicates_across_splits(out: Path, max_distance: int) -> None:
    """An independent, brute-force check of the final splits."""
    hashes = [(p.parent.name, p.name, imagehash.phash(Image.open(p))) for p in sorted(out.glob("images/*/*"))]
    leaks = [
        (a[1], b[1])
        for a, b in itertools.combinations(hashes, 2)
        if a[0] != b[0] and a[2] - b[2] <= max_distance
    ]
    assert leaks == []


def test_bccd_pascal_voc_with_image_sets(tmp_path, monkeypatch):
    source, result, report, out = prepare_real(tmp_path, monkeypatch, "bccd", "sensor=rgb")
    assert result.split_mode == "source" and report["status"] == "ok"
    assert sum(result.images.values()) == 364
    lists = {
        s: len((source / f"BCCD/ImageSets/Main/{s}.txt").read_text().split())
        for s in ("train", "val", "test")
    }
    moved = len(found(report, "split_leakage"))
    assert all(abs(result.images[s] - lists[s]) <= moved for s in lists)
    # PROVENANCE: two zero-area RBC boxes, dropped by default
    degenerate = found(report, "degenerate_box")
    assert degenerate == [("Annotations/BloodImage_00338.xml", 158), ("Annotations/BloodImage_00343.xml", 50)]
    for file, line in degenerate:
        assert (source / "BCCD" / file).read_text().splitlines()[line - 1].strip() == "<object>"
    assert sum(result.boxes.values()) == 4888 - 2
    assert result.per_class == {"RBC": 4155 - 2, "WBC": 372, "Platelets": 361}
    # PROVENANCE: eight same-class pairs with IoU > 0.8, each in a different image; kept, reported
    near = found(report, "near_duplicate_box")
    numbers = ["00013", "00020", "00100", "00104", "00251", "00284", "00331", "00403"]
    assert sorted(f for f, _ in near) == [f"Annotations/BloodImage_{n}.xml" for n in numbers]
    assert Counter(f["action"] for f in report["findings"] if f["kind"] == "near_duplicate_box") == {
        "warn": 8
    }
    assert_ultralytics_reads(out)
