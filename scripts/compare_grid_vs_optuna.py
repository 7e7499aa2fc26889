"""Grid sweep against an Optuna sweep with pruning, on the real thermal_dogs_people data.

Both search learning rate and mosaic strength for the same model at a low resolution. The grid
(Hydra's basic sweeper) trains every combination for the full epoch budget; the Optuna sweep
(TPE, successive-halving pruner by default) trains as many trials as the grid has points but stops
those behind early. Printed: the best validation mAP50-95 and the total epochs each spent.

    .venv/bin/python scripts/compare_grid_vs_optuna.py                  # about 21 minutes on 2 CPU cores
    .venv/bin/python scripts/compare_grid_vs_optuna.py --epochs 3 --imgsz 96 --out /tmp/cmp   # a quick look

Both sweeps share one prepared dataset and one MLflow store under --out (a temporary folder by
default); `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db` shows them side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "thermal_dogs_people"
LR_GRID = (0.002, 0.005, 0.01)
MOSAIC_GRID = (0.5, 1.0)


@dataclass(frozen=True)
class SweepSummary:
    name: str
    jobs: int
    pruned: int
    epochs: int
    best: float | None
    seconds: float


def common_overrides(out: Path, args: argparse.Namespace) -> list[str]:
    return [
        "data=thermal_dogs_people",
        "classes=thermal_dogs_people",
        "sensor=thermal",
        f"model={args.model}",
        f"data.path={DATASET}",
        f"paths.prepared={out}/prepared",
        f"paths.analysis={out}/analysis",
        f"track.tracking_uri=sqlite:///{out}/mlflow.db",
        f"train.imgsz={args.imgsz}",
        f"train.batch={args.batch}",  # the hardware table's batch grows at low resolution: few steps
        f"train.epochs={args.epochs}",
        "train.patience=1000",  # no early stopping: the comparison is about pruning
        "train.time_hours=null",
        f"train.workers={args.workers}",
    ]


def grid_arguments(out: Path) -> list[str]:
    return [
        f"hydra.sweep.dir={out}/grid",
        "train.lr0=" + ",".join(map(str, LR_GRID)),
        "train.mosaic=" + ",".join(map(str, MOSAIC_GRID)),
    ]


def pruner_arguments(args: argparse.Namespace) -> list[str]:
    """Successive halving: a trial goes on past epochs/6 (and again past 3x that) only while it is
    in the best third of the trials seen at that epoch (the best so far while fewer than six have
    reported). The median pruner compares against finished trials only, so its first trials always
    run to the end."""
    if args.pruner == "median":
        return [
            "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=2",
            f"hydra.sweeper.pruner.n_warmup_steps={max(1, args.epochs // 3)}",
        ]
    return [
        "hydra/sweeper/pruner=successive_halving",
        f"hydra.sweeper.pruner.min_resource={max(1, args.epochs // 6)}",
        "hydra.sweeper.pruner.reduction_factor=3",
    ]


def optuna_arguments(out: Path, args: argparse.Namespace) -> list[str]:
    return [
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=tpe",
        *pruner_arguments(args),
        "hydra.sweeper.study_name=compare",
        f"hydra.sweeper.n_trials={len(LR_GRID) * len(MOSAIC_GRID)}",
        f"hydra.sweeper.seed={args.seed}",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweeper.experiment_dir={out}/experiment",
        f"hydra.sweep.dir={out}/optuna",
        f"train.lr0=tag(log, interval({min(LR_GRID)}, {max(LR_GRID)}))",
        f"train.mosaic=interval({min(MOSAIC_GRID)}, {max(MOSAIC_GRID)})",
    ]


def run_sweep(name: str, out: Path, arguments: list[str]) -> SweepSummary:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "pipeline.ops.sweep", "--multirun", *arguments]
    started = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        subprocess.run(command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return summarise(name, out / name, time.perf_counter() - started)


def summarise(name: str, sweep_dir: Path, seconds: float) -> SweepSummary:
    """From each job's outcome.json and Ultralytics' results.csv (the epochs it really trained)."""
    outcomes = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/outcome.json"))]
    epochs = sum(count_rows(p) for p in sweep_dir.glob("*/train/results.csv"))
    finished = [o["value"] for o in outcomes if not o["pruned"] and o["value"] is not None]
    pruned = sum(o["pruned"] for o in outcomes)
    return SweepSummary(name, len(outcomes), pruned, epochs, max(finished, default=None), seconds)


def count_rows(results_csv: Path) -> int:
    with results_csv.open(newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def report(summaries: list[SweepSummary]) -> str:
    lines = [f"{'sweep':<8} {'jobs':>4} {'pruned':>6} {'epochs':>6} {'best mAP50-95':>13} {'minutes':>7}"]
    for s in summaries:
        best = "n/a" if s.best is None else f"{s.best:.4f}"
        lines.append(f"{s.name:<8} {s.jobs:>4} {s.pruned:>6} {s.epochs:>6} {best:>13} {s.seconds / 60:>7.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs per job (the grid trains all of them)")
    parser.add_argument("--imgsz", type=int, default=128, help="training resolution (multiple of 32)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="yolo11n")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers")
    parser.add_argument("--seed", type=int, default=0, help="TPE seed")
    parser.add_argument(
        "--pruner",
        choices=("successive_halving", "median"),
        default="successive_halving",
        help="the Optuna sweep's pruner",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="keep everything here (default: a temp folder)"
    )
    args = parser.parse_args()
    if not DATASET.exists():
        print(f"error: {DATASET} is absent (the shared datasets sit beside the project)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="grid-vs-optuna-") as tmp:
        out = (args.out or Path(tmp)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        common = common_overrides(out, args)
        summaries = [
            run_sweep("grid", out, [*grid_arguments(out), *common]),
            run_sweep("optuna", out, [*optuna_arguments(out, args), *common]),
        ]
        print(report(summaries))
        print(f"logs and job directories: {out}" if args.out else "(run with --out DIR to keep the outputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
