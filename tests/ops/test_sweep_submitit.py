"""An Optuna sweep through Hydra's submitit launcher, local executor (`hydra/launcher=submitit_local`).

`submitit_local` is the SLURM code path without a cluster: the launcher pickles itself, the task
function and Hydra's global state into `<sweep dir>/.submitit/<job id>/`, and every trial runs in a
fresh Python process started by submitit (`python -m submitit.core._submit`), which unpickles it,
runs the job and pickles its result back; only `sbatch` is missing. The sweep runs
`python -m pipeline.ops.sweep --multirun` as a user does, on the tiny synthetic data of
tests/ops/test_sweep.py, two trials of one epoch at 64 px, both in flight at once
(`hydra.sweeper.n_jobs=2`), and checks what the study, the job directories, submitit's folder and
MLflow hold afterwards. Nothing depends on how well the model learns.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hydra_plugins.optuna_sweeper.job import RUN_ATTR
from pipeline.core.artifacts import SweepJob
from tests.ops.test_sweep import EXPERIMENT, job_overrides, run_sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
        reason="hydra-submitit-launcher is not installed (pip install -e '.[dev]' or '.[slurm]')",
    ),
]
N_TRIALS = 2


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("submitit_sweep")
    sweep_dir = root / "multirun" / "submitit"
    arguments = [
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=none",
        "train.lr0=tag(log, interval(0.002, 0.02))",
        "hydra.sweeper.study_name=submitit",
        "hydra.sweeper.seed=0",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.experiment_dir={root}/experiment",  # the best trial's overlay: not the project's
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=15",
        "train.epochs=1",
        "train.imgsz=64",
        *job_overrides(root),
    ]
    started = time.monotonic()
    done = run_sweep(root, *arguments)
    wall = time.monotonic() - started
    print(f"\nsubmitit_local sweep, {N_TRIALS} trials x 1 epoch, n_jobs=2: {wall:.1f} s wall")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    study = optuna.load_study(study_name="submitit", storage=f"sqlite:///{sweep_dir}/optuna.db")
    return root, sweep_dir, study


def test_every_trial_completes_in_its_own_directory(submitit_sweep):
    _, sweep_dir, study = submitit_sweep
    assert sorted(t.number for t in study.trials) == list(range(N_TRIALS))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * N_TRIALS
    for trial in study.trials:
        job = SweepJob(sweep_dir / str(trial.number))
        assert trial.user_attrs["job_dir"] == str(job.folder)
        outcome = json.loads(job.outcome.read_text())
        assert math.isclose(outcome["value"], trial.value) and outcome["epochs"] == 1
        assert not outcome["pruned"] and outcome["evaluation"]
        params = yaml.safe_load(job.params.read_text())
        assert math.isclose(params["train"]["lr0"], trial.params["train.lr0"])
        assert params["paths"]["train"].startswith(str(job.folder))
    assert (sweep_dir.parent.parent / "prepared" / "manifest.json").exists()  # prepared once, shared
    # n_jobs=2: the second trial started before the first finished (each trains for many seconds)
    assert max(t.datetime_start for t in study.trials) < min(t.datetime_complete for t in study.trials)


def test_each_trial_ran_as_a_submitit_job(submitit_sweep):
    """Each trial's Hydra job id is the submitit job id; its folder holds the pickled call, the
    pickled result and the job's own stdout, where the job printed its outcome."""
    _, sweep_dir, study = submitit_sweep
    job_ids = set()
    for trial in study.trials:
        hydra_cfg = yaml.safe_load((sweep_dir / str(trial.number) / ".hydra" / "hydra.yaml").read_text())
        job_id = str(hydra_cfg["hydra"]["job"]["id"])
        folder = sweep_dir / ".submitit" / job_id
        assert (folder / f"{job_id}_submitted.pkl").exists()
        assert (folder / f"{job_id}_0_result.pkl").exists()
        assert f"job {trial.number} finished" in (folder / f"{job_id}_0_log.out").read_text()
        assert (folder / f"{job_id}_0_log.err").exists()
        job_ids.add(job_id)
    assert len(job_ids) == N_TRIALS  # one process per trial (the local executor's id is its pid)


def test_the_parent_run_has_one_child_per_trial(submitit_sweep):
    root, _, study = submitit_sweep
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'sweep-submitit'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.kind"] == "optuna"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_name = {run.info.run_name: run for run in children}
    assert len(children) == N_TRIALS
    assert set(by_name) == {f"trial-{t.number:04d}" for t in study.trials}
    for trial in study.trials:
        run = by_name[f"trial-{trial.number:04d}"]
        assert run.info.run_id == trial.user_attrs[RUN_ATTR] and run.data.tags["sweep.state"] == "COMPLETE"
        assert "metrics/mAP50-95_B_" in run.data.metrics


def test_the_best_trials_lead_over_the_runner_up_has_a_paired_interval(submitit_sweep):
    root, _, study = submitit_sweep
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'sweep-submitit'")
    best, runner_up = sorted(study.trials, key=lambda t: t.value, reverse=True)
    assert parent.data.tags["sweep.runner_up_trial"] == str(runner_up.number)
    lead = {k: parent.data.metrics[f"best_lead_F1_{k}"] for k in ("low", "delta", "high")}
    assert lead["low"] <= lead["delta"] <= lead["high"]
    assert best.user_attrs["image_counts"]["images"] == runner_up.user_attrs["image_counts"]["images"]
