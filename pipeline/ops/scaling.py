"""`python -m pipeline scaling [--fractions ...]`: how many images a target mAP needs (guide 3.3).

Trains the same plan on nested subsets of the prepared training split (each subset holds the
smaller ones; each training is its own MLflow run, a child of one `scaling` run), evaluates each
on the validation split, and fits the power law mAP(n) = a - b * n^(-c) (a: the ceiling this data
and model approach; c: how fast) with SciPy's curve_fit under bounds. The parameters' covariance
gives an interval on the images predicted for scaling.target_map, overall and per class.

The forecast says plainly when it is not to be trusted: fewer points than the curve has
parameters plus one, no curvature (mAP does not grow, or the fit sits on a bound), a target at or
above the fitted ceiling, or an interval wider than the prediction itself.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.core import tracking
from pipeline.core.artifacts import Artifacts, PreparedDataset, ScalingFiles, SubsetFiles
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import DataError
from pipeline.core.io import read_json, write_json, write_text
from pipeline.core.prepared import read_data_yaml
from pipeline.evaluate.results import class_metrics
from pipeline.evaluate.stage import validate
from pipeline.model.info import read_model_info
from pipeline.model.scoring import resolve_split, split_images
from pipeline.train import stage as train_stage

MIN_POINTS = 4  # three parameters: at least one degree of freedom left to judge the fit
BOUNDS = ([0.0, 0.0, 0.05], [1.0, np.inf, 3.0])  # a, b, c
INTERVAL = (5.0, 95.0)  # percentiles of the images needed under the parameters' uncertainty
DRAWS = 4000


@dataclass(frozen=True)
class PowerLawFit:
    images: tuple[int, ...]
    maps: tuple[float, ...]
    target: float
    a: float | None = None
    b: float | None = None
    c: float | None = None
    needed: float | None = None  # images for the target; inf when it is above the ceiling a
    low: float | None = None
    high: float | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def trustworthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        infinite = [k for k, v in asdict(self).items() if isinstance(v, float) and not math.isfinite(v)]
        finite = asdict(self) | dict.fromkeys(infinite)  # JSON has no inf: "no forecast" is None
        return {**finite, "trustworthy": self.trustworthy}


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(n, -c)


def images_for(
    target: float, a: np.ndarray | float, b: np.ndarray | float, c: np.ndarray | float
) -> np.ndarray:
    """Invert the law: n = (b / (a - target))^(1/c); inf where the target is at or above the ceiling."""
    a, b, c = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float), np.asarray(c, float))
    gap = a - target
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = np.where(gap > 0, np.power(np.maximum(b, 0) / np.where(gap > 0, gap, 1), 1 / c), np.inf)
    return np.where(np.isnan(n), np.inf, n)


def fit_power_law(images: Sequence[int], maps: Sequence[float], target: float, seed: int = 0) -> PowerLawFit:
    """Fit mAP(n) = a - b n^-c to measured points and forecast the images needed for `target`."""
    from scipy.optimize import curve_fit

    base = PowerLawFit(tuple(int(n) for n in images), tuple(float(m) for m in maps), target)
    if len(set(base.images)) < MIN_POINTS:
        return replace(
            base, problems=(f"too few points: {len(set(base.images))} sizes, a fit needs {MIN_POINTS}",)
        )
    n, y = np.array(base.images, float), np.array(base.maps, float)
    guess = [min(max(y.max() + 0.05, 0.01), 1.0), max(y.max() - y.min(), 1e-3) * n.min() ** 0.5, 0.5]
    try:
        params, cov = curve_fit(power_law, n, y, p0=guess, bounds=BOUNDS, maxfev=20000)
    except RuntimeError as exc:  # no convergence
        return replace(base, problems=(f"the fit did not converge ({exc})",))
    a, b, c = (float(v) for v in params)
    needed = float(images_for(target, a, b, c))
    low, high = interval(params, cov, target, seed)
    fitted = replace(base, a=a, b=b, c=c, needed=needed, low=low, high=high)
    return replace(fitted, problems=tuple(fit_problems(fitted, y)))


def interval(params: np.ndarray, cov: np.ndarray, target: float, seed: int) -> tuple[float, float]:
    """Percentiles of the images needed, drawing parameters from the fit's covariance (inside the bounds)."""
    if not np.all(np.isfinite(cov)):
        return math.inf, math.inf
    draws = np.random.default_rng(seed).multivariate_normal(params, cov, DRAWS, check_valid="ignore")
    draws = np.clip(draws, BOUNDS[0], BOUNDS[1])
    needed = images_for(target, draws[:, 0], draws[:, 1], draws[:, 2])
    low, high = np.percentile(needed, INTERVAL, method="nearest")  # inf-safe: no interpolation
    return float(low), float(high)


def fit_problems(fit: PowerLawFit, y: np.ndarray) -> list[str]:
    problems = []
    growth = fit.b * min(fit.images) ** -fit.c  # what the curve gains from the smallest subset on
    if growth < 2 * float(np.std(y)) or y[-1] <= y[0]:
        problems.append("no curvature: mAP hardly grows with the images, so the law's shape is not measured")
    if any(math.isclose(fit.c, bound, rel_tol=1e-3) for bound in (BOUNDS[0][2], BOUNDS[1][2])):
        problems.append(f"the exponent c = {fit.c:.3g} sits on a bound ({BOUNDS[0][2]} .. {BOUNDS[1][2]})")
    if not math.isfinite(fit.needed):
        problems.append(f"target mAP {fit.target} is at or above the fitted ceiling a = {fit.a:.3f}")
    elif not math.isfinite(fit.high) or fit.high - fit.low > fit.needed:
        width = f"{fit.low:.0f} .. {fit.high:.0f} images"
        problems.append(f"the interval ({width}) is wider than the prediction ({fit.needed:.0f})")
    return problems


def images_text(images: float | None) -> str:
    """An interval end; unbounded (inf, or None once read back from forecast.json) says so."""
    return "unbounded" if images is None or not math.isfinite(images) else f"{images:.0f}"


def describe(name: str, fit: PowerLawFit) -> str:
    if fit.needed is None or not math.isfinite(fit.needed):
        forecast = "no forecast"
    else:
        span = f"{INTERVAL[0]:.0f}-{INTERVAL[1]:.0f} %: {images_text(fit.low)} .. {images_text(fit.high)}"
        forecast = f"{fit.needed:.0f} images ({span})"
    verdict = "trustworthy" if fit.trustworthy else "NOT trustworthy: " + "; ".join(fit.problems)
    return f"{name}: {forecast} for mAP50-95 {fit.target}; {verdict}"


# ---- nested subsets, trained and evaluated ------------------------------------------------------


def nested_subsets(images: Sequence[Path], fractions: Sequence[float], seed: int) -> dict[float, list[Path]]:
    """One shuffled order, cut at each fraction: every subset holds all the smaller ones."""
    order = [images[i] for i in np.random.default_rng(seed).permutation(len(images))]
    return {f: sorted(order[: max(1, round(f * len(order)))]) for f in sorted(set(fractions))}


def subset_config(cfg: PipelineConfig, images: list[Path], files: SubsetFiles, name: str) -> PipelineConfig:
    """The same config with its own prepared view (data.yaml whose train is a list of `images`; the
    labels stay beside the originals, the other splits are the dataset's) and its own train outputs
    under `files`. `name` (a scaling subset, an audit fold) and the list's digest make the view's
    dataset hash, so a training on other images never resumes this one."""
    prepared, subset = Artifacts.of(cfg).dataset, PreparedDataset(files.folder / "prepared")
    data = read_data_yaml(prepared)
    lines = "".join(f"{p.resolve()}\n" for p in images)
    listing = write_text(files.listing, lines)
    source = Path(data.get("path") or prepared.folder).resolve()
    data |= {"path": str(source), "train": str(listing.resolve())}
    write_text(subset.data_yaml, yaml.safe_dump(data, sort_keys=False))
    manifest = read_json(prepared.manifest)
    digest = hashlib.sha256(lines.encode()).hexdigest()[:8]
    subset_hash = f"{manifest['dataset_hash']}-{name}-{len(images)}-{digest}"  # its own training identity
    write_json(subset.manifest, {**manifest, "dataset_hash": subset_hash})
    paths = replace(cfg.paths, prepared=str(subset.folder), train=str(files.folder / "train"))
    return replace(cfg, paths=replace(paths, train_report=str(files.folder / "report")))


@dataclass(frozen=True)
class Point:
    fraction: float
    images: int
    run_id: str
    map50_95: float
    per_class: dict[str, float]  # AP50-95 by class name


def train_and_measure(cfg: PipelineConfig, fraction: float, images: list[Path], parent_id: str) -> Point:
    sub = subset_config(cfg, images, Artifacts.of(cfg).scaling.subset(fraction), f"scaling-{fraction:g}")
    result = train_stage.run(sub)
    tracking.adopt_as_child(cfg, result.run_id, parent_id)
    info = read_model_info(result.weights)
    split, _ = resolve_split(Path(sub.paths.prepared), "val")
    metrics = validate(sub, result.weights, split, info, Path(sub.paths.train_report) / "val")
    per_class = {c.name: float(c.ap50_95 or 0.0) for c in class_metrics(metrics, info.names)}
    return Point(fraction, len(images), result.run_id, float(metrics.box.map), per_class)


def fits(points: Sequence[Point], target: float, seed: int) -> dict[str, PowerLawFit]:
    """The overall fit, then one per class (a class absent from the val split still gets its points)."""
    images = [p.images for p in points]
    names = sorted({name for p in points for name in p.per_class})
    result = {"all": fit_power_law(images, [p.map50_95 for p in points], target, seed)}
    return result | {
        n: fit_power_law(images, [p.per_class.get(n, 0.0) for p in points], target, seed) for n in names
    }


def draw(fitted: dict[str, PowerLawFit], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, fit in fitted.items():
        (line,) = axis.plot(
            fit.images, fit.maps, "o", label=f"{name}{'' if fit.trustworthy else ' (untrusted)'}"
        )
        if fit.a is not None:
            grid = np.geomspace(
                min(fit.images), max(max(fit.images), min(fit.needed, 100 * max(fit.images))), 200
            )
            axis.plot(grid, power_law(grid, fit.a, fit.b, fit.c), "-", color=line.get_color())
    axis.axhline(next(iter(fitted.values())).target, color="grey", ls="--", label="target")
    axis.set(xscale="log", xlabel="training images", ylabel="mAP50-95 (val)", title="mAP(n) = a - b n^-c")
    axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def report(points: Sequence[Point], fitted: dict[str, PowerLawFit]) -> str:
    rows = [f"| {p.fraction:g} | {p.images} | {p.map50_95:.3f} | `{p.run_id}` |" for p in points]
    lines = [
        "# Data-scaling forecast",
        "",
        "| fraction | images | mAP50-95 (val) | MLflow run |",
        "|---|---|---|---|",
    ]
    lines += [*rows, "", "## Images needed", "", *(f"- {describe(n, f)}" for n, f in fitted.items())]
    return "\n".join([*lines, "", f"![points and fitted curves]({ScalingFiles.plot_name})", ""])


def run(cfg: PipelineConfig, fractions: Sequence[float]) -> dict[str, Any]:
    train_images = split_images(Path(cfg.paths.prepared), "train")
    if not train_images:
        raise DataError(f"{Artifacts.of(cfg).data_yaml}: no training images: run prepare first")
    subsets = nested_subsets(train_images, fractions, cfg.scaling.seed)
    mlflow = tracking.configure(cfg)
    with mlflow.start_run(run_name="scaling") as parent:
        parent_id = parent.info.run_id
    points = [train_and_measure(cfg, f, images, parent_id) for f, images in subsets.items()]
    fitted = fits(points, cfg.scaling.target_map, cfg.scaling.seed)
    files = Artifacts.of(cfg).scaling
    forecast = {
        "target_map50_95": cfg.scaling.target_map,
        "points": [asdict(p) for p in points],
        "fits": {name: fit.as_dict() for name, fit in fitted.items()},
    }
    write_json(files.forecast, forecast)
    write_text(files.report, report(points, fitted))
    draw(fitted, files.plot)
    with mlflow.start_run(run_id=parent_id):
        mlflow.log_metrics({f"scaling/{p.images}/mAP50-95": p.map50_95 for p in points})
        # subsets/ holds only image lists and small yaml files
        mlflow.log_artifacts(str(files.folder), artifact_path="scaling")
    return forecast


def main(argv: list[str], prog: str = "scaling", command: str = "scaling") -> int:
    parser = stage_parser(prog, __doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        help="subset sizes as fractions of the train split (scaling.fractions)",
    )
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    fractions = args.fractions or cfg.scaling.fractions
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        parser.error(f"--fractions {bad}: each must be in (0, 1]")
    forecast = run(cfg, fractions)
    for name, fit in forecast["fits"].items():
        print(describe(name, PowerLawFit(**{k: v for k, v in fit.items() if k != "trustworthy"})))
    print(f"report {Artifacts.of(cfg).scaling.report}")
    return 0
