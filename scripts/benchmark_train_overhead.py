"""Wall time of the train stage against Ultralytics called directly with the same arguments.

The stage adds the plan, MLflow params/tags/per-epoch metrics/artifacts and resume bookkeeping;
this measures what that costs on the embedded default data (target: ratio <= 1.05).

    .venv/bin/python scripts/benchmark_train_overhead.py [--epochs 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.compose import compose_config
from pipeline.core.rules import resolve_plan
from pipeline.core.yolo import import_ultralytics
from pipeline.data import analyze
from pipeline.data.prepare import run as prepare
from pipeline.train import stage as train


def configure(root: Path, run: str, epochs: int):
    """Shared prepared data under `root`; each run's training outputs under `root/run`."""
    return compose_config(
        [
            f"paths.prepared={root / 'prepared'}",
            f"paths.analysis={root / 'analysis'}",
            *(f"paths.{key}={root / run / key}" for key in ("train", "train_report")),
            f"track.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"train.epochs={epochs}",
            "train.time_hours=null",
        ]
    )


def time_stage(cfg) -> float:
    start = time.perf_counter()
    train.run(cfg)
    return time.perf_counter() - start


def time_direct(cfg, save_dir: Path) -> float:
    YOLO = import_ultralytics().YOLO
    plan = resolve_plan(cfg, train.read_facts(cfg))
    arguments = train.train_arguments(cfg, plan, Path(cfg.paths.prepared) / "data.yaml", save_dir)
    start = time.perf_counter()
    YOLO(cfg.model.architecture).train(**arguments)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating pairs; the medians are compared")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = configure(root, "direct", args.epochs)
        prepare(cfg)
        analyze.run(cfg)  # as in the pipeline: image size and batch come from the dataset facts
        tracking.configure(cfg)  # creating the SQLite store is one-time setup, not per-run overhead
        stage, direct = [], []
        for repeat in range(args.repeats):
            direct.append(time_direct(cfg, root / f"direct{repeat}"))
            stage.append(time_stage(configure(root, f"stage{repeat}", args.epochs)))
        s, d = sorted(stage)[len(stage) // 2], sorted(direct)[len(direct) // 2]
        print(f"\n{'':<22}{'wall time (s)':>14}")
        print(f"{'Ultralytics directly':<22}{d:>14.1f}   runs: {', '.join(f'{t:.1f}' for t in direct)}")
        print(f"{'train stage':<22}{s:>14.1f}   runs: {', '.join(f'{t:.1f}' for t in stage)}")
        print(f"ratio stage/direct: {s / d:.3f} (target <= 1.05), {args.epochs} epochs, default data")


if __name__ == "__main__":
    main()
