"""The catalog: every file a stage reads or writes, and every metric name shared between modules.

Folders come from `paths:` in conf/config.yaml (the one place a user moves them); the names of the
files inside them are written here and nowhere else, so a newcomer finds what a stage produces in
one page, and dvc.yaml's templated paths and the code can never disagree.

    prepare   -> prepared/{images,labels}/<split>/, data.yaml, manifest.json, report.{json,md}
                 (a failed run: prepared.failed-report/report.{json,md})
    analyze   -> analysis/stats.json, recommendations.json, report.md, plots/
    train     -> train/ (Ultralytics' run folder: weights/{last,best}.pt, results.csv, args.yaml),
                 train_report/plan.json, run.json, metrics.json (DVC metrics), epochs.csv (DVC plot)
    evaluate  -> evaluation/metrics.json (DVC metrics), details.json, thresholds.json, report.md, plots/
    export    -> export/models/model.<format> (+ .json metadata), export/parity.json (DVC metrics)
    benchmark -> benchmark/benchmark.json (DVC metrics), details.json, benchmark.md, latency_vs_accuracy.png
    deploy    -> export/tensorrt/engines/model.<precision>.engine (+ .json; + .precision.json: a plan),
                 export/tensorrt/{parity,benchmark}.json, benchmark.md; export/tensorrt_calibration/

The data-centric commands, outside `dvc repro`:

    audit     -> audit/issues.json, index.html (the review page; it downloads corrections.json), folds/
    select    -> select/selection.json, label_studio.json, labels/ (pre-annotations)
    scaling   -> scaling/forecast.json, report.md, scaling.png, subsets/f<fraction>/
    sweep     -> each job's folder: params.yaml, outcome.json and the stage folders above
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config imports PARAMS_FILE from here
    from pipeline.core.config import PathsConfig, PipelineConfig

PARAMS_FILE = "params.yaml"
BEST_WEIGHTS = "best.pt"
RUN_FILE = "run.json"  # in paths.train_report: the MLflow run that evaluate, export and benchmark append to
# What the review page downloads and `data.corrections` reads back (pipeline.data.corrections).
CORRECTIONS_FILE = "corrections.json"
CORRECTIONS_FORMAT = 1
ANALYSIS_PLOTS = ("object_sizes.png", "class_counts.png", "boxes_per_image.png", "box_centres.png")
# Ultralytics' curve plots, as its validator names them -> the names evaluate publishes them under.
CURVE_PLOTS = {
    "BoxPR_curve.png": "pr_curve.png",
    "BoxF1_curve.png": "f1_curve.png",
    "BoxP_curve.png": "precision_curve.png",
    "BoxR_curve.png": "recall_curve.png",
}
AP_PER_CLASS_PLOT = "ap_per_class.png"

# Ultralytics' names for its validation metrics, as its results.csv spells them, and the sweep's
# short names for them (what a user types in `hydra.sweeper.metric`).
RESULTS_MAP50_95 = "metrics/mAP50-95(B)"
RESULTS_MAP50 = "metrics/mAP50(B)"
SWEEP_METRICS = {
    "mAP50-95": RESULTS_MAP50_95,
    "mAP50": RESULTS_MAP50,
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
}


@dataclass(frozen=True)
class Artifacts:
    """File locations of one configuration's pipeline outputs."""

    paths: PathsConfig

    @classmethod
    def of(cls, cfg: PipelineConfig) -> Artifacts:
        return cls(cfg.paths)

    # prepare
    @property
    def prepared(self) -> Path:
        return Path(self.paths.prepared)

    @property
    def dataset(self) -> PreparedDataset:
        return PreparedDataset(self.prepared)

    @property
    def data_yaml(self) -> Path:
        return self.dataset.data_yaml

    @property
    def manifest(self) -> Path:
        return self.dataset.manifest

    # analyze
    @property
    def analysis(self) -> Path:
        return Path(self.paths.analysis)

    @property
    def stats(self) -> Path:
        """Dataset statistics; not DVC metrics, which `dvc exp show` keeps for experiment results."""
        return self.analysis / "stats.json"

    @property
    def recommendations(self) -> Path:
        return self.analysis / "recommendations.json"

    @property
    def analysis_report(self) -> Path:
        return self.analysis / "report.md"

    @property
    def analysis_plots(self) -> Path:
        return self.analysis / "plots"

    # train
    @property
    def train(self) -> TrainRun:
        return TrainRun(Path(self.paths.train))

    @property
    def best_weights(self) -> Path:
        return self.train.best_weights

    @property
    def train_report(self) -> Path:
        return Path(self.paths.train_report)

    @property
    def plan(self) -> Path:
        return self.train_report / "plan.json"

    @property
    def run_file(self) -> Path:
        return self.train_report / RUN_FILE

    @property
    def train_metrics(self) -> Path:
        return self.train_report / "metrics.json"

    @property
    def epochs_csv(self) -> Path:
        return self.train_report / "epochs.csv"

    # evaluate
    @property
    def evaluation(self) -> Path:
        return Path(self.paths.evaluation)

    @property
    def evaluation_metrics(self) -> Path:
        """Headline figures only (DVC metrics: `dvc exp show` stays readable)."""
        return self.evaluation / "metrics.json"

    @property
    def evaluation_details(self) -> Path:
        """Per-class, per-size and confusion-matrix figures."""
        return self.evaluation / "details.json"

    @property
    def thresholds(self) -> Path:
        return self.evaluation / "thresholds.json"

    @property
    def evaluation_report(self) -> Path:
        return self.evaluation / "report.md"

    @property
    def evaluation_plots(self) -> Path:
        return self.evaluation / "plots"

    # export
    @property
    def export(self) -> Path:
        return Path(self.paths.export)

    @property
    def models(self) -> Path:
        return self.export / "models"

    @property
    def onnx(self) -> Path:
        return self.models / "model.onnx"

    @property
    def parity(self) -> Path:
        return self.export / "parity.json"

    # deploy (on the target device)
    @property
    def tensorrt_reports(self) -> Path:
        return self.export / "tensorrt"

    @property
    def engines(self) -> Path:
        return self.tensorrt_reports / "engines"

    @property
    def tensorrt_parity(self) -> Path:
        return self.tensorrt_reports / "parity.json"

    def engine(self, precision: str) -> Path:
        return self.engines / f"model.{precision}.engine"

    @property
    def calibration(self) -> Path:
        return self.export / "tensorrt_calibration"

    # benchmark
    @property
    def benchmark(self) -> BenchmarkFiles:
        return BenchmarkFiles(Path(self.paths.benchmark))

    @property
    def tensorrt_benchmark(self) -> BenchmarkFiles:
        return BenchmarkFiles(self.tensorrt_reports)

    # the data-centric commands
    @property
    def audit(self) -> AuditFiles:
        return AuditFiles(Path(self.paths.audit))

    @property
    def select(self) -> SelectFiles:
        return SelectFiles(Path(self.paths.select))

    @property
    def scaling(self) -> ScalingFiles:
        return ScalingFiles(Path(self.paths.scaling))


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset in the YOLO layout as prepare writes it: {paths.prepared}, its staging folder, or a
    subset's view (SubsetFiles)."""

    folder: Path

    @property
    def data_yaml(self) -> Path:
        return self.folder / "data.yaml"

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def report_json(self) -> Path:
        return self.folder / "report.json"

    @property
    def report_md(self) -> Path:
        return self.folder / "report.md"

    @property
    def failed_report(self) -> PreparedDataset:
        """Where a failed prepare leaves its reports, so the last good dataset stays as it was."""
        return PreparedDataset(self.folder.with_name(self.folder.name + ".failed-report"))

    @property
    def sweep_claim(self) -> Path:
        """Beside the dataset: the dataset keys and hash a sweep's shared dataset was claimed with."""
        return self.folder.with_name(f"{self.folder.name}.sweep-dataset.json")


@dataclass(frozen=True)
class TrainRun:
    """Ultralytics' run folder (`paths.train`, or a sweep trial's own) and the project's state beside it."""

    folder: Path

    @property
    def last_weights(self) -> Path:
        return self.folder / "weights" / "last.pt"

    @property
    def best_weights(self) -> Path:
        return self.folder / "weights" / BEST_WEIGHTS

    @property
    def results_csv(self) -> Path:
        return self.folder / "results.csv"

    @property
    def args(self) -> Path:
        return self.folder / "args.yaml"

    @property
    def state(self) -> Path:
        """Resume bookkeeping beside the run folder, not in it: Ultralytics' DDP launch empties the
        run folder (git-ignored, never a DVC output)."""
        return self.folder.with_name(self.folder.name + ".pipeline_state.json")


@dataclass(frozen=True)
class BenchmarkFiles:
    """What a benchmark writes: the benchmark stage on the host, the deploy stage on the device."""

    folder: Path

    @property
    def metrics(self) -> Path:
        """Headline figures only (DVC metrics)."""
        return self.folder / "benchmark.json"

    @property
    def details(self) -> Path:
        return self.folder / "details.json"

    @property
    def table(self) -> Path:
        return self.folder / "benchmark.md"

    @property
    def plot(self) -> Path:
        return self.folder / "latency_vs_accuracy.png"


@dataclass(frozen=True)
class AuditFiles:
    folder: Path

    @property
    def issues(self) -> Path:
        """The ranked label issues, worst first."""
        return self.folder / "issues.json"

    @property
    def page(self) -> Path:
        return self.folder / "index.html"

    def fold(self, fold: int) -> SubsetFiles:  # --folds K: its model trains on the other folds
        return SubsetFiles(self.folder / "folds" / f"fold{fold}")


@dataclass(frozen=True)
class SelectFiles:
    folder: Path

    @property
    def selection(self) -> Path:
        return self.folder / "selection.json"

    @property
    def label_studio(self) -> Path:
        return self.folder / "label_studio.json"

    @property
    def preannotations(self) -> Path:
        """YOLO txt pre-annotations, one per picked image."""
        return self.folder / "labels"


@dataclass(frozen=True)
class ScalingFiles:
    folder: Path
    plot_name = "scaling.png"  # the report links it by name

    @property
    def forecast(self) -> Path:
        return self.folder / "forecast.json"

    @property
    def report(self) -> Path:
        return self.folder / "report.md"

    @property
    def plot(self) -> Path:
        return self.folder / self.plot_name

    def subset(self, fraction: float) -> SubsetFiles:
        """A nested training subset's own project folder (its prepared/ and its runs)."""
        return SubsetFiles(self.folder / "subsets" / f"f{fraction:g}")


@dataclass(frozen=True)
class SubsetFiles:
    """A scaling subset or an audit fold: a project (prepared/, train/, report/) trained on `listing`."""

    folder: Path

    @property
    def listing(self) -> Path:
        return self.folder / "train.txt"


@dataclass(frozen=True)
class SweepJob:
    """One sweep job's folder: its params and its outcome beside the stage folders it owns."""

    folder: Path

    @property
    def params(self) -> Path:
        return self.folder / PARAMS_FILE

    @property
    def outcome(self) -> Path:
        return self.folder / "outcome.json"


def metadata_path(model: Path, kind: str = "") -> Path:
    """The JSON written beside every exported model or engine (`kind="precision"`: an engine's plan)."""
    return model.with_name(model.name + (f".{kind}" if kind else "") + ".json")
