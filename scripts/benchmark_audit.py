"""How many planted label errors does `audit` put at the top of its list?

Copies a real dataset (../shared/datasets/thermal_dogs_people: Roboflow YOLO layout) to a scratch
folder, trains a small detector from scratch on its clean train split, plants known errors in the
labels of the held-out images (val + test: the boxes deleted, classes swapped, boxes shifted by
half their width), audits them, and prints precision and recall of the planted errors in the top N
(N = the number planted): a planted error is found when an issue of the right kind names its box.

    python scripts/benchmark_audit.py [--epochs 60] [--imgsz 160] [--per-kind 6] [--seeds 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.boxes import iou_matrix
from pipeline.core.io import write_text
from pipeline.core.layout import label_path
from pipeline.evaluate.audit import HIGH_CONFIDENCE, LOW_CONFIDENCE, Issue, audit
from pipeline.model.scoring import image_shape, read_labels

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "thermal_dogs_people"
HELD_OUT = ("valid", "test")
PLANTED_KINDS = ("overlooked", "swapped", "badly_located")  # deleted, class swapped, shifted
HIT_IOU = 0.5
TARGET = 2 / 3  # of the planted errors in the top N


@dataclass(frozen=True)
class Planted:
    image: str
    kind: str
    box: np.ndarray  # x1 y1 x2 y2 pixels: the deleted box, or the label box as it now stands


def copy_dataset(source: Path, root: Path) -> Path:
    """YOLO layout with the held-out splits merged into `val`."""
    for split, parts in (("train", ("train",)), ("val", HELD_OUT)):
        for part in parts:
            shutil.copytree(source / part / "images", root / "images" / split, dirs_exist_ok=True)
            shutil.copytree(source / part / "labels", root / "labels" / split, dirs_exist_ok=True)
    names = "names: ['dog', 'person']\n"
    write_text(root / "data.yaml", f"path: {root}\ntrain: images/train\nval: images/val\n{names}")
    return root


def train(data_yaml: Path, runs: Path, name: str, epochs: int, imgsz: int, seed: int = 0) -> Path:
    """YOLO11n from scratch with Ultralytics itself; returns its best checkpoint."""
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    YOLO("yolo11n.yaml").train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=16,
        workers=0,
        device="cpu",
        pretrained=False,
        seed=seed,
        deterministic=True,
        project=str(runs),
        name=name,
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    return runs / name / "weights" / "best.pt"


def pixels(row: np.ndarray, height: int, width: int) -> np.ndarray:
    _, cx, cy, w, h = row
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * [width, height, width, height]


def plant(root: Path, per_kind: int, seed: int) -> list[Planted]:
    """At most one planted error per image, so each is unambiguous."""
    rng = np.random.default_rng(seed)
    images = sorted((root / "images" / "val").iterdir())
    chosen = rng.choice(len(images), size=min(len(images), per_kind * len(PLANTED_KINDS)), replace=False)
    planted = []
    for k, index in enumerate(chosen):
        image, kind = images[index], PLANTED_KINDS[k % len(PLANTED_KINDS)]
        labels = read_labels(label_path(image))
        if not len(labels):
            continue
        j = int(rng.integers(len(labels)))
        if kind == "overlooked":
            labels = np.delete(labels, j, axis=0)
            box = pixels(read_labels(label_path(image))[j], *image_shape(image))
        else:
            if kind == "swapped":
                labels[j, 0] = 1 - labels[j, 0]
            else:
                labels[j, 1] = min(1.0, labels[j, 1] + labels[j, 3] / 2)
            box = pixels(labels[j], *image_shape(image))
        lines = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels.tolist()]
        write_text(label_path(image), "\n".join(lines) + "\n")
        planted.append(Planted(str(image), kind, box))
    return planted


def hits(issue: Issue, error: Planted) -> bool:
    if issue.image != error.image or issue.kind != error.kind:
        return False
    box = issue.predicted_box if error.kind == "overlooked" else issue.label_box
    return box is not None and iou_matrix(np.array(box), error.box)[0, 0] >= HIT_IOU


def score(issues: list[Issue], planted: list[Planted]) -> tuple[float, float, dict[str, int]]:
    top = issues[: len(planted)]
    precision = sum(any(hits(i, e) for e in planted) for i in top) / max(len(top), 1)
    found = [e for e in planted if any(hits(i, e) for i in top)]
    by_kind = {kind: sum(e.kind == kind for e in found) for kind in PLANTED_KINDS}
    return precision, len(found) / len(planted), by_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--per-kind", type=int, default=6, help="errors planted of each kind")
    parser.add_argument("--seeds", type=int, default=1, help="plantings (seeds 0..N-1), one model")
    parser.add_argument("--high-confidence", type=float, default=HIGH_CONFIDENCE, help="as audit's option")
    parser.add_argument("--low-confidence", type=float, default=LOW_CONFIDENCE, help="as audit's option")
    parser.add_argument("--workdir", type=Path, help="keep the data and model here; a rerun reuses the model")
    args = parser.parse_args()
    recalls = []
    with tempfile.TemporaryDirectory(prefix="benchmark-audit-") as scratch:
        for seed in range(args.seeds):
            root = copy_dataset(DATASET, (args.workdir or Path(scratch)) / "data")  # clean labels again
            weights = root / "runs" / "clean" / "weights" / "best.pt"
            if not weights.exists():
                train(root / "data.yaml", root / "runs", "clean", args.epochs, args.imgsz)
            for cache in (root / "labels").glob("*.cache"):
                cache.unlink()
            planted = plant(root, args.per_kind, seed)
            thresholds = (args.high_confidence, args.low_confidence)
            issues = audit(root, weights, "val", Path(scratch) / "audit", 1.0, *thresholds, threads=2)
            precision, recall, by_kind = score(issues, planted)
            recalls.append(recall)
            print(
                f"planting seed {seed}: {len(planted)} errors planted in {HELD_OUT}; top {len(planted)}: "
                f"precision {precision:.2f}, recall {recall:.2f}; found by kind {by_kind}; "
                f"{len(issues)} issues listed"
            )
    mean = sum(recalls) / len(recalls)
    met = sum(r >= TARGET for r in recalls)
    print(
        f"recall in the top N over {len(recalls)} planting(s): mean {mean:.2f}, min {min(recalls):.2f}, "
        f"max {max(recalls):.2f}; at least {TARGET:.2f} (the issue's 2/3) in {met} of {len(recalls)}"
    )


if __name__ == "__main__":
    main()
