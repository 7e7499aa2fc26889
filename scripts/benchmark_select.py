"""Does `select` pick better frames to label than chance? One round of active learning, measured.

Copies a real dataset (../shared/datasets/thermal_dogs_people, Roboflow YOLO layout) to a scratch
folder and splits its train images into a labelled seed and an "unlabelled" pool. A model trained
on the seed scores the pool with `select`'s own code (uncertainty, near-duplicates and sequences
spread out), which picks --budget frames; chance picks the same number. Each arm (seed + its picks,
their labels taken from the dataset as if a labeller had drawn them) is trained from scratch at the
same budget, once per seed, and scored on the held-out images (valid + test) with its last
checkpoint, so no arm chooses its checkpoint on the images it is scored on. Prints mAP50-95 mean
and sd per arm, side by side, and Welch's test of the difference.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_select.py [--seed-images 40] [--budget 30]
        [--seeds 3] [--epochs 30] [--imgsz 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from pipeline.core.compose import compose_config
from pipeline.core.io import write_text
from pipeline.model.info import read_model_info
from pipeline.ops.select import pick, pool_images, score_pool
from scripts.benchmark_audit import DATASET, copy_dataset, train

NAMES = ["dog", "person"]
GROUP_PATTERN = r"^(IMG_\d+)"  # Roboflow's copies of one frame ("IMG_0044 2_jpg.rf...") share it


def arm_yaml(root: Path, name: str, images: list[Path]) -> Path:
    """A data.yaml whose train split is a list of `images` (their labels stay beside them)."""
    listing = write_text(root / f"{name}.txt", "".join(f"{p}\n" for p in sorted(images)))
    doc = {"path": str(root), "train": str(listing), "val": "images/val", "names": dict(enumerate(NAMES))}
    return write_text(root / f"{name}.yaml", yaml.safe_dump(doc))


def held_out_map(weights: Path, data_yaml: Path, imgsz: int) -> float:
    from ultralytics import YOLO

    metrics = YOLO(str(weights)).val(data=str(data_yaml), split="val", imgsz=imgsz, batch=16, plots=False)
    return float(metrics.box.map)


def selected(root: Path, seed_images: list[Path], pool: list[Path], budget: int, epochs: int, imgsz: int):
    """The pool frames `select` picks with a model trained on the seed images."""
    weights = train(arm_yaml(root, "seed", seed_images), root / "runs", "seed", epochs, imgsz)
    cfg = compose_config(
        [f"classes.names=[{','.join(NAMES)}]", f"data.split.group_pattern='{GROUP_PATTERN}'"]
    )
    scored = score_pool(cfg, weights, pool, read_model_info(weights))
    picks = pick([s.candidate for s in scored], budget, cfg.data.validation.near_duplicate_image_distance)
    return [c.image for c in picks]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed-images", type=int, default=40, help="labelled images to start from")
    parser.add_argument("--budget", type=int, default=30, help="pool frames to label in the round")
    parser.add_argument("--seeds", type=int, default=3, help="trainings per arm (and random draws)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="benchmark-select-") as scratch:
        root = copy_dataset(DATASET, Path(scratch) / "data")
        train_images = pool_images(root / "images" / "train")
        order = np.random.default_rng(0).permutation(len(train_images))
        seed_images = [train_images[i] for i in order[: args.seed_images]]
        pool = [train_images[i] for i in order[args.seed_images :]]
        picks = selected(root, seed_images, pool, args.budget, args.epochs, args.imgsz)
        scores: dict[str, list[float]] = {"select": [], "random": []}
        for seed in range(args.seeds):
            chance = [
                pool[i] for i in np.random.default_rng(100 + seed).choice(len(pool), args.budget, False)
            ]
            for arm, extra in (("select", picks), ("random", chance)):
                data_yaml = arm_yaml(root, f"{arm}{seed}", seed_images + extra)
                train(data_yaml, root / "runs", f"{arm}{seed}", args.epochs, args.imgsz, seed)
                last = root / "runs" / f"{arm}{seed}" / "weights" / "last.pt"
                scores[arm].append(held_out_map(last, data_yaml, args.imgsz))
                print(f"{arm} seed {seed}: held-out mAP50-95 {scores[arm][-1]:.4f}", flush=True)
    print(f"seed {args.seed_images} images, pool {len(pool)}, budget {args.budget}, {args.epochs} epochs")
    for arm, values in scores.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{arm:>6}: mAP50-95 {statistics.fmean(values):.4f} +- {spread:.4f} over {len(values)} seeds")
    if args.seeds > 1:
        p = stats.ttest_ind(scores["select"], scores["random"], equal_var=False).pvalue
        print(
            f"select - random: {statistics.fmean(scores['select']) - statistics.fmean(scores['random']):+.4f}"
            f" (Welch p={p:.2f}; below 0.05 is beyond the seed noise)"
        )


if __name__ == "__main__":
    main()
