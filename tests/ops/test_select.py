"""Active-learning selection: uncertainty terms, diversity rules, and the command's outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.artifacts import SelectFiles
from pipeline.core.io import read_json
from pipeline.model.images import load_image
from pipeline.model.inference import Detections
from pipeline.ops.select import (
    Candidate,
    box_disagreement,
    class_margin,
    hamming,
    image_hash,
    label_studio_task,
    mirrored_back,
    pick,
)


def found(boxes, scores, classes) -> Detections:
    return Detections(np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(classes, int))


def test_margin_is_between_two_classes_on_the_same_box():
    torn = found([[10, 10, 50, 50], [11, 10, 50, 51], [80, 80, 90, 90]], [0.6, 0.5, 0.55], [0, 1, 1])
    assert class_margin(torn) == pytest.approx(1 - 0.5 / 0.6)
    alone = found([[10, 10, 50, 50]], [0.9], [0])
    assert class_margin(alone) == pytest.approx(1.0)
    assert class_margin(found([], [], [])) == 1.0  # nothing found: low confidence, not a torn class


def test_mirror_boxes_map_back_and_disagreement_counts_unmatched_boxes():
    box = found([[10, 20, 30, 40]], [0.9], [0])
    seen_in_mirror = found([[70, 20, 90, 40]], [0.8], [0])  # the same box in a 100 px wide mirror
    back = mirrored_back(seen_in_mirror, width=100)
    assert back.boxes.tolist() == [[10, 20, 30, 40]]
    assert box_disagreement(box, back) == pytest.approx(0.0)
    assert box_disagreement(box, found([], [], [])) == 1.0
    other_class = found([[10, 20, 30, 40]], [0.8], [1])
    assert box_disagreement(box, other_class) == pytest.approx(1.0)


def candidate(name: str, group: str, bits: int, confidence: float) -> Candidate:
    return Candidate(Path(name), group, bits, confidence, confidence, 0.0)


def test_pick_skips_near_duplicates_and_spreads_a_sequence():
    pool = [
        candidate("a0", "a", 0b0000, 0.1),  # most uncertain
        candidate("a1", "a", 0xFF00, 0.2),  # same sequence: waits for round 2
        candidate("dup", "c", 0b0001, 0.15),  # 1 bit from a0: a near-duplicate, never taken
        candidate("b0", "b", 0xFF_0000, 0.5),
        candidate("b1", "b", 0xFF_000000, 0.6),
    ]
    assert [c.image.name for c in pick(pool, 3, max_distance=4)] == ["a0", "b0", "a1"]
    assert [c.image.name for c in pick(pool, 10, max_distance=4)] == ["a0", "b0", "a1", "b1"]
    assert [c.image.name for c in pick(pool, 2, max_distance=0)] == ["a0", "dup"]


def test_label_studio_prediction_is_in_percent():
    task = label_studio_task("/x/a.png", found([[10, 20, 30, 60]], [0.7], [1]), (200, 100), ["p", "q"], "v1")
    [prediction] = task["predictions"]
    [box] = prediction["result"]
    assert task["data"] == {"image": "/x/a.png"} and prediction["model_version"] == "v1"
    assert (box["original_width"], box["original_height"]) == (100, 200)
    value = box["value"]
    assert value.pop("rectanglelabels") == ["q"]
    assert value == pytest.approx({"x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0})
    assert (box["type"], box["from_name"], box["to_name"]) == ("rectanglelabels", "label", "image")


def test_select_command_writes_picks_and_pre_annotations(project, tmp_path, capsys):
    pool = tmp_path / "pool"
    for split in ("train", "val", "test"):  # three sequences of eight frames
        shutil.copytree(project.prepared / "images" / split, pool, dirs_exist_ok=True)
    first = sorted(pool.glob("*.png"))[0]
    shutil.copy(first, pool / f"copy_{first.name}")  # an exact duplicate: at most one of the two
    out = tmp_path / "select"
    params = project.params(tmp_path, f"paths.select={out}", "data.split.group_pattern='^(seq[0-9]+)'")
    assert pipeline_main(["select", "--params", str(params), "--pool", str(pool), "--budget", "4"]) == 0
    selection = read_json(SelectFiles(out).selection)
    picks = selection["picks"]
    assert selection["pool_images"] == 25 and 3 <= len(picks) <= 4
    assert len({p["group"] for p in picks[:3]}) == 3  # each sequence gives one frame before any gives two
    hashes = [image_hash(load_image(Path(p["image"]), 3)) for p in picks]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 4  # no near-duplicates
    assert all(
        p["reason"].split(":")[0] in ("low_confidence", "small_margin", "flip_disagreement") for p in picks
    )
    tasks = read_json(SelectFiles(out).label_studio)
    assert [Path(t["data"]["image"]).name for t in tasks] == [Path(p["image"]).name for p in picks]
    assert all(t["predictions"][0]["model_version"].startswith("best.pt sha256:") for t in tasks)
    labels = sorted(p.stem for p in SelectFiles(out).preannotations.glob("*.txt"))
    assert labels == sorted(Path(p["image"]).stem for p in picks)
    assert f"picked {len(picks)} of 25 images" in capsys.readouterr().out


def test_select_errors_name_the_fix(project, tmp_path, capsys):
    params = project.params(tmp_path, f"paths.select={tmp_path / 'select'}")
    (tmp_path / "empty").mkdir()
    assert (
        pipeline_main(["select", "--params", str(params), "--pool", str(tmp_path / "empty"), "--budget", "2"])
        == 2
    )
    assert "no images" in capsys.readouterr().err
    untrained = project.params(tmp_path, f"paths.train={tmp_path / 'none'}")
    pool = project.prepared / "images" / "test"
    assert pipeline_main(["select", "--params", str(untrained), "--pool", str(pool), "--budget", "2"]) == 2
    assert "run the train stage first" in capsys.readouterr().err
