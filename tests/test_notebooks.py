"""The notebooks run headless against a tiny pipeline's results, with nbclient and the `python3`
kernel, which jupyter_client starts with this interpreter (the venv ships the kernelspec in
.venv/share/jupyter/kernels; its `python` is replaced by sys.executable), so nothing is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from pipeline.core.io import read_json
from tests.dvc_project import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"
KERNEL_CHECK = "import sys\nprint('kernel python:', sys.executable)"


@pytest.fixture
def project(tiny_pipeline) -> Path:
    """The embedded default through `dvc repro`, then `dvc exp run` with yolov8n on RGB data."""
    return tiny_pipeline


def execute(name: str, repo: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("PIPELINE_ROOT", str(repo))  # the kernel inherits this process's environment
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return notebook


def tagged(notebook: nbformat.NotebookNode, tag: str) -> list:
    [cell] = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell.outputs


def data(outputs: list, mime: str) -> list[str]:
    return [o["data"][mime] for o in outputs if mime in o.get("data", {})]


def text(outputs: list) -> str:
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


def exported_formats(repo: Path) -> set[str]:
    """The formats besides PyTorch that the benchmark logged (on the first run: `dvc repro`)."""
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    keys = {key for run in runs for key in run.data.metrics if key.startswith("benchmark/")}
    return {key.split("/")[1] for key in keys} - {"pytorch"}


def assert_ran_in_this_python(notebook: nbformat.NotebookNode) -> None:
    assert f"kernel python: {sys.executable}" in text(notebook.cells[-1].outputs)


def test_notebooks_are_committed_without_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.name for p in paths} >= {"compare_runs.ipynb", "dataset_report.ipynb"}
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear its outputs"


@pytest.mark.slow  # the fixture runs the pipeline (trains)
def test_compare_runs_tabulates_and_plots_every_run(project, monkeypatch):
    notebook = execute("compare_runs.ipynb", project, monkeypatch)
    assert_ran_in_this_python(notebook)
    assert "2 runs" in text(tagged(notebook, "load"))
    [runs] = data(tagged(notebook, "runs-table"), "text/html")
    assert "<table" in runs and "pytorch ms" in runs
    assert any(f"<td>{fmt}</td>" in runs for fmt in exported_formats(project))  # the fastest export
    [best] = data(tagged(notebook, "best-table"), "text/html")
    assert "yolo11n" in best and "yolov8n" in best and "thermal" in best
    assert len(data(tagged(notebook, "scale-latency-plot"), "image/png")) == 1
    curves = tagged(notebook, "epoch-curves")
    assert len(data(curves, "image/png")) == 1 and "8 curves from 2 runs" in text(curves)
    per_class = tagged(notebook, "per-class")
    [table] = data(per_class, "text/html")
    assert all(name in table for name in ("person", "animal", "vehicle"))
    assert len(data(per_class, "image/png")) == 1


@pytest.mark.slow  # the fixture runs the pipeline (trains)
def test_dataset_report_shows_sizes_classes_density_and_recommendations(project, monkeypatch):
    notebook = execute("dataset_report.ipynb", project, monkeypatch)
    assert_ran_in_this_python(notebook)
    [size] = data(tagged(notebook, "size-table"), "text/html")
    assert all(word in size for word in ("train", "val", "test", "instances", "boxes_per_image_mean"))
    classes = tagged(notebook, "classes")
    assert "vehicle" in data(classes, "text/html")[0] and len(data(classes, "image/png")) == 2
    assert len(data(tagged(notebook, "sizes-density"), "image/png")) == 4
    advice = read_json(project / "reports/analyze/recommendations.json")
    [table] = data(tagged(notebook, "recommendations"), "text/html")
    for recommendation in advice["recommendations"]:
        assert recommendation["key"] in table
    plots = sorted((project / "reports/analyze/plots").glob("*.png"))
    assert plots and f"{len(plots)} analysis plots shown" in text(tagged(notebook, "other-plots"))
