"""The resume contract during evaluate: `python -m pipeline evaluate` is SIGKILLed by the project's own
kill switch (PIPELINE_KILL_AT) and rerun. The last good outputs survive the kill whole, the rerun logs
into the same MLflow run, FINISHED, each metric once, and a kill between registering the model version
and writing the outputs does not register the run a second time.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.core.artifacts import Artifacts
from pipeline.core.io import read_json
from pipeline.evaluate.stage import ALIAS, PENDING_TAG
from tests._kills import stage_process, with_fresh_run

MODEL = "yolo-detector"


def evaluate(params: Path, kill_at: str | None = None):
    return stage_process("evaluate", params, kill_at)


def outputs(files: Artifacts) -> dict[str, bytes]:
    paths = (files.evaluation_metrics, files.evaluation_details, files.thresholds, files.evaluation_report)
    return {path.name: path.read_bytes() for path in paths}


def versions_of(client: MlflowClient, run_id: str) -> list:
    return client.search_model_versions(f"name = '{MODEL}' and run_id = '{run_id}'")


def killed_then_rerun(project, tmp_path: Path, kill_at: str):
    """A good evaluation of one run, then a new run's evaluation killed at `kill_at` and rerun."""
    first = with_fresh_run(project, tmp_path / "first")
    params = first.params(tmp_path / "out")
    assert evaluate(params).returncode == 0
    files = Artifacts.of(first.config(tmp_path / "out"))
    good = outputs(files)
    second = with_fresh_run(project, tmp_path / "second")
    params = second.params(tmp_path / "out")
    killed = evaluate(params, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert outputs(files) == good  # the kill left the last good outputs as they were
    assert not [p.name for p in files.evaluation.iterdir() if p.name.endswith(".tmp")]
    run_id = read_json(second.train_report / "run.json")["run_id"]
    client = MlflowClient(project.tracking_uri)
    registered_by_kill = versions_of(client, run_id)
    rerun = evaluate(params)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return client, run_id, files, registered_by_kill


def assert_contract(client: MlflowClient, run_id: str, files: Artifacts) -> None:
    assert client.get_run(run_id).info.status == "FINISHED"
    metrics = read_json(files.evaluation_metrics)
    for key in ("eval/precision", "eval/mAP50", "eval/mAP50-95"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [0], key  # logged once, by the rerun
    (version,) = versions_of(client, run_id)
    assert PENDING_TAG not in version.tags
    assert client.get_model_version_by_alias(MODEL, ALIAS).version == version.version
    assert f"version {version.version}, alias `{ALIAS}`" in files.evaluation_report.read_text()
    assert float(version.tags["mAP50-95"]) == metrics["mAP50-95"]


def test_kill_after_validation_keeps_the_last_outputs_and_reruns_cleanly(project, tmp_path):
    client, run_id, files, registered_by_kill = killed_then_rerun(project, tmp_path, "evaluate_validated")
    assert registered_by_kill == []
    assert_contract(client, run_id, files)


def test_kill_after_registration_reuses_that_version(project, tmp_path):
    client, run_id, files, registered_by_kill = killed_then_rerun(project, tmp_path, "evaluate_registered")
    (pending,) = registered_by_kill
    assert PENDING_TAG in pending.tags
    assert_contract(client, run_id, files)
    assert versions_of(client, run_id)[0].version == pending.version
