"""Multi-objective sweeps (accuracy against latency, NSGA-II): the Pareto front and the chooser.

The pure tests use hand-built fronts and a real in-memory Optuna study made of `create_trial`s, so
the answers are certain by construction. The end-to-end one runs `+sweep=accuracy_latency` as a user
does, shrunk to 3 one-epoch trials at 32-64 px on the tiny synthetic data of tests/ops/test_sweep.py:
each trial trains, evaluates, exports ONNX and is timed by the benchmark stage on ONNX Runtime. It
asserts what the study, MLflow and conf/experiment hold afterwards, never how well a tiny model
learns nor how fast it runs.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import optuna
import pytest
import yaml
from hydra.errors import HydraException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hydra_plugins.optuna_sweeper import _multi
from hydra_plugins.optuna_sweeper._run import interpret
from pipeline.core.artifacts import SweepJob
from pipeline.core.compose import CONF_DIR, compose_config
from tests.ops.test_sweep import EXPERIMENT, job_overrides, run_sweep

ACC_LAT = _multi.Objectives(("mAP50-95", "latency_ms"), ("maximize", "minimize"))


# ---- the chooser on hand-built fronts -------------------------------------------------------------

FRONT = [  # (trial, mAP50-95, latency ms): 100, 50, 25 and 10 fps
    _multi.Member(3, 0.20, 10.0),
    _multi.Member(7, 0.30, 20.0),
    _multi.Member(1, 0.40, 40.0),
    _multi.Member(5, 0.50, 100.0),
]


def test_the_chooser_takes_the_most_accurate_trial_that_reaches_the_target():
    choice = _multi.choose(FRONT, target_fps=30)
    assert (choice.member.number, choice.met) == (7, True)  # 50 fps; trial 1 (25 fps) is too slow
    assert "2 of 4 front trials that reach target_fps 30" in choice.reason
    assert _multi.choose(FRONT, target_fps=25).member.number == 1  # exactly at the target counts
    assert _multi.choose(FRONT, target_fps=5).member.number == 5  # all reach it: the most accurate


def test_with_no_front_trial_fast_enough_the_chooser_takes_the_fastest_and_says_so():
    choice = _multi.choose(FRONT, target_fps=200)
    assert (choice.member.number, choice.met, choice.target_fps) == (3, False, 200)
    assert choice.reason.startswith("no front trial reaches target_fps 200: chose the fastest, trial 3")


def test_without_a_target_the_chooser_takes_the_most_accurate():
    choice = _multi.choose(FRONT, target_fps=None)
    assert (choice.member.number, choice.met) == (5, None)
    assert "no hardware.target_fps" in choice.reason
    with pytest.raises(ValueError, match="empty front"):
        _multi.choose([], 30)


# ---- the front of a real Optuna study -------------------------------------------------------------


def study_of(objectives: _multi.Objectives, points: list[tuple[float, float]]) -> optuna.Study:
    """A real multi-objective study; `points` are (mAP50-95, latency ms), put in `objectives` order."""
    study = optuna.create_study(directions=list(objectives.directions))
    space = {"train.imgsz": CategoricalDistribution([32, 64])}
    for accuracy, latency in points:
        by_name = {"mAP50-95": accuracy, "latency_ms": latency}
        values = [by_name[m] for m in objectives.metrics]
        study.add_trial(create_trial(values=values, params={"train.imgsz": 64}, distributions=space))
    study.add_trial(create_trial(state=TrialState.FAIL))
    return study


POINTS = [(0.50, 10.0), (0.60, 20.0), (0.40, 30.0), (0.70, 40.0), (0.55, 15.0), (0.60, 25.0)]


@pytest.mark.parametrize(
    "objectives", [ACC_LAT, _multi.Objectives(("latency_ms", "mAP50-95"), ("minimize", "maximize"))]
)
def test_the_pareto_front_is_optunas_best_trials_fastest_first(objectives):
    study = study_of(objectives, POINTS)
    front = _multi.pareto_front(study, objectives, discarded=set())
    # trial 2 is slower and less accurate than trial 0; trial 5 as accurate as 1, but slower
    assert (
        [m.number for m in front]
        == [0, 4, 1, 3]
        == sorted((t.number for t in study.best_trials), key=lambda n: POINTS[n][1])
    )
    assert [(m.accuracy, m.latency_ms) for m in front] == [POINTS[n] for n in (0, 4, 1, 3)]
    assert _multi.pareto_front(study, objectives, discarded={4})[1].number == 1
    assert len(_multi.completed(study, objectives, set())) == 6  # the failed trial is left out
    assert _multi.choose(front, target_fps=60).member.number == 4  # 15 ms = 66.7 fps; 20 ms = 50 fps


def test_a_multi_objective_job_result_gives_both_values():
    outcome = interpret({"values": [0.12, 8.5], "value": 0.12, "pruned": False})
    assert (outcome.state, outcome.values) == ("COMPLETE", (0.12, 8.5))
    assert interpret({"values": [0.12, float("nan")]}).state == "FAIL"
    assert interpret({"value": 0.3, "pruned": False}).value == 0.3  # single objective as before


# ---- the settings -----------------------------------------------------------------------------------


def settings(**changes) -> OmegaConf:
    base = {
        "metric": "mAP50-95",
        "direction": "maximize",
        "metrics": ["mAP50-95", "latency_ms"],
        "directions": ["maximize", "minimize"],
        "pruner": {"_target_": "optuna.pruners.NopPruner"},
    }
    return OmegaConf.create({**base, **changes})


def test_the_objectives_are_checked_before_anything_runs():
    assert _multi.objectives(settings()) == ACC_LAT
    single = _multi.objectives(settings(metrics=None, directions=None))
    assert single == _multi.Objectives(("mAP50-95",), ("maximize",)) and not single.multi
    with pytest.raises(HydraException, match=r"does not prune multi-objective.*hydra/sweeper/pruner=none"):
        _multi.objectives(settings(pruner={"_target_": "optuna.pruners.MedianPruner"}))
    with pytest.raises(HydraException, match=r"directions=\[maximize,minimize\]"):
        _multi.objectives(settings(directions=["minimize", "maximize"]))
    with pytest.raises(HydraException, match="sets both"):
        _multi.objectives(settings(directions=None))
    with pytest.raises(HydraException, match="a validation metric and latency_ms"):
        _multi.objectives(settings(metrics=["mAP50-95", "mAP50"]))


# ---- end to end -------------------------------------------------------------------------------------

N_TRIALS = 3
STUDY = "accuracy_latency"


@pytest.fixture(scope="module")
def pareto_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto_sweep")
    shutil.copytree(CONF_DIR, root / "conf")  # the overlays go here, not into the project
    sweep_dir = root / "multirun" / STUDY
    arguments = [
        "+sweep=accuracy_latency",  # the named search space, shrunk on the command line
        f"hydra.sweeper.n_trials={N_TRIALS}",
        "hydra.sweeper.sampler.population_size=4",
        "hydra.sweeper.latency.warmup=1",
        "hydra.sweeper.latency.runs=3",
        f"hydra.sweeper.experiment_dir={root}/conf/experiment",
        f"hydra.sweep.dir={sweep_dir}",
        "model=yolo11n",
        "train.imgsz=choice(32, 64)",
        "train.scale=0.5",
        "train.epochs=1",
        "hardware.target_fps=0.001",  # every trial reaches it: the choice is the most accurate front trial
        *job_overrides(root),
    ]
    started = time.monotonic()
    done = run_sweep(root, *arguments)
    wall = time.monotonic() - started
    print(
        f"\naccuracy_latency sweep, {N_TRIALS} trials x 1 epoch + ONNX export and timing: {wall:.1f} s wall"
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{sweep_dir}/optuna.db")
    return root, sweep_dir, study, done.stdout + done.stderr


def test_every_trial_returns_its_accuracy_and_its_onnx_latency(pareto_sweep):
    _, sweep_dir, study, _ = pareto_sweep
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * N_TRIALS
    for trial in study.trials:
        accuracy, latency = trial.values
        assert 0 <= accuracy <= 1 and latency > 0 and not trial.intermediate_values  # no pruning reports
        job = SweepJob(sweep_dir / f"trial_{trial.number}")
        outcome = json.loads(job.outcome.read_text())
        assert outcome["objectives"] == ["mAP50-95", "latency_ms"] and outcome["values"] == trial.values
        timed = outcome["latency"]
        assert timed["format"] == "onnx" and (timed["runs"], timed["warmup"]) == (3, 1)
        assert math.isclose(timed["fps"], 1000 / latency, rel_tol=0.01)
        params = yaml.safe_load(job.params.read_text())  # what the export and benchmark stages ran
        assert params["export"]["formats"] == ["onnx"] and params["benchmark"]["runs"] == 3


def front_of(study) -> list:
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number))


def test_the_parent_run_has_the_pareto_plot_and_the_choice(pareto_sweep):
    root, _, study, log = pareto_sweep
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = 'sweep-{STUDY}'")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/pareto_front.png", "sweep/pareto_front.json"} <= artifacts
    front = front_of(study)
    tags = parent.data.tags
    assert tags["sweep.pareto_trials"] == ",".join(str(t.number) for t in front)
    chosen = max(front, key=lambda t: (t.values[0], -t.values[1], -t.number))
    assert tags["sweep.chosen_trial"] == str(chosen.number) and tags["sweep.chosen_target_met"] == "true"
    assert math.isclose(parent.data.metrics["chosen_latency_ms"], chosen.values[1])
    assert parent.data.metrics["pareto_size"] == len(front)
    assert f"chosen for deployment: trial {chosen.number}" in log
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == N_TRIALS
    on_front = {str(t.number) for t in front}
    for run in children:
        assert run.data.tags["sweep.pareto"] == str(run.data.tags["sweep.trial"] in on_front).lower()
        assert {"sweep/mAP50-95", "sweep/latency_ms"} <= set(run.data.metrics)


def test_front_trials_and_the_choice_become_overlays_that_compose(pareto_sweep):
    root, _, study, _ = pareto_sweep
    conf = root / "conf"
    front = front_of(study)
    for trial in front:
        cfg = compose_config([f"+experiment=sweep_{STUDY}_{trial.number}"], conf_dir=conf)
        assert (cfg.train.imgsz, cfg.train.mosaic) == (
            trial.params["train.imgsz"],
            trial.params["train.mosaic"],
        )
        assert (cfg.model.name, cfg.train.epochs, cfg.hardware.target_fps) == ("yolo11n", 1, 0.001)
    off_front = {t.number for t in study.trials} - {t.number for t in front}
    assert not any((conf / "experiment" / f"sweep_{STUDY}_{n}.yaml").exists() for n in off_front)
    chosen_overlay = conf / "experiment" / f"sweep_{STUDY}.yaml"
    assert "Chosen: trial" in chosen_overlay.read_text()
    chosen = max(front, key=lambda t: (t.values[0], -t.values[1], -t.number))
    cfg = compose_config([f"+experiment=sweep_{STUDY}"], conf_dir=conf)
    assert cfg.train.imgsz == chosen.params["train.imgsz"]
    assert cfg.paths.prepared == compose_config().paths.prepared  # locations stay the pipeline's


def test_a_multi_objective_sweep_with_a_pruner_is_refused(tmp_path):
    done = run_sweep(
        tmp_path, "+sweep=accuracy_latency", "hydra/sweeper/pruner=median", *job_overrides(tmp_path)
    )
    assert done.returncode != 0
    assert "Optuna does not prune multi-objective studies" in done.stderr
    assert not (tmp_path / "prepared").exists()  # refused before any job ran
