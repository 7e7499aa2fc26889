"""Ultralytics callbacks the project adds to training.

They are plain picklable objects: Ultralytics cloudpickles the trainer's callbacks into the state
its DDP workers load, so the same objects run in every rank; they act on rank 0 only, and reach the
MLflow run through its id and tracking URI (no active run is needed in a worker process).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

# `PIPELINE_KILL_AT=<point>[:<n>]` SIGKILLs a stage at a named moment: how the tests prove that a rerun
# recovers from a kill anywhere. n is the epoch for training's points, the format's position for export's.
# Points, in the order the pipeline reaches them:
KILL_ENV = "PIPELINE_KILL_AT"
KILL_POINTS = (
    "setup",  # after Ultralytics built the model, data and optimizer, before epoch 1
    "mid_epoch",  # after the first batch of the epoch
    "after_results_row",  # the epoch's results.csv row is written, its checkpoint is not
    "optimizer_strip",  # training ended; last.pt is stripped of its optimizer, best.pt is not yet
    "final_validation",  # both checkpoints stripped; Ultralytics' final validation of best.pt starts
    "evaluate_validated",  # Ultralytics' validation ran; no evaluate output is written yet
    "evaluate_registered",  # the model version is registered; metrics.json and the report are not written
    "export_exported",  # a format is exported into the staging folder; its parity check has not run
    "export_published",  # every checked format is in the staging models folder; models/ is not swapped yet
)


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", -1)) in (-1, 0)


def kill_armed(point: str, epoch: int | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether `KILL_ENV` asks for a kill at `point` (at `epoch`, 1-based, when it names one)."""
    armed = (os.environ if environ is None else environ).get(KILL_ENV, "")
    if not armed:
        return False
    name, _, at_epoch = armed.partition(":")
    if name not in KILL_POINTS:
        raise ConfigError(
            f"{KILL_ENV}={armed!r}: unknown point {name!r}; use one of {', '.join(KILL_POINTS)}"
        )
    return name == point and (not at_epoch or epoch == int(at_epoch))


def kill_if_armed(point: str, epoch: int | None = None) -> None:
    if is_main_rank() and kill_armed(point, epoch):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_at_setup(trainer: Any) -> None:
    kill_if_armed("setup")


def kill_mid_epoch(trainer: Any) -> None:
    kill_if_armed("mid_epoch", trainer.epoch + 1)


def kill_at_final_validation(validator: Any) -> None:
    if not validator.training:  # the per-epoch validation runs with the trainer; the final one without
        kill_if_armed("final_validation")


def logged_steps(run_id: str, tracking_uri: str | None = None, key: str = "metrics/mAP50-95_B_") -> set[int]:
    """Epochs already in the run (a resumed run must not log any epoch twice)."""
    from mlflow.tracking import MlflowClient

    return {m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


class EpochLogger:
    """Logs each finished epoch's row of results.csv (losses, P, R, mAP50, mAP50-95, lr) to MLflow.

    Reading results.csv (written by Ultralytics just before this callback runs) rather than the
    trainer's live attributes makes the same code backfill epochs an interruption left unlogged.
    """

    def __init__(self, run_id: str, tracking_uri: str, already_logged: set[int]):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.logged = set(already_logged)

    def __call__(self, trainer: Any) -> None:
        if is_main_rank():
            from pipeline.train.stage import epoch_rows

            self.backfill(epoch_rows(Path(trainer.csv)))

    def backfill(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        from pipeline.core.tracking import sanitize_key

        now = int(time.time() * 1000)
        metrics = [
            Metric(sanitize_key(key), value, now, int(row["epoch"]))
            for row in rows
            if int(row["epoch"]) not in self.logged
            for key, value in row.items()
            if key not in ("epoch", "time")
        ]
        if metrics:
            MlflowClient(self.tracking_uri).log_batch(self.run_id, metrics=metrics)
            self.logged |= {metric.step for metric in metrics}


def global_world_size(local_devices: int, environ: dict[str, str]) -> int:
    """Under torchrun across nodes, the world is every node's processes, not this node's devices."""
    launched = int(environ.get("WORLD_SIZE", "1"))
    return (
        launched if int(environ.get("LOCAL_RANK", "-1")) != -1 and launched > local_devices else local_devices
    )
