"""Ultralytics callbacks the project adds to training.

They are plain picklable objects: Ultralytics cloudpickles the trainer's callbacks into the state
its DDP workers load, so the same objects run in every rank; they act on rank 0 only, and reach the
MLflow run through its id and tracking URI (no active run is needed in a worker process).
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from pathlib import Path
from typing import Any

import psutil

from pipeline.core.faults import is_main_rank, kill_armed, kill_if_armed
from pipeline.core.tracking import sanitize_key

TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun (torch.distributed.run) in every worker


def kill_job_if_armed(point: str, epoch: int | None = None) -> None:
    """The kill switch (`pipeline.core.faults`), for a torchrun launch too: there rank 0 first
    SIGKILLs this node's torchrun agent and the other workers, as `kill -9` of the whole job (an
    OOM kill of its cgroup, `scancel -s KILL`) would. Rank 0 dying alone is another fault: torchrun
    would see it and stop the other ranks gracefully."""
    if is_main_rank() and kill_armed(point, epoch) and TORCHRUN_ENV in os.environ:
        agent = psutil.Process(os.getppid())
        workers = [worker for worker in agent.children() if worker.pid != os.getpid()]
        for process in (agent, *workers):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    kill_if_armed(point, epoch)


def kill_at_setup(trainer: Any) -> None:
    kill_job_if_armed("setup")


def kill_mid_epoch(trainer: Any) -> None:
    kill_job_if_armed("mid_epoch", trainer.epoch + 1)


def kill_at_final_validation(validator: Any) -> None:
    if not validator.training:  # the per-epoch validation runs with the trainer; the final one without
        kill_job_if_armed("final_validation")


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
            self.backfill(epoch_rows(Path(trainer.csv)))

    def backfill(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

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


def epoch_rows(results_csv: Path) -> list[dict[str, float]]:
    """Ultralytics' results.csv as numbers; empty before the first epoch ends."""
    if not results_csv.exists():
        return []
    with results_csv.open(newline="") as handle:
        return [{k.strip(): float(v) for k, v in row.items() if v.strip()} for row in csv.DictReader(handle)]
