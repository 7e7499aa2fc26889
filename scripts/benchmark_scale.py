"""Prepare and version datasets of growing size: seconds per 1,000 images and disk over source size.

For each size, a YOLO-layout dataset of generated 8-bit RGB JPEGs is written outside a throwaway
copy of the project (its own git and DVC repository), then `dvc repro prepare` reads, validates,
splits and links it into data/prepared and DVC commits the result to its cache. Reported:

- seconds per 1,000 images of `dvc repro prepare` (prepare itself plus DVC hashing and caching);
- disk used by source + data/prepared + DVC cache together, over the source alone, a hard-linked
  file counted once: 1.0 means the workspace and the cache add nothing. Two figures: allocated
  blocks (what `df` loses: each small label file takes a whole 4 KiB block, and DVC's cache has up
  to 256 hash-prefix folders, about 1 MiB whatever the dataset's size) and file bytes (what the
  data itself takes).

Targets (issue 16): the per-image cost at the largest size within 1.3x of the smallest; disk ratio at
most 1.1.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_scale.py [--sizes 1000 10000 50000] [--size 320]
        [--real thermal_dogs_people thermal_dogs_people thermal]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
from tqdm import tqdm

from pipeline.core.compose import PROJECT_ROOT, compose_config
from pipeline.data.synthetic import generate
from tests.dvc_project import command, make_project


def write_dataset(root: Path, images: int, size: int) -> Path:
    """`images` generated RGB frames as JPEG with YOLO labels, in one folder pair (split by prepare)."""
    image_dir, label_dir = root / "images", root / "labels"
    image_dir.mkdir(parents=True)
    label_dir.mkdir()
    for frame in tqdm(generate("rgb", images, size, seed=0), total=images, desc=f"writing {images}"):
        cv2.imwrite(str(image_dir / f"{frame.name}.jpg"), frame.image[:, :, ::-1])
        rows = (f"{int(b[0])} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f} {b[4]:.6f}" for b in frame.boxes)
        (label_dir / f"{frame.name}.txt").write_text("\n".join(rows))
    return root


@dataclass(frozen=True)
class DiskUse:
    blocks: int  # bytes allocated, folders included
    bytes: int  # bytes in files

    def over(self, source: DiskUse) -> str:
        return f"{self.blocks / source.blocks:.3f}x on disk, {self.bytes / source.bytes:.3f}x in file bytes"


def disk_use(*paths: Path) -> DiskUse:
    """What `paths` take together; a hard-linked file counts once (the first time it is seen)."""
    seen, blocks, size = set(), 0, 0
    for path in paths:
        for folder, _, names in os.walk(path):
            blocks += os.lstat(folder).st_blocks * 512
            for name in names:
                stat = os.lstat(os.path.join(folder, name))
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    blocks, size = blocks + stat.st_blocks * 512, size + stat.st_size
    return DiskUse(blocks, size)


def versioned_use(source: Path, repo: Path) -> tuple[DiskUse, DiskUse]:
    """(source alone, source + data/prepared + DVC cache)."""
    return disk_use(source), disk_use(source, repo / "data" / "prepared", repo / ".dvc" / "cache")


def measure(root: Path, images: int, size: int) -> dict[str, float]:
    source = write_dataset(root / "source", images, size)
    repo = make_project(root / "project", {})
    overrides = [
        "data=yolo_dir",
        f"data.path={source}",
        "classes=synthetic",
        "data.split.group_pattern='^(seq\\d+)_'",
    ]
    command(repo, "python", "-m", "pipeline", "compose", *overrides)
    start = time.perf_counter()
    command(repo, "dvc", "repro", "prepare", timeout=7200)
    seconds = time.perf_counter() - start
    alone, total = versioned_use(source, repo)
    return {
        "images": images,
        "s_per_1000": 1000 * seconds / images,
        "disk_ratio": total.blocks / alone.blocks,
        "disk": f"{alone.blocks / 2**20:.0f} MiB source: {total.over(alone)}",
    }


def measure_real(root: Path, data: str, classes: str, sensor: str) -> str:
    """Disk of a real dataset (a `data=` entry of conf/data) prepared and committed: the ratio only,
    its size is too small for the seconds to mean much."""
    repo = make_project(root / "project", {})
    source = (PROJECT_ROOT / compose_config([f"data={data}"]).data.path).resolve()
    overrides = [f"data={data}", f"data.path={source}", f"classes={classes}", f"sensor={sensor}"]
    command(repo, "python", "-m", "pipeline", "compose", *overrides)
    command(repo, "dvc", "repro", "prepare", timeout=7200)
    alone, total = versioned_use(source, repo)
    return f"{alone.blocks / 2**20:.1f} MiB source: {total.over(alone)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--size", type=int, default=320, help="frame size in pixels")
    parser.add_argument(
        "--real",
        nargs=3,
        metavar=("DATA", "CLASSES", "SENSOR"),
        action="append",
        default=[],
        help="a real dataset too (needs ../shared; repeatable), e.g. bccd bccd rgb",
    )
    args = parser.parse_args()
    rows = []
    for images in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"scale{images}-") as tmp:
            rows.append(measure(Path(tmp), images, args.size))
        row = rows[-1]
        print(f"{images:>7} images: {row['s_per_1000']:.2f} s per 1,000, {row['disk']}")
    growth = rows[-1]["s_per_1000"] / rows[0]["s_per_1000"]
    print(f"per-image cost at {rows[-1]['images']} vs {rows[0]['images']}: {growth:.2f}x (target <= 1.3)")
    print(f"largest disk ratio: {max(r['disk_ratio'] for r in rows):.3f} (target <= 1.1)")
    for real in args.real:
        with tempfile.TemporaryDirectory(prefix="scale-real-") as tmp:
            print(f"{real[0]}: {measure_real(Path(tmp), *real)} (target <= 1.1)")


if __name__ == "__main__":
    main()
