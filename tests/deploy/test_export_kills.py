"""The resume contract during export: `python -m pipeline export` is SIGKILLed by the project's own kill
switch (PIPELINE_KILL_AT) and rerun. The kill leaves the last good models/ as it was (never an unchecked
model in it), the rerun removes the killed run's staging folder, publishes only checked models, and logs
into the same MLflow run, FINISHED, each metric once.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.core.artifacts import Artifacts
from pipeline.core.io import read_json
from pipeline.deploy import export
from pipeline.model.info import exported_models, file_sha256
from tests._kills import stage_process, with_fresh_run

FORMATS = ("onnx", "torchscript")


def models(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def staging(cfg) -> list[Path]:
    return sorted(Path(cfg.paths.export).glob(f"{export.STAGING_PREFIX}*"))


def killed_then_rerun(project, tmp_path: Path, kill_at: str):
    """A good export of one run, then a new run's export killed at `kill_at` and rerun; (cfg, run id)."""
    extra = f"export.formats=[{','.join(FORMATS)}]"
    first = with_fresh_run(project, tmp_path / "first")
    assert stage_process("export", first.params(tmp_path / "out", extra)).returncode == 0
    cfg = first.config(tmp_path / "out", extra)
    good = models(Artifacts.of(cfg).models)
    second = with_fresh_run(project, tmp_path / "second")
    params = second.params(tmp_path / "out", extra)
    killed = stage_process("export", params, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert models(Artifacts.of(cfg).models) == good  # nothing of the killed export reached models/
    assert len(staging(cfg)) == 1  # what the kill left behind, for the rerun to clear
    rerun = stage_process("export", params)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "left by an interrupted export" in rerun.stdout
    return cfg, read_json(second.train_report / "run.json")["run_id"]


def assert_contract(cfg, run_id: str, tracking_uri: str) -> None:
    assert staging(cfg) == []
    published = exported_models(Artifacts.of(cfg).models)
    assert sorted(published) == sorted(FORMATS)
    for fmt, (model, _) in published.items():
        meta = read_json(export.metadata_path(model))
        assert meta["parity"]["passed"] is True, fmt  # only checked models are published
        assert meta["sha256_file"] == file_sha256(model), fmt
    assert read_json(Path(cfg.paths.export) / "parity.json")["passed"] is True
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    for fmt in FORMATS:
        history = client.get_metric_history(run_id, f"export/{fmt}/passed")
        assert [m.step for m in history] == [0], fmt  # logged once, by the rerun


def test_kill_after_a_format_is_exported_before_its_check(project, tmp_path):
    cfg, run_id = killed_then_rerun(project, tmp_path, f"export_exported:{len(FORMATS)}")
    assert_contract(cfg, run_id, project.tracking_uri)


def test_kill_before_the_checked_models_are_swapped_in(project, tmp_path):
    cfg, run_id = killed_then_rerun(project, tmp_path, "export_published")
    assert_contract(cfg, run_id, project.tracking_uri)
