"""Stage 2, analyze: dataset statistics, plots and recommendations, each with its reason.

Per split: images, instances, background images, boxes per image, class counts and imbalance,
aspect ratios, and object sizes in pixels at the training image size, bucketed as in the guide
(13.1.1). The training image size is `train.imgsz` when explicit; when `auto` it comes from
Algorithm 4 through `rules.resolve_plan`, fed by the share of small objects measured at the SOURCE
resolution (the size must be known before sizes at it can be). Training values come from the same
`resolve_plan` that `train` calls, so the two never disagree. `recommendations.json` carries the
`facts` block `train` reads with `facts.load_facts`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.core import advice, rules
from pipeline.core.artifacts import Artifacts, PreparedDataset
from pipeline.core.cli import stage_parser
from pipeline.core.compose import CONF_DIR
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import DataError
from pipeline.core.prepared import read_data_yaml
from pipeline.core.rules import DatasetFacts, Decision, Plan
from pipeline.data import labels
from pipeline.data.analyze_report import write_outputs
from pipeline.data.labels import LabelTable

HEATMAP_BINS = 64


@dataclass(frozen=True)
class SplitData:
    """One split as read: its boxes (class ids in `classes.names` order) and image sizes."""

    name: str
    table: LabelTable
    sizes: np.ndarray  # (F, 2) width, height in source pixels


@dataclass(frozen=True)
class SplitStats:
    name: str
    images: int
    instances: int
    background_images: int
    missing_label_files: int
    boxes_per_image: dict[str, float]
    class_instances: dict[str, int]
    class_images: dict[str, int]
    imbalance_ratio: float | None
    aspect_ratio: dict[str, float]  # width/height in pixels
    size_buckets: dict[str, int]  # at the training image size
    fraction_small: float  # under 64 px at the training image size
    fraction_small_source: float  # under 64 px at the source resolution (Algorithm 4's input)
    fraction_tiny: float  # under 32 px at the training image size
    max_side: int
    sides: np.ndarray = field(repr=False, compare=False)  # per box: sqrt(area) px at training size
    per_image: np.ndarray = field(repr=False, compare=False)  # boxes per image
    centres: np.ndarray = field(repr=False, compare=False)  # (BINS, BINS) box-centre counts, row = y

    def metrics(self) -> dict[str, Any]:
        """The DVC metrics of this split: numbers only, nested one level at most."""
        numbers = {
            "images": self.images,
            "instances": self.instances,
            "background_images": self.background_images,
            "missing_label_files": self.missing_label_files,
            **{f"boxes_per_image_{k}": v for k, v in self.boxes_per_image.items()},
            **{f"aspect_ratio_{k}": v for k, v in self.aspect_ratio.items()},
            **self.size_buckets,
            "fraction_small": self.fraction_small,
            "fraction_small_source": self.fraction_small_source,
            "fraction_tiny": self.fraction_tiny,
            "max_side": self.max_side,
            "class_instances": self.class_instances,
            "class_images": self.class_images,
        }
        if self.imbalance_ratio is not None:
            numbers["imbalance_ratio"] = self.imbalance_ratio
        return numbers


@dataclass(frozen=True)
class AnalyzeResult:
    imgsz: int
    facts: DatasetFacts
    splits: tuple[SplitStats, ...]
    recommendations: tuple[Decision, ...]
    plan: Plan
    warnings: tuple[str, ...]
    output_dir: Path


# ---- statistics (pure, vectorised) ---------------------------------------------------------------


def box_pixels(data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """Box width and height in source pixels."""
    frame = data.sizes[data.table.file_index]
    return data.table.boxes[:, 2] * frame[:, 0], data.table.boxes[:, 3] * frame[:, 1]


def training_scale(data: SplitData, imgsz: int) -> np.ndarray:
    """Per box: Ultralytics resizes each image's long side to imgsz (then letterboxes)."""
    return imgsz / data.sizes.max(axis=1)[data.table.file_index]


def fraction_below(values: np.ndarray, limit: float) -> float:
    return round(float((values < limit).mean()), 6) if values.size else 0.0


def class_image_counts(table: LabelTable, num_classes: int) -> np.ndarray:
    """Images that contain each class at least once."""
    present = np.zeros((len(table.files), num_classes), dtype=bool)
    present[table.file_index, table.classes] = True
    return present.sum(axis=0)


def dataset_facts(train: SplitData, num_classes: int) -> DatasetFacts:
    width, height = box_pixels(train)
    sides = np.sqrt(width * height)
    relative = sides * training_scale(train, 1)  # box side / its frame's long side
    # inverted_cdf: each percentile is a real box, so the share under a size is exact to 1 %
    percentiles = np.percentile(relative, np.arange(101), method="inverted_cdf") if relative.size else []
    return DatasetFacts(
        train_images=len(train.table.files),
        class_images=tuple(int(n) for n in class_image_counts(train.table, num_classes)),
        fraction_small=fraction_below(sides, rules.SMALL_OBJECT_PX),
        max_side=int(train.sizes.max()),
        relative_sides=tuple(round(float(q), 6) for q in percentiles),
    )


def summary(values: np.ndarray, digits: int = 3) -> dict[str, float]:
    if not values.size:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "mean": round(float(values.mean()), digits),
        "median": round(float(p50), digits),
        "p95": round(float(p95), digits),
        "max": round(float(values.max()), digits),
    }


def aspect_summary(width: np.ndarray, height: np.ndarray) -> dict[str, float]:
    ratios = width[height > 0] / height[height > 0]
    if not ratios.size:
        return {"p5": 0.0, "median": 0.0, "p95": 0.0}
    p5, p50, p95 = np.percentile(ratios, [5, 50, 95])
    return {"p5": round(float(p5), 3), "median": round(float(p50), 3), "p95": round(float(p95), 3)}


def size_bucket_counts(sides: np.ndarray) -> dict[str, int]:
    """Objects per guide bucket (13.1.1): an edge value belongs to the bucket above it."""
    edges = [limit for _, limit in advice.SIZE_BUCKETS[:-1]]
    counts = np.bincount(np.searchsorted(edges, sides, side="right"), minlength=len(advice.SIZE_BUCKETS))
    return {name: int(n) for (name, _), n in zip(advice.SIZE_BUCKETS, counts, strict=True)}


def centre_heatmap(boxes: np.ndarray, bins: int = HEATMAP_BINS) -> np.ndarray:
    cells = (boxes[:, :2] * bins).astype(np.int32)
    np.clip(cells, 0, bins - 1, out=cells)
    flat = np.bincount(cells[:, 1] * bins + cells[:, 0], minlength=bins * bins)
    return flat.reshape(bins, bins)


def split_statistics(data: SplitData, names: list[str], imgsz: int) -> SplitStats:
    table = data.table
    width, height = box_pixels(data)
    source_sides = np.sqrt(width * height)
    sides = source_sides * training_scale(data, imgsz)
    per_image = table.boxes_per_file()
    instances = np.bincount(table.classes, minlength=len(names))
    class_instances = {name: int(n) for name, n in zip(names, instances, strict=True)}
    images = class_image_counts(table, len(names))
    return SplitStats(
        name=data.name,
        images=len(table.files),
        instances=int(table.classes.size),
        background_images=int((per_image == 0).sum()),
        missing_label_files=int(table.missing.sum()),
        boxes_per_image=summary(per_image),
        class_instances=class_instances,
        class_images={name: int(n) for name, n in zip(names, images, strict=True)},
        imbalance_ratio=rules.imbalance_ratio(class_instances),
        aspect_ratio=aspect_summary(width, height),
        size_buckets=size_bucket_counts(sides),
        fraction_small=fraction_below(sides, rules.SMALL_OBJECT_PX),
        fraction_small_source=fraction_below(source_sides, rules.SMALL_OBJECT_PX),
        fraction_tiny=fraction_below(sides, advice.TINY_OBJECT_PX),
        max_side=int(data.sizes.max()) if data.sizes.size else 0,
        sides=sides.astype(np.float32),
        per_image=per_image,
        centres=centre_heatmap(table.boxes),
    )


# ---- reading -------------------------------------------------------------------------------------


def class_mapping(dataset_names: list[str], names: list[str], source: Path) -> np.ndarray:
    """data.yaml class id -> index in `classes.names` (the order every output uses)."""
    unknown = [n for n in dataset_names if n not in names]
    if unknown:
        raise DataError(
            f"{source}: classes {unknown} are not in classes.names {names}; pick the matching classes "
            "group (e.g. -S classes=...) or map them in the prepare stage (data.class_map)"
        )
    return np.array([names.index(n) for n in dataset_names], dtype=np.int64)


def read_dataset(root: Path, names: list[str]) -> list[SplitData]:
    dataset = PreparedDataset(root)
    data = read_data_yaml(dataset)
    dataset_names = labels.class_names(data, dataset.data_yaml)
    mapping = class_mapping(dataset_names, names, dataset.data_yaml)
    known_sizes = labels.manifest_sizes(root)
    splits = []
    for split in labels.read_splits(root, data):
        table = labels.read_labels(split.labels, len(dataset_names))
        table = dataclasses.replace(table, classes=mapping[table.classes])
        sizes = labels.read_image_sizes(split.images, root, known_sizes)
        splits.append(SplitData(split.name, table, sizes))
    return splits


# ---- recommendations -----------------------------------------------------------------------------


def model_configs(conf_dir: Path) -> list[dict[str, Any]]:
    """name, family, scale and p2_head of every conf/model file."""
    configs = []
    for path in sorted(conf_dir.glob("*.yaml")):
        with path.open(encoding="utf-8") as handle:
            configs.append(yaml.safe_load(handle))
    return configs


def pick_models(configs: list[dict[str, Any]], scale: str, family: str | None, p2: bool) -> list[str]:
    return [
        c["name"]
        for c in configs
        if c.get("scale") == scale and bool(c.get("p2_head")) == p2 and family in (None, c.get("family"))
    ]


def p2_within_family(reason: str, configs: list[dict[str, Any]], scale: str, family: str) -> tuple[bool, str]:
    """A P2 head only where the recommended family has a P2 config (conf/model/*-p2.yaml) at this
    scale; otherwise no P2, and the reason names the families that have one."""
    own = pick_models(configs, scale, family, True)
    if own:
        return True, f"{reason}; configs: {', '.join(f'model={n}' for n in own)}"
    others = pick_models(configs, scale, None, True)
    elsewhere = ", ".join(f"model={n}" for n in others) or "none at this scale"
    return False, f"{reason}, but {family} has no P2 config at scale {scale} (P2 configs: {elsewhere})"


def recommend(
    cfg: PipelineConfig, facts: DatasetFacts, train: SplitStats, plan: Plan, configs: list[dict[str, Any]]
) -> tuple[Decision, ...]:
    """Model family, scale, P2 head (from the analysis) and the plan's resolution, epochs and lr0."""
    platform, imgsz = cfg.hardware.platform, plan.value("imgsz")
    family, family_reason = advice.model_family_rule(
        train.fraction_small, facts.train_images, platform, cfg.sensor.name
    )
    scale, scale_reason = advice.scale_rule(facts.train_images, cfg.hardware.max_scale, cfg.hardware.name)
    p2, p2_reason = advice.p2_head_rule(train.fraction_tiny, train.fraction_small, imgsz, platform)
    if p2:
        p2, p2_reason = p2_within_family(p2_reason, configs, scale, family)
    names = pick_models(configs, scale, family, False)
    model = names[0] if names else f"{family} scale {scale}"
    decisions = [
        Decision("model_family", family, "analysis", family_reason),
        Decision("max_scale", scale, "analysis", scale_reason),
        Decision("model", model, "analysis", _model_reason(family, scale, bool(names), cfg.model.name)),
        Decision("p2_head", p2, "analysis", p2_reason),
    ]
    return (*decisions, *(_planned(plan, facts, key) for key in ("imgsz", "epochs", "lr0")))


def _model_reason(family: str, scale: str, found: bool, configured: str) -> str:
    where = f"{family} at scale {scale}" if found else f"no conf/model file has {family} at scale {scale}"
    return f"{where}; configured now: {configured}"


def _planned(plan: Plan, facts: DatasetFacts, key: str) -> Decision:
    decision = next(d for d in plan.decisions if d.key == key)
    if key == "imgsz" and decision.source == "explicit":
        wanted, reason = rules.imgsz_rule(facts)
        note = f"set in the config; Algorithm 4 would pick {wanted}: {reason}"
        return dataclasses.replace(decision, reason=note)
    return decision


def resolve_for_analysis(cfg: PipelineConfig, facts: DatasetFacts) -> Plan:
    """The training plan; with strict_guardrails its warnings are reported here, refused by train."""
    relaxed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, strict_guardrails=False))
    return rules.resolve_plan(relaxed, facts)


# ---- the stage -----------------------------------------------------------------------------------


def measure(cfg: PipelineConfig) -> AnalyzeResult:
    """Read the prepared dataset and compute everything; writes nothing."""
    names = list(cfg.classes.names)
    splits = read_dataset(Path(cfg.paths.prepared), names)
    facts = dataset_facts(splits[0], len(names))
    plan = resolve_for_analysis(cfg, facts)
    imgsz = int(plan.value("imgsz"))
    stats = tuple(split_statistics(split, names, imgsz) for split in splits)
    configs = model_configs(CONF_DIR / "model")
    recommendations = recommend(cfg, facts, stats[0], plan, configs)
    class_warnings = advice.data_warnings(cfg.sensor, names, facts, stats[0].class_instances)
    warnings = tuple(class_warnings) + plan.warnings
    return AnalyzeResult(imgsz, facts, stats, recommendations, plan, warnings, Path(cfg.paths.analysis))


def run(cfg: PipelineConfig) -> AnalyzeResult:
    """Measure, then write stats.json, recommendations.json, report.md and plots/."""
    result = measure(cfg)
    write_outputs(cfg, result)
    return result


def main(argv: list[str], prog: str = "analyze", command: str = "analyze") -> int:
    parser = stage_parser(prog, "Dataset statistics, plots and recommendations (with reasons).")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    result = run(cfg)
    train = result.splits[0]
    print(
        f"analyzed {', '.join(f'{s.name} {s.images} images/{s.instances} boxes' for s in result.splits)}; "
        f"{train.fraction_small:.0%} of train objects under 64 px at {result.imgsz} px"
    )
    for decision in result.recommendations:
        print(f"  {decision.key}: {decision.value} ({decision.reason})")
    for warning in result.warnings:
        print(f"  WARNING: {warning}")
    files = Artifacts.of(cfg)
    print(f"wrote {files.stats}, {files.recommendations}, {files.analysis_report}, {files.analysis_plots}/")
    return 0
