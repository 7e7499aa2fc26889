"""Hydra multirun over the pipeline: `python -m pipeline.ops.sweep --multirun [overrides]`.

Each job composes the same `conf/` as the DVC pipeline, then trains and evaluates in its own
output directory (`paths.train`, `paths.train_report`, `paths.evaluation`, ... under the job's
directory) on the dataset that `prepare` produced: `paths.prepared` and `paths.analysis` are
shared, and are made once, under a file lock, by the first job that finds them missing. A job whose
dataset keys (`data.*`, `classes`, `sensor.channels`) differ from those the shared dataset was made
with is refused: it would train on the wrong data. Sweep those keys with one sweep per dataset.

Grid sweeps use Hydra's basic sweeper (`model=yolo11n,yolo11s sensor=rgb,thermal`); Optuna
sweeps use the project's sweeper (`+sweep=lr_aug`, see conf/sweep/ and hydra_plugins/). Under
the Optuna sweeper the job reports each epoch's validation metric to its trial and stops
training when the pruner says so.

The objective is the validation metric of the best epoch (what best.pt holds), the same
quantity the pruner sees per epoch. The evaluate stage still runs for each finished trial and
records its test-split numbers in the trial's MLflow run, but selecting hyperparameters on the
test split would leak it into the choice, so it is never the objective.

A multi-objective sweep (`hydra.sweeper.metrics: [mAP50-95, latency_ms]`) is not pruned; its jobs
also export best.pt and time it with the benchmark stage (`pipeline.ops.latency`) and return both
values, in the order of `hydra.sweeper.metrics`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import hydra
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from pipeline.__main__ import COMMANDS
from pipeline.core import tracking
from pipeline.core.artifacts import SWEEP_METRICS, Artifacts, PreparedDataset, SweepJob, TrainRun
from pipeline.core.compose import CONF_DIR
from pipeline.core.config import PipelineConfig, validate
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.faults import is_main_rank
from pipeline.core.io import read_json, write_json, write_text
from pipeline.core.prepared import read_dataset_hash
from pipeline.evaluate import results, stage
from pipeline.ops import latency
from pipeline.train import stage as train
from pipeline.train.callbacks import epoch_rows

log = logging.getLogger(__name__)

# Each job writes these under its own directory, at the place conf/config.yaml gives them; the other
# paths (the dataset and its analysis) are shared by all the jobs of a sweep.
JOB_OWN_PATHS = ("train", "train_report", "evaluation", "export", "benchmark")


@dataclass(frozen=True)
class JobPlace:
    """Where a job runs: its own directory, the directory the command was started in, its number."""

    output_dir: Path
    cwd: Path
    number: int
    multirun: bool
    overrides: tuple[str, ...]
    sweep_dir: Path


# ---- configuration --------------------------------------------------------------------------------


def job_config(raw: DictConfig, place: JobPlace) -> PipelineConfig:
    """The validated config with this job's outputs in its own directory and every shared location
    absolute (a launcher may run the job in another working directory or on another host)."""
    cfg = validate(raw, source=f"conf/ + {list(place.overrides)}")
    shared = {key: str(place.cwd / getattr(cfg.paths, key)) for key in ("prepared", "analysis")}
    own = {key: str(place.output_dir / relative(getattr(cfg.paths, key))) for key in JOB_OWN_PATHS}
    uri = cfg.track.tracking_uri
    if uri.startswith("sqlite:///") and not uri[len("sqlite:///") :].startswith("/"):
        uri = f"sqlite:///{place.cwd / uri[len('sqlite:///') :]}"
    data_path = None if cfg.data.path is None else str(place.cwd / cfg.data.path)
    return replace(
        cfg,
        data=replace(cfg.data, path=data_path),
        paths=replace(cfg.paths, **shared, **own),
        track=replace(cfg.track, tracking_uri=uri),
    )


def relative(path: str) -> Path:
    """A configured path as a place inside the job's directory (an absolute one loses its root)."""
    return Path(path).relative_to(Path(path).anchor) if Path(path).is_absolute() else Path(path)


def write_job_params(cfg: PipelineConfig, output_dir: Path) -> Path:
    """The job's params.yaml: what the stages read, and what reproduces this job."""
    return write_text(SweepJob(output_dir).params, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def metric_column(metric: str) -> str:
    """The results.csv column (validation split, per epoch) of an objective name."""
    if metric not in SWEEP_METRICS:
        raise ConfigError(
            f"hydra.sweeper.metric={metric!r} is invalid: the pipeline reports {sorted(SWEEP_METRICS)} "
            "(validation split, per epoch)"
        )
    return SWEEP_METRICS[metric]


# ---- the shared dataset ---------------------------------------------------------------------------


def ensure_prepared(cfg: PipelineConfig, params: Path) -> None:
    """Run prepare (and analyze) once for the whole sweep if their outputs are missing; refuse a job
    whose dataset keys differ from those the shared dataset was claimed with."""
    files = Artifacts.of(cfg)
    prepared, manifest, facts = files.prepared, files.manifest, files.recommendations
    prepared.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(prepared.parent / f".{prepared.name}.sweep.lock")):
        if not manifest.exists():
            run_stage("prepare", params)
        if not facts.exists():
            run_stage("analyze", params)
        check_dataset_claim(cfg, prepared)  # every job, under the lock: parallel jobs claim in turn


def dataset_keys(cfg: PipelineConfig) -> dict[str, Any]:
    """What `prepare` makes the shared dataset from (the keys a sweep may not vary), flat and dotted."""
    nested = {
        "data": asdict(cfg.data),
        "classes": asdict(cfg.classes),
        "sensor": {"channels": cfg.sensor.channels},
    }
    return flat(nested)


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    items: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def check_dataset_claim(cfg: PipelineConfig, prepared: Path) -> None:
    """The first job claims the shared dataset with its dataset keys; a later job whose keys differ
    is refused. A claim on another dataset hash is stale (prepare ran again since) and is replaced."""
    claim_path = PreparedDataset(prepared).sweep_claim
    dataset_hash = read_dataset_hash(PreparedDataset(prepared))
    mine = json.loads(json.dumps(dataset_keys(cfg)))  # as the claim reads back: tuples become lists
    claim = read_json(claim_path) if claim_path.exists() else None
    if claim is None or claim["dataset_hash"] != dataset_hash:
        write_json(claim_path, {"dataset_hash": dataset_hash, "keys": mine})
        return
    differing = {key: value for key, value in mine.items() if claim["keys"].get(key) != value}
    if differing:
        changes = ", ".join(
            f"{key}={value!r} (dataset made with {claim['keys'].get(key)!r})"
            for key, value in differing.items()
        )
        raise ConfigError(
            f"this job sets {changes}, but the shared dataset {prepared} was prepared for another job "
            f"(claim: {claim_path}); every trial would train on that one dataset. Sweep data.*, classes "
            "and sensor.channels with one sweep per dataset, each with its own paths.prepared and "
            "paths.analysis"
        )


def run_stage(name: str, params: Path) -> None:
    """A pipeline stage through its own entry point, exactly as `python -m pipeline <name>`."""
    log.info("running %s (params %s)", name, params)
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(["--params", str(params)], prog=f"python -m pipeline {name}", command=name)
    if code:
        raise PipelineError(
            f"the {name} stage exited with code {code} (params {params}); see its output above"
        )


# ---- training callbacks ---------------------------------------------------------------------------


class PruningReporter:
    """on_fit_epoch_end: report the epoch's validation metric to the trial; stop when pruned.

    Acts on rank 0 only: Ultralytics broadcasts `trainer.stop` from rank 0 to every DDP rank right
    after this callback, so all ranks stop together. The prune decision is also recorded on the
    trial (`pruned_epoch`), where the job (and the sweeper) read it whichever process trained.
    """

    def __init__(self, link: Any, column: str):
        self.link, self.column = link, column
        self.reported: set[int] = set()  # Ultralytics repeats the last epoch's call after final_eval
        self._trial = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trial": None}  # an open trial holds a database connection

    def __call__(self, trainer: Any) -> None:
        rows = epoch_rows(Path(trainer.csv)) if is_main_rank() else []
        if not rows or self.column not in rows[-1] or int(rows[-1]["epoch"]) in self.reported:
            return
        epoch, value = int(rows[-1]["epoch"]), rows[-1][self.column]
        self._trial = self._trial or self.link.open()
        self._trial.report(value, epoch)
        self.reported.add(epoch)
        if self._trial.should_prune():
            from hydra_plugins.optuna_sweeper.job import PRUNED_EPOCH_ATTR

            self._trial.set_user_attr(PRUNED_EPOCH_ATTR, epoch)
            print(f"trial {self.link.number} pruned after epoch {epoch} ({self.link.metric} {value:.5g})")
            trainer.stop = True


@dataclass
class RunNesting:
    """Makes the train stage's MLflow run a child of the sweep's parent run, as soon as it exists.

    `pipeline.train.stage.run` opens its own run; its id is in the train state file beside the run
    directory from the start, so the first epoch end (rank 0) can nest it, and the job does it
    again after training (for runs that fail before an epoch ends)."""

    tracking_uri: str
    parent_id: str
    name: str
    tags: dict[str, str]
    link: Any
    done: bool = False

    def __call__(self, trainer: Any) -> None:
        if is_main_rank() and not self.done:
            self.nest(Path(trainer.save_dir))

    def nest(self, save_dir: Path) -> str | None:
        from hydra_plugins.optuna_sweeper import job

        path = TrainRun(save_dir).state
        if not path.exists():
            return None
        run_id = read_json(path)["run_id"]
        job.nest(job.client_for(self.tracking_uri), run_id, self.parent_id, self.name, self.tags)
        if self.link is not None:
            self.link.open().set_user_attr(job.RUN_ATTR, run_id)
        self.done = True
        return run_id


# ---- one job --------------------------------------------------------------------------------------


def sweep_parent(cfg: PipelineConfig, place: JobPlace, link: Any) -> str | None:
    """The sweep's MLflow parent run: the Optuna sweeper's (in the study), or for a grid sweep one
    shared by the jobs of this sweep directory, made by whichever job comes first."""
    from hydra_plugins.optuna_sweeper import job

    if link is not None:
        return link.parent_run_id()
    client = job.client_for(tracking.tracking_uri(cfg))
    exp_id = job.experiment_id(client, cfg.track.experiment)
    directory = place.sweep_dir
    run_id, created = job.shared_run(client, exp_id, "sweep.dir", str(directory), f"grid-{directory.name}")
    if created:
        client.set_tag(run_id, "sweep.kind", "grid")
        client.set_tag(run_id, "sweep.command", " ".join(sys.argv)[:5000])
    return run_id


def objectives(link: Any) -> tuple[str, ...]:
    """What the job returns: the sweep's metric, or a multi-objective sweep's metrics in order."""
    if link is None:
        return ("mAP50-95",)
    return link.metrics if link.multi_objective else (link.metric,)


def train_and_evaluate(cfg: PipelineConfig, place: JobPlace, link: Any, params: Path) -> dict[str, Any]:
    from hydra_plugins.optuna_sweeper import job

    names = objectives(link)
    metric = next(name for name in (*names, "mAP50-95") if name != latency.LATENCY_METRIC)
    column = metric_column(metric)
    callbacks: list[Any] = []
    nesting = None
    if place.multirun:
        name = job.trial_name(place.number) if link is not None else f"job-{place.number:04d}"
        tags = {"sweep.overrides": " ".join(place.overrides)[:5000], "sweep.job_dir": str(place.output_dir)}
        nesting = RunNesting(tracking.tracking_uri(cfg), sweep_parent(cfg, place, link), name, tags, link)
        callbacks.append(nesting)
    if link is not None and not link.multi_objective:  # Optuna prunes single-objective studies only
        callbacks.append(PruningReporter(link, column))
    try:
        result = train.run(cfg, callbacks=callbacks)
    finally:
        if nesting is not None and not nesting.done:
            nesting.nest(Path(cfg.paths.train))
    pruned_epoch = link.frozen().user_attrs.get(job.PRUNED_EPOCH_ATTR) if link is not None else None
    evaluation = evaluate(cfg) if pruned_epoch is None else None
    timed = latency.measure(cfg, params, run_stage) if latency.LATENCY_METRIC in names else None
    values = [timed[n] if n == latency.LATENCY_METRIC else result.metrics.get(n) for n in names]
    multi = {"objectives": list(names), "values": values, "latency": timed} if len(names) > 1 else {}
    return {
        **multi,
        "value": result.metrics.get(metric),
        "metric": metric,
        "pruned": pruned_epoch is not None,
        "pruned_epoch": pruned_epoch,
        "epochs": result.epochs_completed,
        "metrics": result.metrics,
        "evaluation": {} if evaluation is None else headline(evaluation),
        # per image, for the sweeper's paired interval of the best trial against the runner-up
        "image_counts": None if evaluation is None else paired_counts(evaluation),
        "run_id": result.run_id,
    }


def headline(evaluation: results.Evaluation) -> dict[str, float]:
    return {k: v for k, v in results.flat_metrics(evaluation).items() if "/" not in k}


def paired_counts(evaluation: results.Evaluation) -> dict[str, Any]:
    """Per-image (TP, FP, FN) in image order, and a hash of the names: only trials scored on the
    same images are paired."""
    names = "\n".join(name for name, *_ in evaluation.image_counts)
    counts = [list(c) for _, *c in evaluation.image_counts]
    return {"images": hashlib.sha256(names.encode()).hexdigest(), "counts": counts}


def evaluate(cfg: PipelineConfig) -> results.Evaluation:
    """The evaluate stage's measurements, outputs and MLflow metrics for this trial.

    Not `pipeline.evaluate.stage.main`: that also registers the weights as the next `candidate` model
    version, which a sweep trial is not (the best trial becomes one through its experiment overlay).
    """
    import mlflow

    e = stage.run(cfg)
    files = Artifacts.of(cfg)
    write_json(files.evaluation_metrics, results.metrics_json(e))
    write_json(files.thresholds, results.thresholds_json(e, cfg.evaluate.target_precision))
    with tracking.stage_run(cfg):
        tracking.log_metrics(results.flat_metrics(e), prefix="eval/")
        mlflow.set_tags({"eval.split": e.split, "eval.warnings": str(len(e.warnings))})
        mlflow.log_artifacts(str(files.evaluation), artifact_path="evaluate")
    return e


def job_place() -> JobPlace:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    return JobPlace(
        output_dir=Path(hydra_cfg.runtime.output_dir),
        cwd=Path(hydra_cfg.runtime.cwd),
        number=int(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else 0,
        multirun=hydra_cfg.mode == RunMode.MULTIRUN,
        overrides=tuple(hydra_cfg.overrides.task),
        sweep_dir=(Path(hydra_cfg.runtime.cwd) / str(hydra_cfg.sweep.dir)).resolve(),
    )


def run_job(raw: DictConfig) -> dict[str, Any]:
    """One job of a sweep (or a single run without --multirun): prepare once, train, evaluate."""
    from hydra_plugins.optuna_sweeper.job import current_trial

    place = job_place()
    link = current_trial()
    cfg = job_config(raw, place)
    if latency.LATENCY_METRIC in objectives(link):
        cfg = latency.configure(cfg, link.latency)
    params = write_job_params(cfg, place.output_dir)
    ensure_prepared(cfg, params)
    outcome = train_and_evaluate(cfg, place, link, params)
    write_json(SweepJob(place.output_dir).outcome, outcome)
    state = f"pruned after epoch {outcome['pruned_epoch']}" if outcome["pruned"] else "finished"
    names, values = outcome.get("objectives", [outcome["metric"]]), outcome.get("values", [outcome["value"]])
    shown = ", ".join(f"{name} {value}" for name, value in zip(names, values, strict=True))
    print(f"job {place.number} {state}: {shown} ({place.output_dir})")
    return outcome


main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(run_job)


if __name__ == "__main__":
    # Run through the imported module, not __main__, so process-based launchers (joblib, submitit)
    # pickle the task function by reference.
    importlib.import_module("pipeline.ops.sweep").main()
