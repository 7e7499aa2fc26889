"""DDP on CPU, for real: `torchrun --nproc-per-node=2 -m pipeline train` on the `cpu_ddp` profile,
two processes in one gloo process group, on tiny synthetic data (64 px, one thread per rank).

Asserted: one MLflow run, FINISHED, each epoch logged once (rank 0 alone tracks); each epoch once in
results.csv and epochs.csv; a stop decided on rank 0 (as the sweep's pruning callback decides one)
ends both ranks at the same epoch, both exiting 0; a SIGKILL of the whole torchrun job (the project's
kill switch) leaves no process behind, and the same command rerun continues the same MLflow run.

Run as a module (`torchrun ... -m tests.train.test_ddp_cpu --params P --stop-after N`) this file is
the train stage with that stop callback, which records what each rank saw at every epoch end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.core.artifacts import Artifacts, TrainRun
from pipeline.core.compose import compose_config, write_params
from pipeline.core.config import load_params
from pipeline.core.errors import ConfigError
from pipeline.core.faults import KILL_ENV, is_main_rank
from pipeline.core.io import read_json, write_json
from pipeline.core.rules import DatasetFacts, training_batch_rule
from pipeline.train import stage as train
from pipeline.train.callbacks import epoch_rows
from pipeline.train.launch import torchrun_command
from tests.conftest import PROJECT_ROOT, tiny_overrides

EPOCHS = 3
RANKS = 2
TORCHRUN = Path(sys.executable).with_name("torchrun")
KEYS = {"metrics/mAP50-95_B_": "metrics/mAP50-95(B)", "train/box_loss": "train/box_loss"}
TIMEOUT_S = 300


# ---- the torchrun entry point: the train stage with a rank-0 stop ----------------------------------


class StopOnRankZero:
    """on_fit_epoch_end on every rank: records the epoch and the process group this rank trained in;
    on rank 0 only, sets `trainer.stop` from epoch `stop_after` on, as PruningReporter does.
    Ultralytics must broadcast it, or rank 1 would train on alone and wait forever for rank 0."""

    def __init__(self, stop_after: int, record: Path):
        self.stop_after, self.record, self.seen = stop_after, record, []

    def __call__(self, trainer: Any) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        self.seen.append(
            {
                "epoch": trainer.epoch + 1,
                "backend": dist.get_backend(),
                "world_size": dist.get_world_size(),
                "ddp": isinstance(trainer.model, DistributedDataParallel),
                "device": trainer.device.type,
            }
        )
        write_json(self.record, self.seen)
        if is_main_rank() and trainer.epoch + 1 >= self.stop_after:
            trainer.stop = True


def record_of(params: Path, rank: int) -> Path:
    return params.parent / f"epochs-rank{rank}.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--stop-after", type=int, required=True)
    args = parser.parse_args(argv)
    stopper = StopOnRankZero(args.stop_after, record_of(args.params, int(os.environ["RANK"])))
    train.run(load_params(args.params), callbacks=[stopper])
    return 0


# ---- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One prepared dataset for every run here (8 train, 8 val images at 64 px)."""
    from pipeline.data.prepare import run as prepare

    root = tmp_path_factory.mktemp("ddp")
    prepare(compose_config(tiny_overrides(root, images=24)))
    return root


def project(dataset: Path, tmp_path: Path):
    """(config, params.yaml) on the cpu_ddp profile, outputs under `tmp_path`; batch 4 = 2 per rank."""
    overrides = [
        *tiny_overrides(tmp_path, images=24),
        *(f"paths.{key}={dataset / key}" for key in ("prepared", "analysis")),
        "hardware=cpu_ddp",
        f"train.epochs={EPOCHS}",
        "train.batch=4",
    ]
    return compose_config(overrides), write_params(tmp_path / "params.yaml", overrides)


def launched_with(params: Path) -> list[psutil.Process]:
    """Live processes whose command line names `params`: torchrun and its workers."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and str(params) in (process.info["cmdline"] or []):
            found.append(process)
    return found


def torchrun(params: Path, *entry: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=2 -m <entry> --params <params>`, one thread per rank;
    asserts that no process of the launch outlives it (and kills any that would)."""
    env = {key: value for key, value in os.environ.items() if key != KILL_ENV}
    env["OMP_NUM_THREADS"] = "1"
    if kill_at:
        env[KILL_ENV] = kill_at
    command = [
        str(TORCHRUN),
        "--standalone",
        f"--nproc-per-node={RANKS}",
        "-m",
        *entry,
        "--params",
        str(params),
    ]
    try:
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    finally:
        _, alive = psutil.wait_procs(launched_with(params), timeout=10)
        for process in alive:
            process.kill()
    assert not alive, f"outlived torchrun: {[p.info['cmdline'] for p in alive]}"
    return done


def assert_tracked_once(cfg, run_id: str, epochs: int) -> None:
    """The one MLflow run in the store, FINISHED, each epoch once with results.csv's values; each epoch
    once in results.csv and epochs.csv; run.json names the run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.track.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.run_id for run in runs] == [run_id], "only rank 0 tracks: one run in the store"
    assert client.get_run(run_id).info.status == "FINISHED"
    rows = epoch_rows(TrainRun(Path(cfg.paths.train)).results_csv)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    files = Artifacts.of(cfg)
    assert [int(line.split(",")[0]) for line in files.epochs_csv.read_text().splitlines()[1:]] == list(
        range(1, epochs + 1)
    )
    for key, column in KEYS.items():
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key  # each epoch once
        assert {m.step: m.value for m in history} == {
            int(row["epoch"]): pytest.approx(row[column]) for row in rows
        }, key
    assert read_json(files.run_file)["run_id"] == run_id
    assert read_json(files.train_metrics)["epochs"] == epochs


# ---- the tests ------------------------------------------------------------------------------------


def test_a_stop_on_rank_zero_ends_both_ranks_at_the_same_epoch(dataset, tmp_path):
    cfg, params = project(dataset, tmp_path)
    done = torchrun(params, "tests.train.test_ddp_cpu", "--stop-after", "2")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]  # torchrun: 0 only if every rank was
    for rank in range(RANKS):
        seen = read_json(record_of(params, rank))
        assert [epoch["epoch"] for epoch in seen] == [1, 2], f"rank {rank}"
        assert {(e["backend"], e["world_size"], e["ddp"], e["device"]) for e in seen} == {
            ("gloo", RANKS, True, "cpu")
        }, f"rank {rank}"
    assert_tracked_once(cfg, read_json(TrainRun(Path(cfg.paths.train)).state)["run_id"], epochs=2)


def test_sigkill_of_the_job_then_rerun_continues_the_same_run(dataset, tmp_path):
    cfg, params = project(dataset, tmp_path)
    save_dir = Path(cfg.paths.train)
    # rank 0 kills torchrun, rank 1 and itself once epoch 2's results row is written, its checkpoint not
    killed = torchrun(params, "pipeline", "train", kill_at="after_results_row:2")
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-4000:]
    run_id = read_json(TrainRun(save_dir).state)["run_id"]
    assert len(epoch_rows(TrainRun(save_dir).results_csv)) == 2
    assert train.checkpoint_epochs(TrainRun(save_dir).last_weights) == 1

    rerun = torchrun(params, "pipeline", "train")
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert rerun.stdout.count("resuming from") == RANKS  # both ranks continued from last.pt
    assert "dropped 1 row(s) after epoch 1" in rerun.stdout
    assert_tracked_once(cfg, run_id, epochs=EPOCHS)


def test_cpu_ddp_profile_gives_each_process_an_image_and_a_launch_command():
    cfg = compose_config(["hardware=cpu_ddp", "model=yolo11n"])
    value, reason = training_batch_rule(cfg, 64, DatasetFacts(16, (8, 8, 8), 0.1, 64))
    assert value == RANKS and f"floored at {RANKS}" in reason  # the small-data cap alone gives 1
    command = torchrun_command(cfg.hardware, 1, 0, "127.0.0.1", params="p.yaml")
    assert f"--nproc-per-node={RANKS}" in command and command[-1] == "--params=p.yaml"


def test_a_batch_smaller_than_the_world_is_refused(dataset, tmp_path, monkeypatch):
    from pipeline.train.trainer import PipelineTrainer

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    overrides = {"model": "yolo11n.yaml", "data": str(dataset / "prepared" / "data.yaml"), "device": "cpu"}
    with pytest.raises(ConfigError, match="split over 4 processes"):
        PipelineTrainer(overrides={**overrides, "batch": 2, "project": str(tmp_path), "name": "t"})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
