"""Reading the two small files of prepare's output that every later stage needs: data.yaml and the
dataset hash in manifest.json (the lineage every model carries)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.core.artifacts import PreparedDataset
from pipeline.core.errors import MissingDependencyError
from pipeline.core.io import read_json


def read_data_yaml(dataset: PreparedDataset) -> dict:
    require_prepared(dataset.data_yaml)
    with dataset.data_yaml.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def read_dataset_hash(dataset: PreparedDataset) -> str:
    require_prepared(dataset.manifest)
    return read_json(dataset.manifest)["dataset_hash"]


def require_prepared(path: Path) -> None:
    if not path.exists():
        raise MissingDependencyError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
