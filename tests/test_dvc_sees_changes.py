"""DVC sees every change that matters, and only those: the user's data folder, not MLflow settings;
every figure the stages draw is a DVC plot; DVC's cache shares the images instead of copying them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT
from tests.dvc_project import command, compose_and_commit, make_project

IMAGES = 12


def write_yolo_dataset(root: Path, images: int) -> Path:
    """A tiny YOLO folder (RGB JPEGs, one box each) outside the repository."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        add_image(root, f"seq{i // 4}_f{i % 4}", rng)
    return root


def add_image(root: Path, name: str, rng: np.random.Generator) -> None:
    frame = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "images" / f"{name}.jpg"), frame)
    (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.3 0.3\n")


def stale_stages(repo: Path) -> set[str]:
    status = json.loads(command(repo, "dvc", "status", "--json").stdout or "{}")
    return set(status)


def prepared_own_data(tmp_path: Path) -> tuple[Path, Path]:
    """A project copy whose prepare stage ran on a YOLO folder outside it: (source, repo)."""
    source = write_yolo_dataset(tmp_path / "source", IMAGES)
    repo = make_project(tmp_path / "project", {})
    compose_and_commit(repo, "own data", *own_data(source))
    command(repo, "dvc", "repro", "prepare")
    return source, repo


def own_data(source: Path) -> tuple[str, ...]:
    return ("data=yolo_dir", f"data.path={source}", "sensor=rgb", "classes=synthetic")


def test_new_source_images_make_prepare_stale_and_tracking_keys_do_not(tmp_path):
    source, repo = prepared_own_data(tmp_path)
    assert "prepare" not in stale_stages(repo)

    compose_and_commit(
        repo, "another tracking server", *own_data(source), "track.tracking_uri=sqlite:///other.db"
    )
    assert "prepare" not in stale_stages(repo)  # MLflow-only keys re-run nothing

    add_image(source, "seq9_f0", np.random.default_rng(1))
    assert "prepare" in stale_stages(repo)


def test_cache_shares_the_source_images_instead_of_copying_them(tmp_path):
    source, repo = prepared_own_data(tmp_path)
    prepared = sorted((repo / "data" / "prepared" / "images").rglob("*.jpg"))
    assert len(prepared) == IMAGES
    for image in prepared:  # source, workspace and cache: one inode
        assert image.stat().st_ino == (source / "images" / image.name).stat().st_ino
        assert image.stat().st_nlink == 3


def test_every_drawn_figure_is_a_dvc_plot(tiny_pipeline):
    shown = json.loads(command(tiny_pipeline, "dvc", "plots", "show", "--json").stdout)
    plotted = {Path(name).name for name in shown["data"]}
    drawn = {
        p.name
        for folder in ("reports/analyze/plots", "reports/evaluate/plots", "reports/benchmark")
        for p in (tiny_pipeline / folder).glob("*.png")
    }
    assert drawn and drawn <= plotted, drawn - plotted
    assert "epochs.csv" in plotted


def test_stage_commands_need_no_activated_environment():
    """DVC runs stage commands with the caller's PATH, where `python` may be the system's:
    scripts/python picks the project's .venv when nothing is activated."""
    venv = PROJECT_ROOT / ".venv" / "bin" / "python"
    if not venv.exists():
        pytest.skip("no .venv in the project root (make test creates one)")
    bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    done = subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "python"), "-c", "import sys, torch; print(sys.prefix)"],
        capture_output=True,
        text=True,
        env=bare,
        check=True,
    )
    assert Path(done.stdout.strip()) == (PROJECT_ROOT / ".venv").absolute()
