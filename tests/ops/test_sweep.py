"""Sweeps: Hydra multirun over the pipeline, grid (basic sweeper) and Optuna (the project's sweeper).

The fast tests check the pieces with real Hydra and Optuna objects (search-space syntax, the trial
budget shared by workers, the experiment overlay, the named search spaces in conf/sweep/). The
end-to-end ones run `python -m pipeline.ops.sweep --multirun` as a user does, on tiny synthetic data:
an Optuna sweep where one trial is pruned (a threshold pruner no 2-epoch model can pass, after a
2-epoch warmup, so exactly the 3-epoch trial stops after its second epoch), two fail and one
completes; its rerun, which resumes and starts nothing; and a grid sweep with the basic sweeper.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.optuna_sweeper import _overlay, _space, _study
from pipeline.core.artifacts import TrainRun
from pipeline.core.compose import CONF_DIR, compose_config
from tests.conftest import PROJECT_ROOT

EXPERIMENT = "yolo-pipeline"


# ---- search space ---------------------------------------------------------------------------------


def parse(params: dict[str, str], arguments: list[str] = ()) -> _space.SearchSpace:
    return _space.parse_space(params, list(arguments), OverridesParser.create())


def test_search_space_uses_the_old_plugins_syntax():
    space = parse(
        {
            "train.lr0": "tag(log, interval(0.0005, 0.02))",
            "train.hsv_v": "interval(0, 0.5)",
            "train.warmup_epochs": "range(0, 11, 2)",
            "train.close_mosaic": "tag(int, interval(0, 10))",
            "model": "choice(yolo11n, yolo11s)",
            "train.mosaic": "0.5,1.0",
            "seed": "3",
        }
    )
    d = space.distributions
    assert d["train.lr0"] == FloatDistribution(0.0005, 0.02, log=True)
    assert d["train.hsv_v"] == FloatDistribution(0.0, 0.5)
    assert d["train.warmup_epochs"] == IntDistribution(0, 10, step=2)  # Hydra's range excludes stop
    assert d["train.close_mosaic"] == IntDistribution(0, 10)
    assert d["model"] == CategoricalDistribution(["yolo11n", "yolo11s"])
    assert d["train.mosaic"] == CategoricalDistribution([0.5, 1.0])
    assert space.fixed == ("seed=3",)


def test_command_line_replaces_the_configured_search_of_a_key():
    space = parse(
        {"train.lr0": "interval(0.001, 0.01)", "model": "choice(yolo11n, yolo11s)"}, ["train.lr0=0.004"]
    )
    assert set(space.distributions) == {"model"}
    assert space.fixed == ("train.lr0=0.004",)
    overrides = _space.trial_overrides(space.fixed, {"model": "yolo11s", "flag": True, "none": None})
    assert overrides == ["train.lr0=0.004", "model=yolo11s", "flag=true", "none=null"]


def test_grid_needs_discrete_values():
    space = parse({"a": "choice(1, 2)", "b": "range(0.1, 0.35, 0.1)"})
    grid = _space.grid_space(space.distributions)
    assert grid["a"] == [1, 2]
    assert [round(v, 6) for v in grid["b"]] == [0.1, 0.2, 0.3]
    with pytest.raises(HydraException, match="grid sampler needs discrete values"):
        _space.grid_space(parse({"c": "interval(0, 1)"}).distributions)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_named_search_spaces_compose_and_parse(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.study_name == name
    space = _space.parse_space(sweeper.params, [], OverridesParser.create())
    assert space.distributions and not space.fixed
    if sweeper.sampler._target_.endswith("GridSampler"):
        assert _space.grid_space(space.distributions)


# ---- the budget shared by workers ---------------------------------------------------------------


def test_budget_counts_the_first_n_trials_by_number():
    """Whatever order workers ask and finish in, exactly n_trials trials count, and a trial taken
    out of the count (interrupted, stale, lost race) is replaced by a re-queued copy."""
    study = optuna.create_study(direction="maximize")
    lock = __import__("threading").Lock()
    space = {"x": FloatDistribution(0, 1)}
    trials = [_study.ask(study, space, lock) for _ in range(4)]  # four workers asked at once
    assert [_study.within_budget(study, t.number, 3) for t in trials] == [True, True, True, False]
    _study.discard(study, 3, "over budget", requeue=False)
    study.tell(trials[0], 0.5)
    study.tell(trials[1], state=TrialState.PRUNED)
    _study.discard(study, 2, "interrupted", requeue=True)  # queued again with the same x
    assert _study.budget_left(study, 3) == 0  # 0 and 1 finished, the re-queued copy reserved
    retry = _study.ask(study, space, lock)
    assert retry.number == 4 and retry.params == trials[2].params
    assert _study.within_budget(study, retry.number, 3)
    study.tell(retry, 0.7)
    assert _study.finished_summary(study) == {"COMPLETE": 2, "PRUNED": 1, "DISCARDED": 2}
    assert _study.failed_count(study) == 0  # discarded trials are not failures either


def test_failures_are_measured_against_the_whole_budget():
    assert not _study.too_many_failures(failed=2, n_trials=8, max_failure_rate=0.25)
    assert _study.too_many_failures(failed=3, n_trials=8, max_failure_rate=0.25)


def test_storage_defaults_to_sqlite_in_the_sweep_dir(tmp_path):
    assert _study.storage_url(None, "multirun/s", tmp_path) == f"sqlite:///{tmp_path}/multirun/s/optuna.db"
    assert _study.storage_url("sqlite:///o.db", "x", tmp_path) == f"sqlite:///{tmp_path}/o.db"
    url = _study.storage_url("postgresql://u:secret@db:5432/optuna", "x", tmp_path)
    assert url.split("://")[1] == "u:secret@db:5432/optuna"
    assert "secret" not in _study.redact(url)


# ---- the experiment overlay -----------------------------------------------------------------------


def test_overlay_sets_groups_in_defaults_and_values_by_key(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    lines = [
        "+sweep=lr_aug",
        f"paths.prepared={tmp_path}/p",
        "track.tracking_uri=sqlite:///x.db",
        "train.epochs=7",
        "model=yolo11s",
        "train.lr0=0.0031",
    ]
    path = _overlay.write_overlay(
        conf / "experiment",
        "lr aug",
        lines,
        OverridesParser.create(),
        {"model", "sensor", "sweep"},
        ["sweep", "paths", "track"],
        {"number": 5, "metric": "mAP50-95", "value": 0.4},
    )
    assert path.name == "sweep_lr_aug.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n") and "override /model: yolo11s" in text
    assert "paths" not in text.split("\n", 5)[-1] and "lr_aug" not in text.split("defaults:")[1]
    cfg = compose_config(["+experiment=sweep_lr_aug"], conf_dir=conf)
    assert (cfg.model.name, cfg.train.epochs, cfg.train.lr0) == ("yolo11s", 7, 0.0031)


# ---- end to end: the Optuna sweeper on the pipeline -----------------------------------------------

TINY_SWEEP = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: grid
  - override /hydra/sweeper/pruner: threshold
hydra:
  sweep:
    dir: {root}/multirun/${{hydra.sweeper.study_name}}
    subdir: trial_${{hydra.job.num}}
  sweeper:
    study_name: tiny
    n_trials: 4
    max_failure_rate: 0.5
    experiment_dir: {root}/conf/experiment
    pruner:
      lower: 0.99          # no model reaches mAP50-95 0.99 in two epochs on 16 images
      n_warmup_steps: 2    # ... but it is only asked from epoch 2 on: 1-epoch trials complete
    params:
      train.epochs: choice(1, 3)
      train.imgsz: choice(64, 48)   # 48 is no multiple of 32: the job fails validation
"""


def job_overrides(root: Path) -> list[str]:
    """tests/conftest.py's tiny run, with the shared inputs and MLflow under `root`."""
    return [
        "data.synthetic.images=32",
        "data.synthetic.size=64",
        f"paths.prepared={root}/prepared",
        f"paths.analysis={root}/analysis",
        f"track.tracking_uri=sqlite:///{root}/mlflow.db",
        "train.batch=8",
        "train.workers=0",
        "train.time_hours=null",
        "train.warmup_epochs=0",
    ]


def run_sweep(root: Path, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline.ops.sweep --multirun ...` from `root` (MLflow's artifacts land there)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "pipeline.ops.sweep", "--multirun", *arguments]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    (root / "sweep.log").write_text(done.stdout + done.stderr)
    return done


def runs_by_name(tracking_uri: str) -> dict[str, object]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("optuna_sweep")
    (root / "extra" / "sweep").mkdir(parents=True)
    (root / "extra" / "sweep" / "tiny.yaml").write_text(TINY_SWEEP.format(root=root))
    shutil.copytree(CONF_DIR, root / "conf")  # the overlay goes here, not into the project
    arguments = [f"hydra.searchpath=[file://{root}/extra]", "+sweep=tiny", *job_overrides(root)]
    first = run_sweep(root, *arguments)
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root}/multirun/tiny/optuna.db")
    return root, arguments, study


def trial_where(study, **params):
    return next(t for t in study.trials if all(t.params[f"train.{k}"] == v for k, v in params.items()))


def test_optuna_sweep_prunes_fails_and_completes(optuna_sweep):
    root, _, study = optuna_sweep
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    complete, pruned = trial_where(study, epochs=1, imgsz=64), trial_where(study, epochs=3, imgsz=64)
    assert complete.state == TrialState.COMPLETE and complete.value is not None
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["pruned_epoch"] == 2
    assert pruned.intermediate_values.keys() == {1, 2} and pruned.value == pruned.intermediate_values[2]
    pruned_run = TrainRun(Path(pruned.user_attrs["job_dir"]) / compose_config().paths.train)
    with open(pruned_run.results_csv) as handle:
        assert len(list(csv.DictReader(handle))) == 2  # training stopped: 2 of 3 epochs
    failed = [t for t in study.trials if t.params["train.imgsz"] == 48]
    assert [t.state for t in failed] == [TrialState.FAIL, TrialState.FAIL]
    assert all("multiple of 32" in t.user_attrs["error"] for t in failed)
    job_dir = Path(complete.user_attrs["job_dir"])
    assert job_dir == root / "multirun" / "tiny" / f"trial_{complete.number}"
    outcome = json.loads((job_dir / "outcome.json").read_text())
    assert math.isclose(outcome["value"], complete.value) and outcome["evaluation"]
    counts = complete.user_attrs["image_counts"]  # per evaluation image, for the best trial's interval
    assert counts == outcome["image_counts"] and counts["counts"]
    assert all(len(row) == 3 and min(row) >= 0 for row in counts["counts"])
    assert (job_dir / "reports" / "evaluate" / "metrics.json").exists()
    assert (root / "prepared" / "manifest.json").exists()  # prepared once, shared by the jobs


def test_optuna_trials_are_nested_mlflow_runs_of_the_sweep(optuna_sweep):
    root, _, study = optuna_sweep
    uri = f"sqlite:///{root}/mlflow.db"
    runs = runs_by_name(uri)
    parent = runs["sweep-tiny"]
    assert parent.data.tags["sweep.study"] == "tiny" and parent.data.params["space.train.epochs"]
    best = study.best_trial
    assert parent.data.tags["sweep.best_trial"] == str(best.number)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/optimization_history.png", "sweep/parallel_coordinate.png"} <= artifacts
    assert "needs 2 completed trials" in parent.data.tags["sweep.plot_skipped.param_importances"]
    assert "sweep.runner_up_trial" not in parent.data.tags  # one completed trial: no lead to measure
    for trial in study.trials:
        run = runs[f"trial-{trial.number:04d}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["sweep.state"] == trial.state.name
    best_run = runs[f"trial-{best.number:04d}"]
    assert best_run.data.tags["sweep.best"] == "true" and "metrics/mAP50-95_B_" in best_run.data.metrics
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    pruned_run = runs[f"trial-{pruned.number:04d}"]
    assert pruned_run.data.tags["sweep.pruned_epoch"] == "2"
    history = MlflowClient(uri).get_metric_history(pruned_run.info.run_id, "metrics/mAP50-95_B_")
    assert sorted(m.step for m in history) == [1, 2]


def test_best_trial_becomes_an_experiment_overlay(optuna_sweep):
    root, _, study = optuna_sweep
    overlay = root / "conf" / "experiment" / "sweep_tiny.yaml"
    assert overlay.read_text().startswith("# @package _global_")
    cfg = compose_config(["+experiment=sweep_tiny"], conf_dir=root / "conf")
    assert (cfg.train.epochs, cfg.train.imgsz) == (1, 64) == tuple(study.best_trial.params.values())
    assert cfg.paths.prepared == compose_config().paths.prepared  # locations stay the pipeline's


def test_rerunning_the_sweep_resumes_and_stops_at_the_total(optuna_sweep):
    root, arguments, _ = optuna_sweep
    again = run_sweep(root, *arguments)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 trials in total, 0 to start" in again.stdout + again.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root}/multirun/tiny/optuna.db")
    assert len(study.trials) == 4


# ---- end to end: a grid sweep with Hydra's basic sweeper ------------------------------------------


def test_grid_sweep_runs_each_job_in_its_own_directory(tmp_path):
    done = run_sweep(
        tmp_path,
        f"hydra.sweep.dir={tmp_path}/grid",
        "sensor=rgb,thermal",
        "train.epochs=1",
        *job_overrides(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [json.loads((tmp_path / "grid" / str(n) / "outcome.json").read_text()) for n in (0, 1)]
    assert all(o["epochs"] == 1 and not o["pruned"] and o["evaluation"] for o in outcomes)
    for n, sensor in enumerate(("rgb", "thermal")):
        params = (tmp_path / "grid" / str(n) / "params.yaml").read_text()
        assert f"name: {sensor}" in params and f"{tmp_path}/grid/{n}/{compose_config().paths.train}" in params
    runs = runs_by_name(f"sqlite:///{tmp_path}/mlflow.db")
    parent = runs["grid-grid"]
    assert parent.data.tags["sweep.kind"] == "grid"
    assert {runs[f"job-{n:04d}"].data.tags["mlflow.parentRunId"] for n in (0, 1)} == {parent.info.run_id}


# ---- parallel trials through the joblib launcher --------------------------------------------------

TOY_APP = '''
import hydra

from hydra_plugins.optuna_sweeper.job import current_trial


@hydra.main(config_path="conf", config_name="toy", version_base="1.3")
def main(cfg):
    """A job with a known optimum (x = 2) that reports a value per step like a training would."""
    trial = current_trial().open()
    for step in range(1, 4):
        value = -((cfg.x - 2) ** 2) + 0.01 * step
        trial.report(value, step)
        if trial.should_prune():
            trial.set_user_attr("pruned_epoch", step)
            return {"value": value, "pruned": True}
    if cfg.x > 4.5:
        raise ValueError(f"x={cfg.x} is outside the model's range")
    return {"value": value, "pruned": False}


if __name__ == "__main__":
    main()
'''


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="hydra-joblib-launcher is not installed",
)
def test_parallel_trials_through_joblib_keep_the_total(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "toy.yaml").write_text("x: 0.0\n")
    (tmp_path / "toy.py").write_text(TOY_APP)
    command = [
        sys.executable,
        "toy.py",
        "--multirun",
        "hydra/sweeper=optuna",
        "x=interval(0, 5)",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.seed=1",
        "hydra.sweeper.n_trials=8",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=1",
        "hydra.sweeper.max_failure_rate=0.5",
        f"hydra.sweeper.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "hydra.sweeper.mlflow.experiment=toy",
        "hydra.sweeper.experiment_dir=experiment",
        "hydra.sweep.dir=multirun/toy",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/multirun/toy/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == 8 and TrialState.RUNNING not in states and TrialState.PRUNED in states
    assert len({t.user_attrs["job_dir"] for t in study.trials}) == 8  # one directory per trial
    assert (tmp_path / "experiment" / "sweep_sweep.yaml").exists()


# ---- the shared dataset: a sweep may not vary what prepare made it from -----------------------------


@pytest.mark.parametrize("override", ["data.synthetic.images=48", "sensor.channels=1", "classes=bccd"])
def test_a_job_with_other_dataset_keys_than_the_shared_dataset_is_refused(tmp_path, override):
    from pipeline.core.errors import ConfigError
    from pipeline.data.prepare import run as prepare
    from pipeline.ops.sweep import check_dataset_claim
    from tests.conftest import tiny_overrides

    first = compose_config(tiny_overrides(tmp_path))
    prepare(first)
    prepared = Path(first.paths.prepared)
    check_dataset_claim(first, prepared)  # the first job claims the dataset
    check_dataset_claim(compose_config([*tiny_overrides(tmp_path), "train.lr0=0.02"]), prepared)
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"this job sets {key}.*one sweep per dataset"):
        check_dataset_claim(compose_config([*tiny_overrides(tmp_path), override]), prepared)
