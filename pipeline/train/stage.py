"""Stage 3, train: Ultralytics from scratch with the resolved plan, tracked in one MLflow run.

The plan (every value with its source and reason) is printed, written and logged before training.
Interrupted runs (even SIGKILL) resume from `last.pt` into the same MLflow run when the stage is run
again with the same inputs; a finished run with unchanged inputs is DVC's cache hit. Multi-GPU DDP
goes through Ultralytics' own relaunch: the project's callbacks are pickled into the workers' state
and act on rank 0 only, logging into the run the parent created (each callback carries its id).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import tracking
from pipeline.core.artifacts import Artifacts, TrainRun
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params, to_flat_dict
from pipeline.core.errors import PipelineError
from pipeline.core.facts import DatasetFacts, load_facts
from pipeline.core.faults import is_main_rank
from pipeline.core.io import read_json, write_json, write_text
from pipeline.core.lineage import git_state, overrides_against_defaults, package_versions
from pipeline.core.prepared import read_dataset_hash
from pipeline.core.rules import Plan, batch_rule, resolve_plan
from pipeline.core.yolo import import_ultralytics
from pipeline.train.callbacks import EpochLogger, epoch_rows, logged_steps
from pipeline.train.distill import teacher_arguments, teacher_lineage

# What a rerun does with an unfinished attempt of the same training (see `next_step`).
RESTART, RESUME, FINALISE = "restart", "resume", "finalise"
NAN_HELP = (
    "training diverged (loss NaN/Inf). The guide's checklist (section 11.1): lower lr0 "
    "(e.g. train.lr0=0.005), keep warmup (train.warmup_epochs=5 or more), use AdamW, check the labels "
    "for zero-size or out-of-range boxes (prepare's report), and turn AMP off (train.amp=false)."
)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    resumed: bool
    weights: Path
    epochs_completed: int
    metrics: dict[str, float]


# ---- pure helpers ---------------------------------------------------------------------------------


def train_arguments(cfg: PipelineConfig, plan: Plan, data_yaml: Path, save_dir: Path) -> dict[str, Any]:
    """Ultralytics `train()` keyword arguments: the plan's values plus the fixed ones."""
    planned = {d.key: d.value for d in plan.decisions}
    return {
        **planned,
        "data": str(data_yaml),
        "project": str(save_dir.parent.resolve()),
        "name": save_dir.name,
        "exist_ok": True,
        "pretrained": False,
        "seed": cfg.seed,
        "deterministic": True,
        "optimizer": cfg.train.optimizer,
        "lrf": cfg.train.lrf,
        "cos_lr": cfg.train.cos_lr,
        "fliplr": cfg.train.fliplr,
        "plots": True,
        "verbose": False,
        **teacher_arguments(cfg),
    }


def training_identity(cfg: PipelineConfig, dataset_hash: str) -> str:
    """Hash of everything that defines a training run: a different one never resumes an old run."""
    relevant = {
        "train": cfg.train.__dict__,
        "model": cfg.model.__dict__,
        "sensor": cfg.sensor.__dict__,
        "hardware": cfg.hardware.__dict__,
        "classes": cfg.classes.names,
        "seed": cfg.seed,
        "dataset": dataset_hash,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def oom_advice(cfg: PipelineConfig, plan: Plan) -> str:
    batch, imgsz = plan.value("batch"), plan.value("imgsz")
    smaller, _ = batch_rule(cfg.hardware.batch, cfg.model.scale, imgsz * 2, cfg.hardware.name)
    return (
        f"out of memory at batch {batch}, imgsz {imgsz} on {cfg.hardware.name}. The hardware table gives "
        f"batch {max(1, smaller)} for the next larger memory setting: rerun with "
        f"train.batch={max(1, batch // 2)} (or a smaller model or imgsz)."
    )


# ---- state and lineage ----------------------------------------------------------------------------


def read_facts(cfg: PipelineConfig) -> DatasetFacts | None:
    path = Artifacts.of(cfg).recommendations
    return load_facts(path) if path.exists() else None


def unfinished_attempt(save_dir: Path, identity: str) -> tuple[str | None, str]:
    """(MLflow run id to continue, `next_step`) of an unfinished identical run; (None, RESTART) else."""
    path = TrainRun(save_dir).state
    state = read_json(path) if path.exists() else None
    if state and state["identity"] == identity and not state["finished"]:
        return state["run_id"], next_step(TrainRun(save_dir).last_weights)
    return None, RESTART


def next_step(last: Path) -> str:
    """RESUME from a checkpoint Ultralytics can continue; FINALISE when last.pt was already stripped of
    its optimizer (training had ended; a kill came during stripping or the final validation, and
    Ultralytics would start a new training with its own defaults); RESTART without a usable one."""
    if not last.exists():
        return RESTART
    checkpoint = load_checkpoint(last)
    if checkpoint is None:
        print(f"{last} cannot be read (a kill while it was written): training restarts", flush=True)
        return RESTART
    if checkpoint.get("optimizer") is None or checkpoint.get("epoch", -1) < 0:
        print(f"{last} holds no optimizer state: training had finished; finalising it", flush=True)
        return FINALISE
    return RESUME


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """An Ultralytics checkpoint as a dict; None when the file is torn."""
    import_ultralytics()
    from ultralytics.utils.patches import torch_load

    try:
        return torch_load(path, map_location="cpu")
    except (OSError, EOFError, RuntimeError, ValueError) as exc:  # what torch raises for a torn zip/pickle
        print(f"{path}: {exc}", flush=True)
        return None


def checkpoint_epochs(last: Path) -> int:
    """Epochs a resumable last.pt completed (Ultralytics counts from 0)."""
    return int(load_checkpoint(last)["epoch"]) + 1


def previous_attempt(save_dir: Path, identity: str) -> tuple[str | None, str]:
    """`unfinished_attempt`, clearing the run directory of anything that will not be continued
    (another config's run, a finished run being redone, a kill before the first checkpoint), and
    dropping results rows of epochs whose checkpoint was never written (a kill between the two):
    Ultralytics appends to results.csv on resume, which would list such an epoch twice."""
    run_id, step = unfinished_attempt(save_dir, identity)
    if step == RESTART:
        shutil.rmtree(save_dir, ignore_errors=True)
    if step == RESUME:
        truncate_results(TrainRun(save_dir).results_csv, checkpoint_epochs(TrainRun(save_dir).last_weights))
    return run_id, step


def truncate_results(results_csv: Path, epochs: int) -> None:
    """Keep results.csv's header and the rows of epochs 1..`epochs`."""
    if not results_csv.exists():
        return
    header, *rows = results_csv.read_text().splitlines(keepends=True)
    kept = [row for row in rows if row.strip() and float(row.split(",")[0]) <= epochs]
    if len(kept) < len(rows):
        dropped = len(rows) - len(kept)
        print(f"{results_csv}: dropped {dropped} row(s) after epoch {epochs}, the checkpoint's", flush=True)
        write_text(results_csv, header + "".join(kept))


def lineage_tags(cfg: PipelineConfig, identity: str, dataset_hash: str) -> dict[str, str]:
    commit, dirty = git_state()
    return {
        "git.commit": commit,
        "git.dirty": str(dirty),
        "pipeline.params_hash": identity,
        "pipeline.dataset_hash": dataset_hash,
        "pipeline.overrides": " ".join(overrides_against_defaults(cfg)) or "(defaults)",
        "pipeline.hardware": cfg.hardware.name,
        "pipeline.sensor": cfg.sensor.name,
        "pipeline.model": cfg.model.name,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        **{f"version.{name}": version for name, version in package_versions().items()},
        **teacher_lineage(cfg),
    }


# ---- the stage ------------------------------------------------------------------------------------


def run(cfg: PipelineConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train per the plan. Extra `callbacks` run at each epoch end after the MLflow logger
    (e.g. a sweep's pruning callback, which may set `trainer.stop`)."""
    dataset_hash = read_dataset_hash(Artifacts.of(cfg).dataset)
    plan = resolve_plan(cfg, read_facts(cfg))
    files = Artifacts.of(cfg)
    save_dir = files.train.folder
    identity = training_identity(cfg, dataset_hash)
    if not is_main_rank():  # another rank under torchrun: train only; rank 0 tracks and reports
        # Each rank reads the same state and checkpoint, so it takes rank 0's step; only rank 0
        # writes (finalising included: two ranks stripping one checkpoint would tear it).
        _, step = unfinished_attempt(save_dir, identity)
        weights = (
            TrainRun(save_dir).best_weights if step == FINALISE else fit(cfg, plan, save_dir, callbacks, step)
        )
        return TrainResult("", step != RESTART, weights, 0, {})

    print(plan.table(), flush=True)
    write_json(files.plan, plan.as_dict())
    previous_run_id, step = previous_attempt(save_dir, identity)
    mlflow = tracking.configure(cfg)
    run_name = os.environ.get("DVC_EXP_NAME") or f"{cfg.model.name}-{cfg.sensor.name}-{cfg.data.name}"
    with mlflow.start_run(run_id=previous_run_id, run_name=None if previous_run_id else run_name) as active:
        run_id = active.info.run_id
        write_json(TrainRun(save_dir).state, {"identity": identity, "run_id": run_id, "finished": False})
        if previous_run_id is None:
            mlflow.log_params(tracking.scrubbed(to_flat_dict(cfg)))
            mlflow.set_tags(tracking.scrubbed(lineage_tags(cfg, identity, dataset_hash)))
            mlflow.log_dict(plan.as_dict(), Artifacts.of(cfg).plan.name)
        logger = EpochLogger(
            run_id, tracking.tracking_uri(cfg), logged_steps(run_id, tracking.tracking_uri(cfg))
        )
        # Epochs a kill left unlogged. The logger runs after Ultralytics saved the epoch's checkpoint, and
        # rows without one were dropped above, so no step is ever logged with values training discarded.
        logger.backfill(epoch_rows(TrainRun(save_dir).results_csv))
        weights = fit(cfg, plan, save_dir, [logger, *callbacks], step=step)
        rows = epoch_rows(TrainRun(save_dir).results_csv)
        metrics = final_metrics(rows)
        tracking.log_metrics(metrics, prefix="final/")
        log_artifacts(mlflow, files.train)
    write_json(TrainRun(save_dir).state, {"identity": identity, "run_id": run_id, "finished": True})
    write_outputs(files, run_id, metrics, rows)
    return TrainResult(run_id, step != RESTART, weights, len(rows), metrics)


def fit(cfg: PipelineConfig, plan: Plan, save_dir: Path, callbacks: Sequence[Any], step: str) -> Path:
    """Run Ultralytics (resuming from last.pt, or only finalising it, per `step`); translate its
    failures into advice."""
    YOLO = import_ultralytics().YOLO  # configures Ultralytics before anything imports it
    import torch

    from pipeline.train.trainer import PipelineTrainer  # heavy: importing it loads Ultralytics

    data_yaml = Artifacts.of(cfg).data_yaml
    if step == FINALISE:
        return finalise_weights(save_dir)
    try:
        if step == RESUME:
            print(f"resuming from {TrainRun(save_dir).last_weights}", flush=True)
            model = with_callbacks(YOLO(str(TrainRun(save_dir).last_weights)), callbacks)
            model.train(resume=True, data=str(data_yaml), trainer=PipelineTrainer)
        else:
            model = with_callbacks(YOLO(cfg.model.architecture), callbacks)
            model.train(trainer=PipelineTrainer, **train_arguments(cfg, plan, data_yaml, save_dir))
    except torch.OutOfMemoryError as exc:
        raise PipelineError(oom_advice(cfg, plan)) from exc
    except RuntimeError as exc:
        if "NaN" in str(exc):
            raise PipelineError(NAN_HELP) from exc
        raise
    return TrainRun(save_dir).best_weights


def finalise_weights(save_dir: Path) -> Path:
    """Finish what Ultralytics' final step was doing when killed: strip the optimizer from each
    checkpoint still holding one. The final validation is not redone: the reports come from
    results.csv, and the evaluate stage validates best.pt."""
    from ultralytics.utils.torch_utils import strip_optimizer

    for path in (TrainRun(save_dir).last_weights, TrainRun(save_dir).best_weights):
        checkpoint = load_checkpoint(path) if path.exists() else None
        if checkpoint is not None and checkpoint.get("optimizer") is not None:
            strip_optimizer(path)
    best = TrainRun(save_dir).best_weights
    return best if best.exists() else TrainRun(save_dir).last_weights


def with_callbacks(model, callbacks: Sequence[Any]):
    for callback in callbacks:
        model.add_callback("on_fit_epoch_end", callback)
    return model


def final_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Validation metrics of the best epoch (what best.pt holds), by Ultralytics' fitness."""
    if not rows:
        return {}
    best = max(rows, key=lambda r: 0.1 * r.get("metrics/mAP50(B)", 0) + 0.9 * r.get("metrics/mAP50-95(B)", 0))
    keys = ("metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)")
    names = ("precision", "recall", "mAP50", "mAP50-95")
    metrics = {name: round(best[key], 5) for key, name in zip(keys, names, strict=True) if key in best}
    return {**metrics, "best_epoch": int(best["epoch"]), "epochs": len(rows)}


def log_artifacts(mlflow, run: TrainRun) -> None:
    for path in (run.best_weights, run.results_csv, run.args):
        if path.exists():
            mlflow.log_artifact(
                str(path), artifact_path=str(Path("train") / path.parent.relative_to(run.folder))
            )
    for plot in sorted(run.folder.glob("*.png")) + sorted(run.folder.glob("*.jpg")):
        mlflow.log_artifact(str(plot), artifact_path="train/plots")


def write_outputs(
    files: Artifacts, run_id: str, metrics: dict[str, float], rows: list[dict[str, float]]
) -> None:
    write_json(files.train_metrics, metrics)
    csv_text = files.train.results_csv.read_text() if rows else "epoch\n"
    write_text(files.epochs_csv, "\n".join(line.replace(" ", "") for line in csv_text.splitlines()) + "\n")
    write_json(files.run_file, {"run_id": run_id})


def main(argv: list[str], prog: str = "train", command: str = "train") -> int:
    parser = stage_parser(prog, "Train a detector from scratch with the resolved plan (see `explain`).")
    args = parser.parse_args(argv)
    result = run(load_params(args.params))
    if not is_main_rank():
        print(f"rank {os.environ['RANK']}: done; rank 0 tracks the run and writes the reports")
        return 0
    how = "resumed" if result.resumed else "trained"
    print(f"{how} {result.epochs_completed} epochs; best {result.metrics}; MLflow run {result.run_id}")
    return 0
