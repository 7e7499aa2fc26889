"""A tiny trained detector for the evaluate, export, benchmark and deploy tests, built once per session.

It stands in for the prepare and train stages' real outputs (their contract, not a mock): a YOLO
layout with data.yaml made from the synthetic thermal generator, an Ultralytics checkpoint trained
from scratch for one epoch at 64 px, and an MLflow run (SQLite under the session's temp folder)
whose id is written to run.json as the train stage writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.compose import compose_config
from pipeline.core.config import PipelineConfig
from pipeline.core.io import write_json, write_text
from pipeline.data.synthetic import CLASSES, generate

IMGSZ = 64
EXPERIMENT = "yolo-pipeline"


@dataclass(frozen=True)
class TinyProject:
    root: Path
    prepared: Path
    train: Path  # Ultralytics save_dir: weights/best.pt
    train_report: Path  # run.json
    tracking_uri: str

    def overrides(self, out: Path) -> list[str]:
        """Inputs from this project, stage outputs under `out` (a test's own tmp_path)."""
        return [
            f"paths.prepared={self.prepared}",
            f"paths.train={self.train}",
            f"paths.train_report={self.train_report}",
            *(f"paths.{key}={out / key}" for key in ("evaluation", "export", "benchmark")),
            f"track.tracking_uri={self.tracking_uri}",
            f"track.experiment={EXPERIMENT}",
        ]

    def config(self, out: Path, *extra: str) -> PipelineConfig:
        return compose_config([*self.overrides(out), "hardware.workers=0", *extra])

    def params(self, out: Path, *extra: str) -> Path:
        """A params.yaml for a stage's main(), as `python -m pipeline compose` writes it."""
        from omegaconf import OmegaConf

        return write_text(
            out / "params.yaml", OmegaConf.to_yaml(OmegaConf.structured(self.config(out, *extra)))
        )


_BUILT: dict[str, TinyProject] = {}


def tiny_project(base: Path) -> TinyProject:
    """Build the project under `base` the first time it is asked for; later calls return the same one."""
    if "project" not in _BUILT:
        _BUILT["project"] = build(base)
    return _BUILT["project"]


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """16-bit radiometric counts to 8 bit by the frame's own range, as the prepare stage does."""
    low, high = float(frame.min()), float(frame.max())
    return ((frame.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))).astype(np.uint8)


def split_of(name: str) -> str:
    """Sequences 0-1 train; sequence 2 is split into val (frames 0-3) and test (frames 4-7)."""
    if not name.startswith("seq002"):
        return "train"
    return "val" if int(name[-2:]) < 4 else "test"


def write_dataset(prepared: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    import cv2

    for frame in generate("thermal", 24, IMGSZ, 0):
        split = split_of(frame.name)
        if split not in splits:
            continue
        (prepared / "images" / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(prepared / "images" / split / f"{frame.name}.png"), to_uint8(frame.image))
        lines = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in frame.boxes.tolist()]
        write_text(
            prepared / "labels" / split / f"{frame.name}.txt", "\n".join(lines) + ("\n" if lines else "")
        )
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    entries = "".join(f"{split}: images/{split}\n" for split in splits)
    write_text(prepared / "data.yaml", f"{entries}names:\n{names}\n")
    return prepared


def train_tiny(prepared: Path, project: Path) -> Path:
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    YOLO("yolo11n.yaml").train(
        data=str(prepared / "data.yaml"),
        epochs=1,
        imgsz=IMGSZ,
        batch=8,
        workers=0,
        device="cpu",
        pretrained=False,
        project=str(project),
        name="t",
        exist_ok=True,
        plots=False,
        val=True,
        verbose=False,
    )
    return project / "t"


def start_run(root: Path, tracking_uri: str) -> str:
    """The pipeline's MLflow run, as the train stage leaves it (artifacts under `root`, not the CWD)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="tiny") as run:
        mlflow.set_tag("pipeline.test", "tiny")
    return run.info.run_id


def build(base: Path) -> TinyProject:
    root = Path(base)
    prepared = write_dataset(root / "prepared")
    train = train_tiny(prepared, root / "runs")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    report = root / "train_report"
    write_json(report / "run.json", {"run_id": start_run(root, tracking_uri)})
    return TinyProject(root, prepared, train, report, tracking_uri)
