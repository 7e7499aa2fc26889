"""Shared fixtures: tiny configurations whose outputs all live under a test's tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.yolo import import_ultralytics

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"

# `make test` runs a pytest-xdist worker per core (CI: two): one thread each, or they fight.
os.environ.setdefault("OMP_NUM_THREADS", "1" if "PYTEST_XDIST_WORKER" in os.environ else "2")
import_ultralytics()  # before any test imports Ultralytics: project settings dir, integrations off

# The modules that use the session's `tiny_pipeline` (two pipeline executions, 4 minutes): one unit
# of work for pytest-xdist, so that it is built once.
TINY_PIPELINE_UNIT = "tiny_pipeline"
TINY_PIPELINE_MODULES = (
    "tests/test_dvc_sees_changes.py",
    "tests/test_notebooks.py",
    "tests/test_pipeline_dvc.py",
)
# The longest units of a `--durations` run (2026-12-07, 2 cores), started first so that none of them
# starts last while the other workers idle; the rest follow in collection order.
LONGEST_FIRST = (
    "tests/ops/test_retrain.py",
    TINY_PIPELINE_UNIT,
    "tests/train/test_resume_kills.py",
    "tests/evaluate/test_evaluate_kills.py",
    "tests/ops/test_sweep.py",
    "tests/deploy/test_export_kills.py",
    "tests/ops/test_sweep_pareto.py",
    "tests/train/test_ddp_cpu.py",
    "tests/ops/test_sweep_submitit.py",
)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def work_unit(nodeid: str) -> str:
    """What pytest-xdist hands to one worker whole: a module, its tests in file order (test_retrain's
    scenarios build on each other, module fixtures are built once), or the tiny_pipeline modules."""
    module = module_of(nodeid)
    return TINY_PIPELINE_UNIT if module in TINY_PIPELINE_MODULES else module


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which would pick a scheduler from --dist
def pytest_xdist_make_scheduler(config, log):
    # Not `--dist loadgroup` with xdist_group marks: with pytest 9.2 those are silently ignored
    # (pytest-dev/pytest-xdist#1386), and every test would be scheduled on its own.
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest units first; a new module that uses `tiny_pipeline` must join its unit."""
    users = {module_of(item.nodeid) for item in items if "tiny_pipeline" in item.fixturenames}
    if unlisted := sorted(users - set(TINY_PIPELINE_MODULES)):
        raise pytest.UsageError(
            f"{unlisted} use tiny_pipeline: add them to TINY_PIPELINE_MODULES in tests/conftest.py, or "
            "pytest-xdist builds it once more on another worker"
        )
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))  # stable: file order kept


def tiny_overrides(root: Path, images: int = 32, size: int = 64) -> list[str]:
    """Overrides for a seconds-long pipeline: tiny synthetic data, tiny images, two epochs."""
    return [
        f"data.synthetic.images={images}",
        f"data.synthetic.size={size}",
        *(f"paths.{key}={root / key}" for key in ("prepared", "analysis", "train", "train_report")),
        *(f"paths.{key}={root / key}" for key in ("evaluation", "export", "benchmark")),
        f"track.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "train.epochs=2",
        f"train.imgsz={size}",
        "train.batch=8",
        "train.workers=0",
        "train.time_hours=null",
        "train.warmup_epochs=0",
    ]


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri():
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI, which the pipeline lets win over the
    config (it is how users choose a server): no test may hand its store on to the next."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A tiny dataset and a model trained on it once per session, for the post-training stages
    (tests/_tiny.py); modules that need a different project define their own `project`."""
    from tests._tiny import tiny_project

    return tiny_project(tmp_path_factory.getbasetemp() / "tiny")


def require_shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the real-data tests need ../shared/datasets beside the project")
    return path


# The embedded default shrunk to seconds, merged into conf/config.yaml of a copy of the project.
TINY_PROJECT = {
    "data": {"synthetic": {"images": 32, "size": 64}},
    "hardware": {"workers": 0},
    "train": {"epochs": 2, "imgsz": 64, "batch": 8, "workers": 0, "time_hours": None, "warmup_epochs": 0},
    "benchmark": {"warmup": 1, "runs": 3, "images": 4, "batch": 2},
    "export": {"parity_images": 4},
}
EXPERIMENT_OVERRIDES = ("model=yolov8n", "sensor=rgb", "data=synthetic_rgb")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A copy of the project in its own git repo after `dvc repro` and one `dvc exp run` with
    other groups: two pipeline executions, two MLflow runs. Shared by the DVC and notebook tests."""
    from tests.dvc_project import command, make_project

    repo = make_project(tmp_path_factory.mktemp("project"), TINY_PROJECT)
    command(repo, "dvc", "repro")
    command(repo, "dvc", "exp", "run", *(f"-S{override}" for override in EXPERIMENT_OVERRIDES))
    return repo
