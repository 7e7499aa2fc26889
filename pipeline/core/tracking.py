"""MLflow at the edges: one run per pipeline execution, shared by every stage after `train`.

`train` creates the run (or reopens the one an interrupted attempt left) and records its id in
`{paths.train_report}/run.json`; evaluate, export and benchmark append to that same run.
The tracking URI is `track.tracking_uri` (SQLite in the project root by default) unless
`MLFLOW_TRACKING_URI` is set, which is how a team points every stage at a shared server.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import BEST_WEIGHTS, Artifacts
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import MissingDependencyError
from pipeline.core.io import read_json

REDACTED = "***"
# `scheme://user:password@host`: the password goes, the user stays (it helps to tell stores apart).
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]+:)[^@/\s]+@")
# `?token=...`, `&api_key=...`, `X-Amz-Signature=...`: any query key that names a secret.
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;][^=&#\s]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|signature|sig|credential|auth)"
    r"[^=&#\s]*=)[^&#\s]+",
    re.IGNORECASE,
)


def tracking_uri(cfg: PipelineConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.track.tracking_uri


def configure(cfg: PipelineConfig):
    """Point MLflow at the configured store and experiment; returns the mlflow module."""
    import mlflow

    users_choice = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    # MLflow exports the URI to the environment; undo that so a later config in this process
    # (a sweep, a retrain, the tests) is not overridden by this one's store.
    if users_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = users_choice
    mlflow.set_experiment(cfg.track.experiment)
    return mlflow


def download_checkpoint(artifact_uri: str, store: str, where: str, dst: Path | None = None) -> Path:
    """A checkpoint behind an MLflow artifact URI (models:/, runs:/, a version's source): the file
    itself, or the one best.pt (else the one .pt) of a folder, as the train stage logs them.
    `where` names what asked for it, for the error."""
    import mlflow.artifacts

    folder = None if dst is None else str(dst)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, tracking_uri=store, dst_path=folder)
    )
    if local.is_file():
        return local
    found = sorted(local.rglob(BEST_WEIGHTS)) or sorted(local.rglob("*.pt"))
    if len(found) != 1:
        raise MissingDependencyError(
            f"{where}: expected one {BEST_WEIGHTS} (or one .pt) in {artifact_uri}, found "
            f"{[str(p.relative_to(local)) for p in found]}; point the URI at the checkpoint"
        )
    return found[0]


def read_run_id(cfg: PipelineConfig) -> str:
    path = Artifacts.of(cfg).run_file
    if not path.exists():
        raise MissingDependencyError(f"{path} not found: run the train stage first (dvc repro train)")
    return read_json(path)["run_id"]


@contextmanager
def stage_run(cfg: PipelineConfig) -> Iterator[Any]:
    """Reopen the pipeline's MLflow run (created by train) for a later stage to log into."""
    mlflow = configure(cfg)
    with mlflow.start_run(run_id=read_run_id(cfg)) as run:
        yield run


def adopt_as_child(
    cfg: PipelineConfig,
    run_id: str,
    parent_id: str,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """File a finished training run under `parent_id` in the MLflow UI (a retrain seed replica, an
    audit fold, a scaling point): the train stage opens top-level runs, and MLflow nests a run by
    its `mlflow.parentRunId` tag."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(cfg))
    for key, value in {"mlflow.parentRunId": parent_id, **(tags or {})}.items():
        client.set_tag(run_id, key, value)
    if name is not None:
        client.update_run(run_id, name=name)


def log_metrics(metrics: Mapping[str, float], prefix: str = "", step: int | None = None) -> None:
    """Log finite numeric values under `prefix`; MLflow keys cannot hold some characters."""
    import mlflow

    clean = {
        sanitize_key(f"{prefix}{key}"): float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def scrub_credentials(text: str) -> str:
    """`text` with URI passwords and secret-bearing query values replaced by `***`: params and tags
    are readable by everyone with access to the tracking store."""
    return _QUERY_SECRET.sub(rf"\g<head>{REDACTED}", _URI_PASSWORD.sub(rf"\g<head>{REDACTED}@", text))


def scrubbed(values: Mapping[str, Any]) -> dict[str, str]:
    """Params or tags ready for MLflow: every value as text, credentials removed."""
    return {key: scrub_credentials(str(value)) for key, value in values.items()}


def sanitize_key(key: str) -> str:
    """MLflow allows alphanumerics, '_', '-', '.', ' ', '/' in keys: map the rest to '_'."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in key)
