"""Prepare under faults: a failed run keeps the last good dataset, a run killed mid-swap (a real
SIGKILL between the two renames) is recovered by the next run, JPEGs that Ultralytics would rewrite
are re-encoded here, grey JPEGs stay as the source encoded them, and a source's own split is moved
only on request, with every split's history in the report."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from ultralytics.data.utils import check_image

from pipeline.core.compose import write_params
from pipeline.core.faults import KILL_ENV
from pipeline.core.io import read_json, recover_swap, swap_dir
from pipeline.data.write import failed_report_dir
from tests.data.test_prepare import BOX, clean, near_copy, pattern, prepare, split_of, yolo_tree


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listed(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in read_json(out / "manifest.json")["files"]}


# ---- a failed run keeps the previous dataset ---------------------------------------------------


def test_a_failed_validation_keeps_the_previous_dataset_and_reports_beside_it(tmp_path):
    good = yolo_tree(tmp_path / "good", clean())
    first, _, out = prepare(tmp_path, good)
    before = {p.relative_to(out): sha256(p) for p in out.rglob("*") if p.is_file()}
    bad = yolo_tree(tmp_path / "bad", clean(c="0 0.5 0.5 0.2\n"))  # 4 fields
    result, report, _ = prepare(tmp_path, bad)
    assert report["status"] == "failed" and "bad_line" in str(result)
    assert f"the previous dataset in {out} was kept" in str(result)
    assert str(failed_report_dir(out) / "report.md") in str(result)
    assert {p.relative_to(out): sha256(p) for p in out.rglob("*") if p.is_file()} == before
    again, _, _ = prepare(tmp_path, good)  # success clears the stale failure reports
    assert again.dataset_hash == first.dataset_hash and not failed_report_dir(out).exists()


# ---- a swap killed between its two renames -----------------------------------------------------


def run_prepare(params: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", "prepare", "--params", str(params)]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_a_swap_killed_between_its_renames_is_recovered_by_the_next_run(tmp_path):
    out, params = tmp_path / "prepared", tmp_path / "params.yaml"
    source = yolo_tree(tmp_path / "src", clean())
    overrides = ["data=yolo_dir", f"data.path={source}", "classes.names=[cat,dog]", f"paths.prepared={out}"]
    write_params(params, overrides)
    assert run_prepare(params, {}).returncode == 0
    good = listed(out)
    killed = run_prepare(params, {KILL_ENV: "swap_between_renames"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and len(list(tmp_path.glob(".prepared.old-*"))) == 1  # the window the kill hit
    rerun = run_prepare(params, {})
    assert rerun.returncode == 0, rerun.stderr
    assert listed(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prepared", "src"]  # no leftovers


def test_recover_swap_restores_a_missing_folder_and_removes_older_leftovers(tmp_path):
    target = tmp_path / "models"
    for index, name in enumerate((".models.old-aaaa", ".models.old-bbbb")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "v").write_text(name)
        os.utime(tmp_path / name, (index, index))  # bbbb is the newer one, the live folder before the kill
    recover_swap(target)
    assert (target / "v").read_text() == ".models.old-bbbb" and sorted(os.listdir(tmp_path)) == ["models"]
    (tmp_path / "new").mkdir()
    swap_dir(tmp_path / "new", target)
    assert sorted(os.listdir(tmp_path)) == ["models"] and not (target / "v").exists()


# ---- images Ultralytics would rewrite, and images that need no conversion ----------------------


def test_a_jpeg_with_trailing_bytes_is_reencoded_so_training_never_rewrites_it(tmp_path):
    source = yolo_tree(tmp_path / "src", clean(), suffix=".jpg")
    damaged = source / "images/train/a.jpg"
    damaged.write_bytes(damaged.read_bytes() + b"\0\0\0\0")  # what some cameras and uploaders leave
    original = sha256(damaged)
    _, _, out = prepare(tmp_path, source)
    manifest = read_json(out / "manifest.json")
    assert manifest["repaired_jpegs"] == ["images/train/a.jpg"] and manifest["placed"]["converted"] == 1
    prepared = out / "images/train/a.png"
    message, _ = check_image(str(prepared))  # Ultralytics' own integrity check, as training runs it
    assert message == "" and sha256(prepared) == listed(out)["images/train/a.png"]
    assert sha256(damaged) == original  # the source is never touched
    intact, linked = out / "images/train/b.jpg", source / "images/train/b.jpg"
    assert check_image(str(intact))[0] == "" and intact.stat().st_ino == linked.stat().st_ino


def test_an_8_bit_grey_jpeg_is_linked_in_its_source_encoding_for_a_3_channel_model(tmp_path):
    source = yolo_tree(tmp_path / "src", clean(), suffix=".jpg")
    grey = source / "images/train/a.jpg"
    Image.fromarray(pattern(1)).convert("L").save(grey, quality=90)
    _, _, out = prepare(tmp_path, source)  # sensor=rgb: 3 channels
    prepared = out / "images/train/a.jpg"
    assert prepared.stat().st_ino == grey.stat().st_ino and prepared.stat().st_nlink >= 2
    assert Image.open(prepared).mode == "L" and read_json(out / "manifest.json")["placed"] == {"hardlink": 3}


# ---- a source's own split is moved only on request ---------------------------------------------


def leaking_source(tmp_path: Path) -> Path:
    source = yolo_tree(tmp_path / "src", {"train": {"a": BOX, "b": BOX}, "val": {"v": BOX, "w": BOX}})
    near_copy(source, source / "images/train/a.png", source / "images/val/w.png")
    return source


def test_leakage_is_reported_in_a_source_split_and_moved_only_when_asked(tmp_path):
    source = leaking_source(tmp_path)
    kept, report, out = prepare(tmp_path, source)  # split_leakage=fix is the default
    assert split_of(out, "w") == "val" and "kept in the source's split" in report["findings"][0]["message"]
    assert kept.split_origins["val"] == "the source's own split; unchanged"
    moved, report, out = prepare(tmp_path, source, "data.split.move_source_images=true")
    assert split_of(out, "w") == "train"
    origins = report["summary"]["split_origins"]
    assert origins["train"].startswith("the source's own split; 1 moved in from val")
    assert origins["val"].startswith("the source's own split; 1 moved out") and moved.split_origins == origins


def test_a_group_split_says_it_was_made_here(tmp_path):
    source = yolo_tree(tmp_path / "src", {"train": {f"i{n}": BOX for n in range(6)}})
    result, _, _ = prepare(tmp_path, source)
    assert set(result.split_origins) == {"train", "val", "test"}
    assert all(text.startswith("split by group here (data.split)") for text in result.split_origins.values())


def test_pixels_of_a_reencoded_jpeg_match_its_decoded_source(tmp_path):
    source = yolo_tree(tmp_path / "src", clean(), suffix=".jpg")
    damaged = source / "images/train/a.jpg"
    decoded = np.asarray(Image.open(damaged).convert("RGB"))
    damaged.write_bytes(damaged.read_bytes() + b"trailing garbage")
    _, _, out = prepare(tmp_path, source)
    assert np.array_equal(np.asarray(Image.open(out / "images/train/a.png").convert("RGB")), decoded)


# ---- messages name the file ---------------------------------------------------------------------


def test_an_undecodable_image_and_the_failure_name_the_file_and_accepted_actions(tmp_path):
    source = yolo_tree(tmp_path / "src", clean(c=BOX))
    (source / "images" / "train" / "c.png").write_bytes(b"not an image")
    _, report, _ = prepare(tmp_path, source)
    [finding] = [f for f in report["findings"] if f["kind"] == "unreadable_image"]
    text = str(finding)
    assert "BytesIO" not in text and "c.png" in text
    failed, _, _ = prepare(tmp_path, source, "data.validation.policy.unreadable_image=error")
    assert "data.validation.policy.unreadable_image=drop" in str(failed)
    assert "=warn" not in str(failed)  # unreadable_image refuses warn: never offered
