"""The resume contract, one real SIGKILL per kill point: `python -m pipeline train` is killed by the
project's own kill switch (PIPELINE_KILL_AT) and rerun. After the rerun the MLflow run is the killed
one, FINISHED, with each planned epoch logged once with the values of the training that continued;
results.csv and metrics.json count the planned epochs; Ultralytics' defaults and downloads never appear.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core.artifacts import TrainRun
from pipeline.core.compose import compose_config, write_params
from pipeline.core.faults import KILL_ENV, kill_armed
from pipeline.core.io import read_json
from pipeline.data.prepare import run as prepare
from pipeline.train import stage as train
from pipeline.train.callbacks import epoch_rows
from tests.conftest import PROJECT_ROOT, tiny_overrides

EPOCHS = 3
MAP_KEY = "metrics/mAP50-95_B_"
LOSS_KEY = "train/box_loss"
ULTRALYTICS_FALLBACKS = ("coco8", "Downloading", "not a resumable")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One prepared dataset shared by every kill test (each trains into its own folders)."""
    root = tmp_path_factory.mktemp("kills")
    prepare(compose_config(tiny_overrides(root, images=24)))
    return root


def project(dataset: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(overrides, the train command) of a project reading `dataset` and writing under `tmp_path`."""
    overrides = [
        *tiny_overrides(tmp_path, images=24),
        *(f"paths.{key}={dataset / key}" for key in ("prepared", "analysis")),
        f"train.epochs={EPOCHS}",
    ]
    params = write_params(tmp_path / "params.yaml", overrides)
    return overrides, [sys.executable, "-m", "pipeline", "train", "--params", str(params)]


def train_process(command: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)


def killed_then_rerun(dataset: Path, tmp_path: Path, kill_at: str, inspect=None):
    """Kill at `kill_at`, let `inspect(cfg)` see what the kill left, rerun; (cfg, run id, rerun)."""
    overrides, command = project(dataset, tmp_path)
    cfg = compose_config(overrides)
    killed = train_process(command, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_id = read_json(TrainRun(Path(cfg.paths.train)).state)["run_id"]
    if inspect:
        inspect(cfg)
    rerun = train_process(command)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return cfg, run_id, rerun


def assert_contract(cfg, run_id: str, rerun: subprocess.CompletedProcess) -> None:
    save_dir, report = Path(cfg.paths.train), Path(cfg.paths.train_report)
    assert read_json(report / "run.json")["run_id"] == run_id
    client = MlflowClient(cfg.track.tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    rows = epoch_rows(TrainRun(save_dir).results_csv)
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))
    assert read_json(report / "metrics.json")["epochs"] == EPOCHS
    for key, column in ((MAP_KEY, "metrics/mAP50-95(B)"), (LOSS_KEY, "train/box_loss")):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key  # each epoch once
        logged = {m.step: m.value for m in history}
        assert logged == {int(row["epoch"]): pytest.approx(row[column]) for row in rows}, key
    trained_on = yaml.safe_load((save_dir / "args.yaml").read_text())["data"]
    assert trained_on == str(Path(cfg.paths.prepared) / "data.yaml")
    output = rerun.stdout + rerun.stderr
    assert not [word for word in ULTRALYTICS_FALLBACKS if word in output], output[-3000:]
    assert (TrainRun(save_dir).best_weights).exists()


def resumable(path: Path) -> bool:
    checkpoint = train.load_checkpoint(path)
    return checkpoint.get("optimizer") is not None and checkpoint.get("epoch", -1) >= 0


def test_kill_during_setup_restarts_into_the_same_run(dataset, tmp_path):
    def nothing_trained(cfg):
        assert not (TrainRun(Path(cfg.paths.train)).last_weights).exists()

    assert_contract(*killed_then_rerun(dataset, tmp_path, "setup", nothing_trained))


def test_kill_mid_epoch_resumes_from_the_last_checkpoint(dataset, tmp_path):
    cfg, run_id, rerun = killed_then_rerun(dataset, tmp_path, "mid_epoch:2")
    assert "resuming from" in rerun.stdout
    assert_contract(cfg, run_id, rerun)


def test_kill_between_results_row_and_checkpoint_drops_the_orphan_row(dataset, tmp_path):
    def row_without_checkpoint(cfg):
        save_dir = Path(cfg.paths.train)
        assert len(epoch_rows(TrainRun(save_dir).results_csv)) == 2
        assert train.checkpoint_epochs(TrainRun(save_dir).last_weights) == 1

    cfg, run_id, rerun = killed_then_rerun(dataset, tmp_path, "after_results_row:2", row_without_checkpoint)
    assert "dropped 1 row(s) after epoch 1" in rerun.stdout
    assert_contract(cfg, run_id, rerun)


def test_kill_during_optimizer_stripping_finalises_without_retraining(dataset, tmp_path):
    def last_stripped_best_not(cfg):
        save_dir = Path(cfg.paths.train)
        assert not resumable(TrainRun(save_dir).last_weights)
        assert resumable(TrainRun(save_dir).best_weights)

    cfg, run_id, rerun = killed_then_rerun(dataset, tmp_path, "optimizer_strip", last_stripped_best_not)
    assert "training had finished; finalising it" in rerun.stdout
    assert not resumable(TrainRun(Path(cfg.paths.train)).best_weights)
    assert_contract(cfg, run_id, rerun)


def test_kill_during_final_validation_finalises_without_retraining(dataset, tmp_path):
    cfg, run_id, rerun = killed_then_rerun(dataset, tmp_path, "final_validation")
    assert "training had finished; finalising it" in rerun.stdout
    assert_contract(cfg, run_id, rerun)


@pytest.mark.parametrize(
    ("armed", "point", "epoch", "fires"),
    [
        ("setup", "setup", None, True),
        ("mid_epoch:2", "mid_epoch", 1, False),
        ("mid_epoch:2", "mid_epoch", 2, True),
    ],
)
def test_kill_switch_fires_only_where_armed(armed, point, epoch, fires):
    assert kill_armed(point, epoch, {KILL_ENV: armed}) is fires


def test_kill_switch_refuses_an_unknown_point():
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown point 'midepoch'; use one of .*\bmid_epoch\b"):
        kill_armed("setup", None, {KILL_ENV: "midepoch"})
