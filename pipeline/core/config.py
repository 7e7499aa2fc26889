"""Typed configuration: the schema every stage reads `params.yaml` through.

`params.yaml` is composed from `conf/` (see `pipeline.core.compose`). Loading merges it into these
dataclasses with OmegaConf, so an unknown key or a wrong type fails before any work starts,
and `__post_init__` checks the values no type can express (image size a multiple of 32, an
empty class list, `auto` where only `auto` or a number makes sense).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.artifacts import PARAMS_FILE
from pipeline.core.config_checks import AUTO, PRECISIONS, SCALES, SENSORS, require, require_auto_or_number
from pipeline.core.data_config import DataConfig
from pipeline.core.deploy_config import BenchmarkConfig, ExportConfig
from pipeline.core.errors import ConfigError


@dataclass
class SensorConfig:
    name: str
    channels: int
    epoch_backbone: int
    epoch_per_sqrt_class: float
    lr_base: float
    lr_factor: float
    warmup_epochs: float
    forbidden_augmentation: list[str]
    augmentation: dict[str, float]
    patience_fraction: float
    images_per_class: int
    epoch_table: list[list[int]]  # [from train images, converges by low, high epochs]

    def __post_init__(self) -> None:
        require(self.name in SENSORS, "sensor.name", self.name, f"choose one of {SENSORS}")
        require(self.channels in (1, 3), "sensor.channels", self.channels, "use 1 or 3")


@dataclass
class ModelConfig:
    name: str
    architecture: str  # Ultralytics model YAML, built with random weights
    family: str
    scale: str  # where the model sits on the guide's n..x ladder
    p2_head: bool

    def __post_init__(self) -> None:
        require(self.scale in SCALES, "model.scale", self.scale, f"choose one of {SCALES}")
        require(
            self.architecture.endswith(".yaml"),
            "model.architecture",
            self.architecture,
            "name an Ultralytics model YAML such as yolo11n.yaml (training starts from scratch)",
        )


@dataclass
class HardwareConfig:
    name: str
    platform: str
    device: str
    gpus: int
    memory_gb: float
    workers: int
    amp: bool
    time_hours: float | None
    max_epochs: int | None
    export_precision: str
    target_fps: float | None
    max_scale: str
    batch: dict[str, dict[int, int]]

    def __post_init__(self) -> None:
        require(self.gpus >= 0, "hardware.gpus", self.gpus, "use 0 for CPU or the GPU count")
        require(self.max_scale in SCALES, "hardware.max_scale", self.max_scale, f"one of {SCALES}")
        require(
            self.export_precision in PRECISIONS,
            "hardware.export_precision",
            self.export_precision,
            f"choose one of {PRECISIONS}",
        )
        for scale in self.batch:
            require(scale in SCALES, f"hardware.batch.{scale}", scale, f"scales are {SCALES}")


@dataclass
class ClassesConfig:
    names: list[str]

    def __post_init__(self) -> None:
        require(len(self.names) > 0, "classes.names", self.names, "list at least one class")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        require(not duplicates, "classes.names", duplicates, "class names must be unique")


@dataclass
class PathsConfig:
    prepared: str
    analysis: str
    train: str
    train_report: str
    evaluation: str
    export: str
    benchmark: str
    select: str  # python -m pipeline select
    scaling: str  # python -m pipeline scaling
    audit: str  # python -m pipeline audit


AUGMENTATION_KEYS = (
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "mosaic",
    "mixup",
    "copy_paste",
)


@dataclass
class DistillConfig:
    teacher: str | None  # weights path or MLflow URI (pipeline/train/distill.py)


@dataclass
class TrainConfig:
    """Ultralytics training arguments; `auto` ones are resolved by `pipeline.core.rules`."""

    epochs: Any
    patience: Any
    time_hours: Any
    imgsz: Any
    batch: Any
    nbs: Any  # Ultralytics' nominal batch: gradients accumulate to it before an optimizer step
    workers: Any
    lr0: Any
    lrf: float
    warmup_epochs: Any
    optimizer: str
    cos_lr: bool
    amp: Any
    cache: Any
    hsv_h: Any
    hsv_s: Any
    hsv_v: Any
    degrees: Any
    translate: Any
    scale: Any
    mosaic: Any
    mixup: Any
    copy_paste: Any
    fliplr: float
    close_mosaic: Any
    cls_pw: Any  # Ultralytics' class-weight power, 0 (off) to 1 (inverse frequency)
    distill: DistillConfig
    allow_unsafe_augmentation: bool
    strict_guardrails: bool

    def __post_init__(self) -> None:
        for key in ("epochs", "patience", "batch", "workers", "close_mosaic"):
            require_auto_or_number(f"train.{key}", getattr(self, key))
        require_auto_or_number("train.nbs", self.nbs, minimum=1)
        for key in ("lr0", "warmup_epochs", "cls_pw", *AUGMENTATION_KEYS):
            require_auto_or_number(f"train.{key}", getattr(self, key))
        require_auto_or_number("train.time_hours", self.time_hours, nullable=True)
        ok = self.cls_pw == AUTO or 0 <= self.cls_pw <= 1
        require(ok, "train.cls_pw", self.cls_pw, "use 'auto' or a power in [0, 1] (Ultralytics asserts it)")
        if self.imgsz != AUTO:
            ok = isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0
            require(ok, "train.imgsz", self.imgsz, "use 'auto' or a multiple of 32 (the max stride)")
        for key in ("amp", "cache"):
            value = getattr(self, key)
            require(value == AUTO or isinstance(value, bool), f"train.{key}", value, "auto/true/false")


@dataclass
class TrackConfig:
    tracking_uri: str
    experiment: str
    register_model: str


@dataclass
class EvaluateConfig:
    split: str
    conf: float
    iou: float
    batch: int
    target_precision: float | None
    localisation_ratio: float  # warn when mAP50-95 < this x mAP50 (boxes found but fitted loosely)
    weak_class_ratio: float  # warn for a class whose AP50-95 < this x the mean over classes
    swap_fraction: float  # warn for two classes mistaken for each other in this share of their objects
    # metrics per slice (pipeline/evaluate/slices.py): named groups of a regex on the file stem, and/or
    # a CSV of per-image attributes (column `image`); a slice below slice_ratio x its siblings warns
    slices: str | None
    slices_csv: str | None
    slice_ratio: float
    slice_min_instances: int

    def __post_init__(self) -> None:
        require(self.split in ("test", "val"), "evaluate.split", self.split, "use test or val")
        require(0 <= self.conf < 1, "evaluate.conf", self.conf, "a confidence in [0, 1)")
        require(0 < self.iou <= 1, "evaluate.iou", self.iou, "an IoU in (0, 1]")
        require(self.batch >= 1, "evaluate.batch", self.batch, "a batch of at least 1")
        target = self.target_precision
        require(target is None or 0 < target <= 1, "evaluate.target_precision", target, "null or (0, 1]")
        require(
            self.slice_min_instances >= 0, "evaluate.slice_min_instances", self.slice_min_instances, ">= 0"
        )
        if self.slices is not None:
            try:
                require(
                    bool(re.compile(self.slices).groupindex), "evaluate.slices", self.slices, "named groups"
                )
            except re.error as exc:
                require(False, "evaluate.slices", self.slices, f"a valid regex ({exc})")
        for key in ("localisation_ratio", "weak_class_ratio", "swap_fraction", "slice_ratio"):
            value = getattr(self, key)
            require(0 <= value <= 1, f"evaluate.{key}", value, "a fraction in [0, 1]")


RETRAIN_METRICS = ("mAP50-95", "mAP50", "precision", "recall")


@dataclass
class RetrainConfig:
    """`python -m pipeline retrain`: when a challenger replaces the champion (pipeline/retrain.py)."""

    metric: str  # compared on the current evaluation split
    min_improvement: float  # the challenger must beat the champion's metric by at least this
    max_class_drop: float  # and no class's AP50-95 may fall by more than this (absolute)
    max_slice_drop: float  # nor any slice's mAP50-95 (evaluate.slices) with enough objects
    confidence: float  # of the paired bootstrap interval whose lower bound must clear the margin
    resamples: int  # bootstrap resamples of the evaluation images
    targets: list[str]  # `dvc repro` targets; [] = all of dvc.yaml
    refresh_data: bool  # rerun prepare even when DVC sees no change (a data folder outside DVC)
    lock_file: str
    lock_wait: float | None  # seconds a second invocation waits for the lock; null: forever
    records: str  # decision records (JSON and Markdown)
    experiment: str  # MLflow experiment of the decision records

    def __post_init__(self) -> None:
        require(self.metric in RETRAIN_METRICS, "retrain.metric", self.metric, f"one of {RETRAIN_METRICS}")
        margin = self.min_improvement
        require(0 < margin < 1, "retrain.min_improvement", margin, "in (0, 1): ties never win")
        drop = self.max_class_drop
        require(0 <= drop <= 1, "retrain.max_class_drop", drop, "an AP difference in [0, 1]")
        slice_drop = self.max_slice_drop
        require(0 <= slice_drop <= 1, "retrain.max_slice_drop", slice_drop, "an mAP difference in [0, 1]")
        level = self.confidence
        require(0.5 <= level < 1, "retrain.confidence", level, "a confidence level in [0.5, 1), e.g. 0.95")
        require(self.resamples >= 100, "retrain.resamples", self.resamples, "at least 100 resamples")
        wait = self.lock_wait
        require(wait is None or wait >= 0, "retrain.lock_wait", wait, "seconds >= 0; null: forever")


@dataclass
class SelectConfig:
    """`python -m pipeline select`: which unlabelled frames to label next (pipeline/ops/select.py)."""

    conf: float  # boxes kept for the pre-annotations and the flip-agreement check
    image_prefix: str  # prepended to each image's absolute path in Label Studio's data.image

    def __post_init__(self) -> None:
        require(0 < self.conf < 1, "select.conf", self.conf, "a confidence in (0, 1)")


@dataclass
class ScalingConfig:
    """`python -m pipeline scaling`: the data-scaling forecast (pipeline/ops/scaling.py)."""

    fractions: list[float]
    target_map: float  # mAP50-95 whose image count is forecast
    seed: int  # which nested subsets are drawn

    def __post_init__(self) -> None:
        for f in self.fractions:
            require(0 < f <= 1, "scaling.fractions", self.fractions, "fractions in (0, 1]")
        require(0 < self.target_map < 1, "scaling.target_map", self.target_map, "an mAP in (0, 1)")


@dataclass
class AuditConfig:
    """`python -m pipeline audit --split train --folds K`: the out-of-fold models (ops/audit_folds.py)."""

    fold_epochs: int  # each fold's model: the same plan, trained this many epochs (scaled down)

    def __post_init__(self) -> None:
        require(
            isinstance(self.fold_epochs, int) and self.fold_epochs >= 1,
            "audit.fold_epochs",
            self.fold_epochs,
            "a whole number of epochs >= 1",
        )


@dataclass
class PipelineConfig:
    data: DataConfig
    sensor: SensorConfig
    model: ModelConfig
    hardware: HardwareConfig
    classes: ClassesConfig
    seed: int
    paths: PathsConfig
    train: TrainConfig
    track: TrackConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    benchmark: BenchmarkConfig
    retrain: RetrainConfig
    select: SelectConfig
    scaling: ScalingConfig
    audit: AuditConfig


def validate(raw: DictConfig | dict, source: str = "config") -> PipelineConfig:
    """Merge a composed config into the schema and build the typed objects, or raise ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PipelineConfig), raw)
        return OmegaConf.to_object(merged)  # runs every __post_init__
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_describe_omegaconf_error(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _describe_omegaconf_error(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    if "not in" in message:
        return f"unknown key '{key}' ({message}); check its spelling against conf/"
    if "MISSING" in message or "Missing mandatory value" in message:
        return f"'{key}' must be set (it is '???' in conf/); e.g. -S {key}=..."
    return f"key '{key}': {message}"


def load_params(path: Path | str = PARAMS_FILE) -> PipelineConfig:
    """Read and validate params.yaml; the one way stages get their configuration."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run `python -m pipeline compose` from the project root")
    return validate(OmegaConf.load(path), source=str(path))


def to_flat_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """`section.key` -> value, as MLflow params want them."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)

    def flatten(prefix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, dict):
            items: dict[str, Any] = {}
            for key, value in node.items():
                items.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
            return items
        return {prefix: node}

    return flatten("", container)
