"""One sweep worker: ask a trial, launch its job, tell the result, until the study's budget is spent.

Ask-and-tell, not blocking batches: with a launcher that runs jobs elsewhere (joblib, submitit)
`n_jobs` threads each keep one trial in flight, so a new trial starts as soon as any finishes and
is sampled knowing every result so far. Hydra's basic launcher runs jobs in this process (it
changes the global Hydra and logging state), so with it trials run one at a time.

Several workers (on one machine or many, sharing a PostgreSQL storage) run the same loop on one
study; the budget rules in `_study` make them stop together at `n_trials`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf

from hydra_plugins.optuna_sweeper import _lead, _multi, _overlay, _space, _study, _tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None = None
    error: str | None = None
    job_dir: str | None = None
    image_counts: dict | None = None  # per-image TP/FP/FN on the evaluation split (_lead)
    values: tuple[float, ...] | None = None  # a multi-objective trial's objectives, in order


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def interpret(returned: Any) -> Outcome:
    """A job returns its objective, or a mapping {"value": ..., "pruned": bool, "image_counts": ...}
    (pipeline.ops.sweep); a multi-objective job's mapping has "values" (one per objective)."""
    if isinstance(returned, Mapping) and returned.get("pruned"):
        return Outcome("PRUNED")
    if isinstance(returned, Mapping) and returned.get("values") is not None:
        values = list(returned["values"])
        if values and all(finite(v) for v in values):
            return Outcome("COMPLETE", values=tuple(float(v) for v in values))
        return Outcome("FAIL", error=f"the job returned objective values that are not all finite: {values!r}")
    value = returned.get("value") if isinstance(returned, Mapping) else returned
    counts = returned.get(_lead.COUNTS_ATTR) if isinstance(returned, Mapping) else None
    if finite(value):
        return Outcome("COMPLETE", float(value), image_counts=counts or None)
    return Outcome("FAIL", error=f"the job returned no finite objective value: {returned!r}")


@dataclass
class Context:
    """What a worker needs, resolved once from the sweeper's settings and Hydra's config."""

    settings: Any
    config: Any
    launcher: Any
    parser: OverridesParser
    space: _space.SearchSpace
    n_trials: int
    sweep_dir: Path
    storage_url: str
    objectives: _multi.Objectives


class Worker:
    def __init__(self, ctx: Context, study, storage, tracking: tuple[Any, str, str]):
        self.ctx, self.study, self.storage = ctx, study, storage
        self.client, self.exp_id, self.parent_id = tracking
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.lock = threading.Lock()  # samplers are not thread-safe: ask and tell one at a time
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.in_flight: set[int] = set()  # trial numbers launched and not yet told
        self.heartbeat = _study.Heartbeat(storage, ctx.settings.heartbeat_interval)

    @property
    def sequential(self) -> bool:
        return type(self.ctx.launcher).__name__ == "BasicLauncher" or self.ctx.settings.n_jobs <= 1

    def run(self) -> None:
        try:
            with self.heartbeat:
                if self.sequential:
                    if self.ctx.settings.n_jobs > 1:
                        log.warning(
                            "the basic launcher runs one job at a time in this process: n_jobs is "
                            "ignored (use hydra/launcher=joblib, or submitit, for parallel trials)"
                        )
                    self.loop()
                else:
                    self.run_threads()
            if self.error is not None:
                raise self.error
        except KeyboardInterrupt:
            for number in sorted(self.in_flight):  # a rerun of the command runs them again
                _study.discard(self.study, number, "interrupted", requeue=True)
            raise

    def run_threads(self) -> None:
        threads = [
            threading.Thread(target=self.loop, name=f"trial-slot-{i}", daemon=True)
            for i in range(self.ctx.settings.n_jobs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # joined in slices so Ctrl-C reaches this thread
                thread.join(timeout=1.0)

    def loop(self) -> None:
        try:
            while not self.stop.is_set():
                trial = self.next_trial()
                if trial is None:
                    return
                self.run_trial(trial)
        except BaseException as exc:  # stop the other slots too; run() re-raises it (Ctrl-C included)
            self.error = self.error or exc
            self.stop.set()

    def next_trial(self):
        settings = self.ctx.settings
        with self.lock:
            _study.fail_stale(self.study)  # trials of workers that died meanwhile go back in the queue
            if _study.budget_left(self.study, self.ctx.n_trials) <= 0:
                return None
            failed = _study.failed_count(self.study)
            if _study.too_many_failures(failed, self.ctx.n_trials, settings.max_failure_rate):
                raise HydraException(
                    f"{failed} of {self.ctx.n_trials} trials failed, above max_failure_rate="
                    f"{settings.max_failure_rate}: see the failed jobs' logs in {self.ctx.sweep_dir}"
                )
        trial = _study.ask(self.study, self.ctx.space.distributions, self.lock)
        if not _study.within_budget(self.study, trial.number, self.ctx.n_trials):
            _study.discard(self.study, trial.number, "over budget: other workers took the last places", False)
            return None
        return trial

    def run_trial(self, trial) -> None:
        overrides = _space.trial_overrides(self.ctx.space.fixed, trial.params)
        trial.set_user_attr("overrides", overrides)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.in_flight.add(trial.number)
        self.heartbeat.add(trial_id)
        log.info("trial %d: %s", trial.number, " ".join(overrides))
        try:
            outcome = self.launch(trial.number, overrides)
        finally:
            self.heartbeat.remove(trial_id)
        self.tell(trial, outcome)
        self.in_flight.discard(trial.number)

    def launch(self, number: int, overrides: Sequence[str]) -> Outcome:
        """Run the trial's job; whatever goes wrong in it becomes the trial's recorded failure.

        The job number is the trial number, so job directories never collide between workers
        and the job finds its trial through `hydra.job.num`."""
        try:
            result = self.ctx.launcher.launch([list(overrides)], initial_job_idx=number)[0]
            job_dir = str(result.hydra_cfg.hydra.runtime.output_dir)
            if result.status != JobStatus.COMPLETED:
                error = result._return_value  # JobReturn keeps the job's exception here
                log.error("trial %d failed: %s", number, error, exc_info=error)
                return Outcome("FAIL", error=f"{type(error).__name__}: {error}", job_dir=job_dir)
            return replace(interpret(result.return_value), job_dir=job_dir)
        except Exception as exc:  # composition or launcher failure (e.g. a SLURM job killed)
            log.error("trial %d could not run: %s", number, exc, exc_info=exc)
            return Outcome("FAIL", error=f"{type(exc).__name__}: {exc}")

    def tell(self, trial, outcome: Outcome) -> None:
        from optuna.trial import TrialState

        if outcome.job_dir is not None:
            trial.set_user_attr("job_dir", outcome.job_dir)
        if outcome.error is not None:
            trial.set_user_attr("error", outcome.error[:5000])
        if outcome.image_counts is not None:
            trial.set_user_attr(_lead.COUNTS_ATTR, outcome.image_counts)
        with self.lock:
            if outcome.state == "COMPLETE":
                frozen = self.study.tell(trial, outcome.value if outcome.values is None else outcome.values)
            else:
                frozen = self.study.tell(trial, state=TrialState[outcome.state])
        metrics = self.ctx.objectives.metrics
        _tracking.record_trial(self.client, self.exp_id, self.parent_id, frozen, metrics)
        values = frozen.values or [None] * len(metrics)
        shown = ", ".join(
            f"{m} {'-' if v is None else f'{v:.5g}'}" for m, v in zip(metrics, values, strict=True)
        )
        left = max(0, _study.budget_left(self.study, self.ctx.n_trials))
        log.info(
            "trial %d %s, %s (%d of %d still to start)",
            frozen.number,
            frozen.state.name,
            shown,
            left,
            self.ctx.n_trials,
        )


# ---- the sweep ------------------------------------------------------------------------------------


def run_sweep(sweeper: Any, arguments: Sequence[str]) -> list[Any]:
    ctx = resolve(sweeper, arguments)
    settings = ctx.settings
    storage = _study.make_storage(ctx.storage_url, settings.heartbeat_interval, settings.grace_period)
    grid = _space.grid_space(ctx.space.distributions) if _study.is_grid(settings.sampler) else None
    sampler = _study.build_sampler(settings.sampler, settings.seed, grid)
    obj = ctx.objectives
    direction = list(obj.directions) if obj.multi else settings.direction
    study = _study.open_study(
        storage, settings.study_name, direction, sampler, _study.build_pruner(settings.pruner)
    )
    _study.check_direction(study, direction)
    _study.fail_stale(study)
    tracking = open_tracking(ctx)
    study.set_user_attr(_study.MLFLOW_PARENT_ATTR, tracking[2])
    log.info(
        "study %r in %s: %s, %d trials in total, %d to start",
        settings.study_name,
        _study.redact(ctx.storage_url),
        _study.finished_summary(study) or "new",
        ctx.n_trials,
        max(0, _study.budget_left(study, ctx.n_trials)),
    )
    worker = Worker(ctx, study, storage, tracking)
    try:
        worker.run()
    except KeyboardInterrupt:
        _tracking.finish_parent(tracking[0], tracking[2], failed=True)
        raise
    except HydraException:
        summarise(ctx, study, tracking, failed=True)
        raise
    summarise(ctx, study, tracking, failed=False)
    return study.get_trials()


def resolve(sweeper: Any, arguments: Sequence[str]) -> Context:
    settings, config = sweeper.settings, sweeper.config
    obj = _multi.objectives(settings)  # refuses a malformed multi-objective setting before anything runs
    cwd = Path(config.hydra.runtime.cwd)
    sweep_dir = (cwd / str(config.hydra.sweep.dir)).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    space = _space.parse_space(settings.params, arguments, parser)
    if not space.distributions:
        raise HydraException(
            "nothing to search: give hydra.sweeper.params (e.g. +sweep=lr_aug) or sweep overrides "
            "such as 'train.lr0=tag(log, interval(0.001, 0.02))'"
        )
    n_trials = settings.n_trials
    if _study.is_grid(settings.sampler):
        size = math.prod(len(v) for v in _space.grid_space(space.distributions).values())
        if size < n_trials:
            log.info("the grid has %d points: n_trials %d capped at %d", size, n_trials, size)
        n_trials = min(n_trials, size)
    url = _study.storage_url(settings.storage, sweep_dir, cwd)
    return Context(settings, config, sweeper.launcher, parser, space, n_trials, sweep_dir, url, obj)


def open_tracking(ctx: Context) -> tuple[Any, str, str]:
    """(client, experiment id, parent run id): the study's parent run, shared by its workers."""
    import os

    settings, config = ctx.settings, ctx.config
    uri = (  # the order the pipeline's jobs use (pipeline.core.tracking), so parent and trials meet
        os.environ.get("MLFLOW_TRACKING_URI")
        or settings.mlflow.tracking_uri
        or OmegaConf.select(config, "track.tracking_uri")
    )
    if uri is not None:
        uri = _study.absolute_sqlite(uri, config.hydra.runtime.cwd)
    experiment = settings.mlflow.experiment or OmegaConf.select(config, "track.experiment") or "Default"
    client = _tracking.client_for(uri)
    exp_id = _tracking.experiment_id(client, experiment)
    description = {
        "study_name": settings.study_name,
        "storage": _study.redact(ctx.storage_url),
        "direction": ",".join(ctx.objectives.directions),
        "metric": ",".join(ctx.objectives.metrics),
        "n_trials": ctx.n_trials,
        "sampler": settings.sampler._target_,
        "pruner": settings.pruner._target_,
        "seed": settings.seed,
        "fixed": " ".join(ctx.space.fixed),
        **{f"space.{key}": str(dist) for key, dist in ctx.space.distributions.items()},
    }
    parent_id = _tracking.open_parent(client, exp_id, settings.study_name, description)
    return client, exp_id, parent_id


def summarise(ctx: Context, study, tracking: tuple[Any, str, str], failed: bool) -> None:
    """Best trial marked, plots on the parent run, the best trial's overlay written (multi-objective:
    the Pareto front, its overlays and the chosen trial's, see `_multi`)."""
    client, _, parent_id = tracking
    if ctx.objectives.multi:
        target = OmegaConf.select(ctx.config, "hardware.target_fps")
        _multi.summarise(study, ctx.objectives, client, parent_id, target, lambda *a: write_overlay(ctx, *a))
        _tracking.finish_parent(client, parent_id, failed)
        log.info("study %r: %s", ctx.settings.study_name, _study.finished_summary(study))
        return
    discarded = _study.discarded_numbers(study)
    _tracking.mark_best(client, parent_id, study, ctx.settings.metric, discarded)
    lead = _lead.best_lead(study, discarded)
    if lead is not None:
        _tracking.record_lead(client, parent_id, *lead)
        log.info("%s", _lead.describe(*lead))
    skipped = _tracking.log_plots(client, parent_id, study)
    for name, reason in skipped.items():
        log.info("plot %s skipped: %s", name, reason)
    overlay = write_best_overlay(ctx, study, discarded)
    if overlay is not None:
        client.set_tag(parent_id, "sweep.experiment_overlay", str(overlay))
    _tracking.finish_parent(client, parent_id, failed)
    log.info("study %r: %s", ctx.settings.study_name, _study.finished_summary(study))


def write_best_overlay(ctx: Context, study, discarded: set[int]) -> Path | None:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number not in discarded]
    if not complete:
        log.info("no completed trial yet: no experiment overlay written")
        return None
    best = study.best_trial
    directory = experiment_dir(ctx)
    if directory is None:
        log.warning("no file-based primary config directory: set hydra.sweeper.experiment_dir")
        return None
    loader = ctx.launcher.hydra_context.config_loader
    path = _overlay.write_overlay(
        directory,
        ctx.settings.study_name,
        _space.trial_overrides(ctx.space.fixed, best.params),
        ctx.parser,
        _overlay.config_groups(loader),
        list(ctx.settings.experiment_exclude),
        {"number": best.number, "metric": ctx.settings.metric, "value": best.value},
    )
    log.info(
        "best trial %d (%s %.5g): +experiment=%s (%s)",
        best.number,
        ctx.settings.metric,
        best.value,
        path.stem,
        path,
    )
    return path


def write_overlay(ctx: Context, params: dict, name: str, title: str) -> Path | None:
    """A multi-objective sweep's overlay of one trial, named and titled by `_multi`."""
    directory = experiment_dir(ctx)
    if directory is None:
        log.warning("no file-based primary config directory: set hydra.sweeper.experiment_dir")
        return None
    lines = _space.trial_overrides(ctx.space.fixed, params)
    groups = _overlay.config_groups(ctx.launcher.hydra_context.config_loader)
    exclude = list(ctx.settings.experiment_exclude)
    return _overlay.write_overlay(
        directory, ctx.settings.study_name, lines, ctx.parser, groups, exclude, {}, name, title
    )


def experiment_dir(ctx: Context) -> Path | None:
    if ctx.settings.experiment_dir is not None:
        return Path(ctx.config.hydra.runtime.cwd) / ctx.settings.experiment_dir
    conf = _overlay.primary_conf_dir(ctx.config)
    return None if conf is None else conf / "experiment"
