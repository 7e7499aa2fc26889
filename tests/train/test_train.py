"""The train stage on tiny real data: plan, MLflow lineage, resume after SIGKILL, DDP plumbing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core.artifacts import TrainRun
from pipeline.core.compose import compose_config, write_params
from pipeline.core.faults import KILL_ENV
from pipeline.core.io import read_json
from pipeline.data.analyze import run as analyze
from pipeline.data.prepare import run as prepare
from pipeline.train import stage as train
from pipeline.train.callbacks import EpochLogger, global_world_size
from pipeline.train.launch import torchrun_command
from tests.conftest import PROJECT_ROOT, tiny_overrides

MAP_KEY = "metrics/mAP50-95_B_"


def steps_logged(cfg, run_id: str) -> list[int]:
    client = MlflowClient(cfg.track.tracking_uri)
    return sorted(metric.step for metric in client.get_metric_history(run_id, MAP_KEY))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = compose_config(tiny_overrides(root, images=24))
    prepare(cfg)
    analyze(cfg)
    return cfg, train.run(cfg)


def test_training_writes_plan_metrics_and_run_id(trained):
    cfg, result = trained
    report = Path(cfg.paths.train_report)
    plan = read_json(report / "plan.json")
    epochs = next(d for d in plan["decisions"] if d["key"] == "epochs")
    assert epochs == {"key": "epochs", "value": 2, "source": "explicit", "reason": "set in the config"}
    assert read_json(report / "run.json")["run_id"] == result.run_id
    assert set(read_json(report / "metrics.json")) >= {"mAP50", "mAP50-95", "precision", "recall"}
    assert result.weights.exists() and result.epochs_completed == 2


def test_ultralytics_steps_the_optimizer_every_batch_on_a_short_run(trained):
    """The plan's nbs reaches Ultralytics, which then accumulates round(nbs / batch) = 1 batch per step."""
    cfg, _ = trained
    plan = read_json(Path(cfg.paths.train_report) / "plan.json")
    nbs = next(d for d in plan["decisions"] if d["key"] == "nbs")
    assert nbs["value"] == cfg.train.batch and "a step every batch" in nbs["reason"]
    args = yaml.safe_load((Path(cfg.paths.train) / "args.yaml").read_text())
    assert (args["nbs"], args["batch"]) == (cfg.train.batch, cfg.train.batch)


def test_mlflow_run_has_params_lineage_epochs_and_artifacts(trained):
    cfg, result = trained
    client = MlflowClient(cfg.track.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "yolo11n"
    manifest = read_json(Path(cfg.paths.prepared) / "manifest.json")
    assert run.data.tags["pipeline.dataset_hash"] == manifest["dataset_hash"]
    assert len(run.data.tags["git.commit"]) in (40, len("unknown"))
    assert "data.synthetic.images=24" in run.data.tags["pipeline.overrides"]
    assert steps_logged(cfg, result.run_id) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "train/weights")}
    assert "train/weights/best.pt" in artifacts


def test_ultralytics_own_integrations_log_nothing(trained):
    cfg, _ = trained
    mlflow.set_tracking_uri(cfg.track.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1, "Ultralytics' MLflow callback must stay off: one run per pipeline execution"


def test_sigkill_then_rerun_resumes_into_the_same_run(tmp_path):
    overrides = [*tiny_overrides(tmp_path, images=24), "train.epochs=5"]
    params = write_params(tmp_path / "params.yaml", overrides)
    cfg = compose_config(overrides)
    prepare(cfg)
    command = [sys.executable, "-m", "pipeline", "train", "--params", str(params)]
    # killed at a deterministic moment: during epoch 2, so epoch 1's checkpoint certainly exists
    armed = {**os.environ, KILL_ENV: "mid_epoch:2"}
    first = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, env=armed, timeout=600)
    assert first.returncode == -signal.SIGKILL
    killed_run = read_json(TrainRun(Path(cfg.paths.train)).state)["run_id"]

    second = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stdout
    assert read_json(Path(cfg.paths.train_report) / "run.json")["run_id"] == killed_run
    assert steps_logged(cfg, killed_run) == [1, 2, 3, 4, 5]


def test_only_rank_zero_logs(tmp_path, monkeypatch, trained):
    cfg, result = trained
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,metrics/mAP50-95(B)\n7,0.5\n")
    monkeypatch.setenv("RANK", "1")
    EpochLogger(result.run_id, cfg.track.tracking_uri, set())(SimpleNamespace(csv=csv_path))
    assert 7 not in steps_logged(cfg, result.run_id)
    monkeypatch.setenv("RANK", "0")
    EpochLogger(result.run_id, cfg.track.tracking_uri, set())(SimpleNamespace(csv=csv_path))
    assert 7 in steps_logged(cfg, result.run_id)


def test_ddp_worker_state_carries_trainer_and_callbacks_to_a_fresh_process(trained, tmp_path):
    """Ultralytics relaunches DDP workers from a pickled state; it must rebuild the project's
    trainer class and its MLflow callback, with the run id, in a new interpreter."""
    cfg, result = trained
    from ultralytics.utils.dist import generate_ddp_command

    from pipeline.train.trainer import PipelineTrainer

    data = str(Path(cfg.paths.prepared) / "data.yaml")
    overrides = {"model": "yolo11n.yaml", "data": data, "device": "cpu"}
    trainer = PipelineTrainer(overrides={**overrides, "project": str(tmp_path), "name": "ddp"})
    trainer.add_callback("on_fit_epoch_end", EpochLogger(result.run_id, cfg.track.tracking_uri, set()))
    trainer.world_size = 8  # as on hardware=dgx_spark
    command, script = generate_ddp_command(trainer)
    assert command[command.index("--nproc_per_node") + 1] == "8"
    probe = (
        "from ultralytics.utils.patches import torch_load\n"
        f"state = torch_load({str(Path(script).with_suffix('.pt'))!r}, map_location='cpu')\n"
        "loggers = [c for c in state['callbacks']['on_fit_epoch_end'] if type(c).__name__ == 'EpochLogger']\n"
        "print(state['trainer'].__module__, state['trainer'].__name__, loggers[0].run_id)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pipeline.train.trainer", "PipelineTrainer", result.run_id]


@pytest.mark.parametrize(
    ("local", "environ", "expected"),
    [
        (8, {}, 8),  # single node, Ultralytics' own launch
        (8, {"LOCAL_RANK": "3", "WORLD_SIZE": "8"}, 8),
        (8, {"LOCAL_RANK": "3", "WORLD_SIZE": "16"}, 16),  # torchrun --nnodes 2
    ],
)
def test_world_size_spans_all_nodes_under_torchrun(local, environ, expected):
    assert global_world_size(local, environ) == expected


@pytest.mark.parametrize(("hardware", "gpus"), [("rtx3080", 1), ("rtx5090", 1), ("dgx_spark", 8)])
def test_torchrun_command_per_hardware_profile(hardware, gpus):
    command = torchrun_command(compose_config([f"hardware={hardware}"]).hardware, 2, 1, "10.0.0.1")
    assert command[:2] == ["torchrun", "--nnodes=2"]
    assert f"--nproc-per-node={gpus}" in command and "--node-rank=1" in command
    assert command[-4:] == ["-m", "pipeline", "train", "--params=params.yaml"]


def test_launch_passes_the_params_file_to_every_node(tmp_path, capsys):
    from pipeline.train.launch import main as launch_main

    params = write_params(tmp_path / "cluster.yaml", ["hardware=dgx_spark"])
    arguments = ["--params", str(params), "--nnodes", "2", "--node-rank", "1", "--master-addr", "h"]
    assert launch_main(arguments) == 0
    printed = capsys.readouterr().out.split()
    assert "--nproc-per-node=8" in printed and printed[-1] == f"--params={params}"


def test_torchrun_refuses_a_cpu_profile():
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no GPUs"):
        torchrun_command(compose_config(["hardware=cpu"]).hardware, 2, 0, "10.0.0.1")
