"""Typed configuration: the schema every stage reads `params.yaml` through.

`params.yaml` is composed from `conf/` (see `pipeline.core.compose`). Loading merges it into these
dataclasses with OmegaConf, so an unknown key or a wrong type fails before any work starts,
and `__post_init__` checks the values no type can express (image size a multiple of 32, an
empty class list, `auto` where only `auto` or a number makes sense).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import ConfigError

AUTO = "auto"
SCALES = ("n", "s", "m", "l", "x")
SENSORS = ("rgb", "thermal")
DATA_FORMATS = ("synthetic", "yolo", "coco", "voc")
PRECISIONS = ("fp32", "fp16", "int8")


def _require(condition: bool, key: str, value: Any, fix: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def _require_auto_or_number(key: str, value: Any, minimum: float = 0.0, nullable: bool = False) -> None:
    if value == AUTO or (nullable and value is None):
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    _require(ok, key, value, f"use 'auto' or a number >= {minimum}")


@dataclass
class SensorConfig:
    name: str = MISSING
    channels: int = 3
    epoch_backbone: int = MISSING
    epoch_per_sqrt_class: float = MISSING
    lr_base: float = 0.01
    lr_factor: float = 1.0
    warmup_epochs: float = 5.0
    forbidden_augmentation: list[str] = field(default_factory=list)
    augmentation: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.name in SENSORS, "sensor.name", self.name, f"choose one of {SENSORS}")
        _require(self.channels in (1, 3), "sensor.channels", self.channels, "use 1 or 3")


@dataclass
class ModelConfig:
    name: str = MISSING
    architecture: str = MISSING  # Ultralytics model YAML, built with random weights
    family: str = MISSING
    scale: str = MISSING  # where the model sits on the guide's n..x ladder
    p2_head: bool = False

    def __post_init__(self) -> None:
        _require(self.scale in SCALES, "model.scale", self.scale, f"choose one of {SCALES}")
        _require(
            self.architecture.endswith(".yaml"),
            "model.architecture",
            self.architecture,
            "name an Ultralytics model YAML such as yolo11n.yaml (training starts from scratch)",
        )


@dataclass
class HardwareConfig:
    name: str = MISSING
    platform: str = MISSING
    device: str = "cpu"
    gpus: int = 0
    memory_gb: float = MISSING
    workers: int = 2
    amp: bool = False
    time_hours: float | None = None
    export_precision: str = "fp32"
    target_fps: float | None = None
    max_scale: str = "x"
    batch: dict[str, dict[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.gpus >= 0, "hardware.gpus", self.gpus, "use 0 for CPU or the GPU count")
        _require(self.max_scale in SCALES, "hardware.max_scale", self.max_scale, f"one of {SCALES}")
        _require(
            self.export_precision in PRECISIONS,
            "hardware.export_precision",
            self.export_precision,
            f"choose one of {PRECISIONS}",
        )
        for scale in self.batch:
            _require(scale in SCALES, f"hardware.batch.{scale}", scale, f"scales are {SCALES}")


@dataclass
class ClassesConfig:
    names: list[str] = MISSING

    def __post_init__(self) -> None:
        _require(len(self.names) > 0, "classes.names", self.names, "list at least one class")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        _require(not duplicates, "classes.names", duplicates, "class names must be unique")


@dataclass
class SyntheticConfig:
    sensor: str = "thermal"
    images: int = 400
    size: int = 160
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.sensor in SENSORS, "data.synthetic.sensor", self.sensor, f"one of {SENSORS}")
        _require(self.images >= 10, "data.synthetic.images", self.images, "generate at least 10")
        _require(self.size >= 32, "data.synthetic.size", self.size, "frames of at least 32 px")


SPLITS = ("train", "val", "test")
SPLIT_MODES = ("auto", "source", "group")
LINK_MODES = ("hardlink", "symlink", "copy")
NORMALIZE_METHODS = ("percentile", "fixed")
NORMALIZE_SCOPES = ("frame", "dataset")
LABEL_FRAMES = ("displayed", "stored")
# What each validation finding may do. error: the stage fails (the report is still written);
# drop: remove the offending box, line or image; fix: repair it; warn: keep it as it is, reported.
# An action is listed only where it is meaningful (a box outside the image cannot be kept as is).
FINDING_ACTIONS: dict[str, tuple[str, ...]] = {
    "unreadable_image": ("error", "drop"),
    "exif_orientation": ("error", "drop", "fix", "warn"),
    "size_mismatch": ("error", "drop", "warn"),
    "bad_line": ("error", "drop", "fix"),
    "class_out_of_range": ("error", "drop"),
    "unknown_class": ("error", "drop"),
    "out_of_bounds": ("error", "drop"),
    "slightly_out_of_bounds": ("error", "drop", "fix"),
    "degenerate_box": ("error", "drop"),
    "tiny_box": ("error", "drop", "warn"),
    "duplicate_box": ("error", "drop", "warn"),
    "near_duplicate_box": ("error", "drop", "warn"),
    "missing_label": ("error", "drop", "warn"),
    "background_image": ("error", "drop", "warn"),
    "orphan_label": ("error", "warn"),
    "unlisted_image": ("error", "drop", "warn"),
    "no_group": ("error", "warn"),
    "duplicate_image": ("error", "drop", "warn"),
    "near_duplicate_image": ("error", "drop", "warn"),
    "split_leakage": ("error", "drop", "fix", "warn"),
}


@dataclass
class PolicyConfig:
    """One action per finding kind (see FINDING_ACTIONS and conf/data/synthetic_thermal.yaml)."""

    unreadable_image: str = "drop"
    exif_orientation: str = "fix"
    size_mismatch: str = "error"
    bad_line: str = "error"
    class_out_of_range: str = "error"
    unknown_class: str = "error"
    out_of_bounds: str = "error"
    slightly_out_of_bounds: str = "fix"
    degenerate_box: str = "drop"
    tiny_box: str = "warn"
    duplicate_box: str = "drop"
    near_duplicate_box: str = "warn"
    missing_label: str = "drop"
    background_image: str = "warn"
    orphan_label: str = "warn"
    unlisted_image: str = "drop"
    no_group: str = "warn"
    duplicate_image: str = "drop"
    near_duplicate_image: str = "warn"
    split_leakage: str = "fix"

    def __post_init__(self) -> None:
        for kind, allowed in FINDING_ACTIONS.items():
            value = getattr(self, kind)
            _require(value in allowed, f"data.validation.policy.{kind}", value, f"choose one of {allowed}")


@dataclass
class ValidationConfig:
    clip_tolerance: float = 0.01  # normalised units a box may overhang the frame and still be clipped
    min_box_pixels: float = 2.0  # a box narrower or lower than this (in source pixels) is a tiny_box
    near_duplicate_box_iou: float = 0.8
    near_duplicate_image_distance: int = 4  # perceptual-hash Hamming distance (of 64 bits)
    exif_labels_frame: str = "displayed"  # frame of labels that state no image size (YOLO txt)
    missing_label_is_background: bool = False
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        key = "data.validation"
        _require(0 <= self.clip_tolerance < 0.5, f"{key}.clip_tolerance", self.clip_tolerance, "0 to 0.5")
        _require(self.min_box_pixels >= 0, f"{key}.min_box_pixels", self.min_box_pixels, "use >= 0")
        iou = self.near_duplicate_box_iou
        _require(0 < iou <= 1, f"{key}.near_duplicate_box_iou", iou, "an IoU in (0, 1]")
        distance = self.near_duplicate_image_distance
        _require(0 <= distance <= 16, f"{key}.near_duplicate_image_distance", distance, "0 to 16 bits")
        frame = self.exif_labels_frame
        _require(frame in LABEL_FRAMES, f"{key}.exif_labels_frame", frame, f"one of {LABEL_FRAMES}")


@dataclass
class SplitConfig:
    mode: str = "auto"  # auto: keep the source's splits if it has train and val, else split by group
    group_pattern: str | None = None  # regex on the file stem; its first group is the group key
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        _require(self.mode in SPLIT_MODES, "data.split.mode", self.mode, f"one of {SPLIT_MODES}")
        ratios = (self.train, self.val, self.test)
        ok = self.train > 0 and self.val > 0 and self.test >= 0 and abs(sum(ratios) - 1) < 1e-6
        _require(ok, "data.split", ratios, "train and val > 0, test >= 0, summing to 1")
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                _require(False, "data.split.group_pattern", self.group_pattern, f"a valid regex ({exc})")


@dataclass
class NormalizeConfig:
    """How frames deeper than 8 bit (radiometric 16-bit counts) become 8-bit images."""

    method: str = "percentile"  # percentile: stretch [low, high] percentiles; fixed: [fixed_low, fixed_high]
    scope: str = "frame"  # percentile over each frame (AGC-like) or over the whole dataset (keeps contrast)
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    fixed_low: float = 0.0  # raw counts mapped to 0
    fixed_high: float = 65535.0  # raw counts mapped to 255

    def __post_init__(self) -> None:
        key = "data.normalize"
        _require(self.method in NORMALIZE_METHODS, f"{key}.method", self.method, f"{NORMALIZE_METHODS}")
        _require(self.scope in NORMALIZE_SCOPES, f"{key}.scope", self.scope, f"one of {NORMALIZE_SCOPES}")
        low, high = self.low_percentile, self.high_percentile
        _require(0 <= low < high <= 100, f"{key}.low/high_percentile", (low, high), "0 <= low < high <= 100")
        fixed = (self.fixed_low, self.fixed_high)
        _require(self.fixed_low < self.fixed_high, f"{key}.fixed_low/fixed_high", fixed, "low below high")


@dataclass
class CocoKeysConfig:
    """The JSON key names; some exporters write e.g. `annotation` or `filename` instead."""

    images: str = "images"
    annotations: str = "annotations"
    categories: str = "categories"
    id: str = "id"
    file_name: str = "file_name"
    width: str = "width"
    height: str = "height"
    image_id: str = "image_id"
    category_id: str = "category_id"
    bbox: str = "bbox"
    name: str = "name"
    iscrowd: str = "iscrowd"


@dataclass
class CocoConfig:
    files: dict[str, str] = field(default_factory=dict)  # split -> JSON under data.path; {}: detect
    image_dir: str | None = None  # where file_name is resolved (under data.path); null: search
    category_id_base: int = 1  # id of the first category when the JSON's categories carry no ids
    keys: CocoKeysConfig = field(default_factory=CocoKeysConfig)

    def __post_init__(self) -> None:
        base = self.category_id_base
        _require(base in (0, 1), "data.coco.category_id_base", base, "0 or 1")
        for split in self.files:
            _require(split in SPLITS, f"data.coco.files.{split}", split, f"splits are {SPLITS}")


@dataclass
class VocConfig:
    annotations: str = "Annotations"
    images: str = "JPEGImages"
    image_sets: str = "ImageSets/Main"
    one_based: bool = True  # VOC pixel indices start at 1 (Ultralytics' VOC conversion subtracts 1)


@dataclass
class DataConfig:
    name: str = MISSING
    format: str = MISSING
    path: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    class_map: dict[str, str | None] = field(default_factory=dict)  # source name -> target, null drops
    link: str = "hardlink"  # how unconverted images reach the output; falls back hardlink->symlink->copy
    split: SplitConfig = field(default_factory=SplitConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    coco: CocoConfig = field(default_factory=CocoConfig)
    voc: VocConfig = field(default_factory=VocConfig)
    allow_outside_paths: bool = False  # image paths/symlinks that leave data.path are errors unless true

    def __post_init__(self) -> None:
        _require(self.format in DATA_FORMATS, "data.format", self.format, f"one of {DATA_FORMATS}")
        if self.format != "synthetic":
            _require(bool(self.path), "data.path", self.path, "set data.path=/path/to/dataset")
        _require(self.link in LINK_MODES, "data.link", self.link, f"one of {LINK_MODES}")


@dataclass
class PathsConfig:
    prepared: str = "data/prepared"
    analysis: str = "reports/analyze"
    train: str = "runs/train"
    train_report: str = "reports/train"
    evaluation: str = "reports/evaluate"
    export: str = "models/export"
    benchmark: str = "reports/benchmark"


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
class TrainConfig:
    """Ultralytics training arguments; `auto` ones are resolved by `pipeline.core.rules`."""

    epochs: Any = AUTO
    patience: Any = AUTO
    time_hours: Any = AUTO
    imgsz: Any = AUTO
    batch: Any = AUTO
    workers: Any = AUTO
    lr0: Any = AUTO
    lrf: float = 0.01
    warmup_epochs: Any = AUTO
    optimizer: str = "AdamW"
    cos_lr: bool = True
    amp: Any = AUTO
    cache: Any = AUTO
    hsv_h: Any = AUTO
    hsv_s: Any = AUTO
    hsv_v: Any = AUTO
    degrees: Any = AUTO
    translate: Any = AUTO
    scale: Any = AUTO
    mosaic: Any = AUTO
    mixup: Any = AUTO
    copy_paste: Any = AUTO
    fliplr: float = 0.5
    close_mosaic: Any = AUTO
    allow_unsafe_augmentation: bool = False
    strict_guardrails: bool = False

    def __post_init__(self) -> None:
        for key in ("epochs", "patience", "batch", "workers", "close_mosaic"):
            _require_auto_or_number(f"train.{key}", getattr(self, key))
        for key in ("lr0", "warmup_epochs", *AUGMENTATION_KEYS):
            _require_auto_or_number(f"train.{key}", getattr(self, key))
        _require_auto_or_number("train.time_hours", self.time_hours, nullable=True)
        if self.imgsz != AUTO:
            ok = isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0
            _require(ok, "train.imgsz", self.imgsz, "use 'auto' or a multiple of 32 (the max stride)")
        for key in ("amp", "cache"):
            value = getattr(self, key)
            _require(value == AUTO or isinstance(value, bool), f"train.{key}", value, "auto/true/false")


@dataclass
class TrackConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "yolo-pipeline"
    register_model: str = "yolo-detector"


@dataclass
class EvaluateConfig:
    split: str = "test"
    conf: float = 0.001
    iou: float = 0.7
    batch: int = 16
    target_precision: float | None = None
    localisation_ratio: float = 0.5  # warn when mAP50-95 < this x mAP50 (boxes found but fitted loosely)
    weak_class_ratio: float = 0.5  # warn for a class whose AP50-95 < this x the mean over classes
    swap_fraction: float = 0.1  # warn for two classes mistaken for each other in this share of their objects

    def __post_init__(self) -> None:
        _require(self.split in ("test", "val"), "evaluate.split", self.split, "use test or val")
        _require(0 <= self.conf < 1, "evaluate.conf", self.conf, "a confidence in [0, 1)")
        _require(0 < self.iou <= 1, "evaluate.iou", self.iou, "an IoU in (0, 1]")
        _require(self.batch >= 1, "evaluate.batch", self.batch, "a batch of at least 1")
        target = self.target_precision
        _require(target is None or 0 < target <= 1, "evaluate.target_precision", target, "null or (0, 1]")
        for key in ("localisation_ratio", "weak_class_ratio", "swap_fraction"):
            value = getattr(self, key)
            _require(0 <= value <= 1, f"evaluate.{key}", value, "a fraction in [0, 1]")


EXPORT_FORMATS = ("onnx", "torchscript", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")


@dataclass
class TensorRTConfig:
    """The on-device engine build (`python -m pipeline deploy`, deploy/dvc.yaml)."""

    precisions: list[str] = field(default_factory=lambda: ["fp16", "int8"])
    max_map_drop: dict[str, float] = field(
        default_factory=lambda: {"fp32": 0.005, "fp16": 0.01, "int8": 0.03}
    )
    calibration_images: int = 128
    calibration_batch: int = 8
    workspace_gb: float = 4.0

    def __post_init__(self) -> None:
        for precision in self.precisions:
            _require(precision in PRECISIONS, "export.tensorrt.precisions", precision, f"one of {PRECISIONS}")
            _require(
                precision in self.max_map_drop,
                "export.tensorrt.max_map_drop",
                self.max_map_drop,
                f"give a bound for {precision}",
            )
        _require(
            self.calibration_batch >= 1, "export.tensorrt.calibration_batch", self.calibration_batch, ">= 1"
        )
        _require(
            self.calibration_images >= self.calibration_batch,
            "export.tensorrt.calibration_images",
            self.calibration_images,
            "at least one calibration batch of images",
        )
        _require(self.workspace_gb > 0, "export.tensorrt.workspace_gb", self.workspace_gb, "a size in GB > 0")


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx", "torchscript", "openvino"])
    opset: int = 17
    dynamic: bool = False
    simplify: bool = True
    parity_images: int = 16
    max_abs_diff: float = 0.01
    max_map_drop: float = 0.005
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)

    def __post_init__(self) -> None:
        _require(len(self.formats) > 0, "export.formats", self.formats, f"list some of {EXPORT_FORMATS}")
        for fmt in self.formats:
            _require(fmt in EXPORT_FORMATS, "export.formats", fmt, f"choose from {EXPORT_FORMATS}")
        _require(len(set(self.formats)) == len(self.formats), "export.formats", self.formats, "no repeats")
        _require(self.opset >= 11, "export.opset", self.opset, "opset 11 or newer (YOLO heads need it)")
        _require(self.parity_images >= 1, "export.parity_images", self.parity_images, "at least 1 image")
        for key in ("max_abs_diff", "max_map_drop"):
            _require(getattr(self, key) >= 0, f"export.{key}", getattr(self, key), "a tolerance >= 0")


@dataclass
class BenchmarkConfig:
    warmup: int = 5
    runs: int = 30
    batch: int = 4
    threads: int = 2
    images: int = 16
    openvino_precisions: list[str] = field(default_factory=lambda: ["f32", "bf16"])

    def __post_init__(self) -> None:
        for key in ("runs", "batch", "threads", "images"):
            _require(getattr(self, key) >= 1, f"benchmark.{key}", getattr(self, key), "a count of at least 1")
        _require(self.warmup >= 0, "benchmark.warmup", self.warmup, "0 or more warm-up runs")
        for precision in self.openvino_precisions:
            _require(
                precision in OPENVINO_PRECISIONS,
                "benchmark.openvino_precisions",
                precision,
                f"one of {OPENVINO_PRECISIONS}",
            )


RETRAIN_METRICS = ("mAP50-95", "mAP50", "precision", "recall")


@dataclass
class RetrainConfig:
    """`python -m pipeline retrain`: when a challenger replaces the champion (pipeline/retrain.py)."""

    metric: str = "mAP50-95"  # compared on the current evaluation split
    min_improvement: float = 0.005  # the challenger must beat the champion's metric by at least this
    max_class_drop: float = 0.05  # and no class's AP50-95 may fall by more than this (absolute)
    targets: list[str] = field(default_factory=list)  # `dvc repro` targets; [] = all of dvc.yaml
    refresh_data: bool = True  # rerun prepare even when DVC sees no change (a data folder outside DVC)
    lock_file: str = ".dvc/tmp/retrain.lock"
    lock_wait: float | None = 0.0  # seconds a second invocation waits for the lock; null: forever
    records: str = "reports/retrain"  # decision records (JSON and Markdown)
    experiment: str = "yolo-pipeline-retrain"  # MLflow experiment of the decision records

    def __post_init__(self) -> None:
        _require(self.metric in RETRAIN_METRICS, "retrain.metric", self.metric, f"one of {RETRAIN_METRICS}")
        margin = self.min_improvement
        _require(0 < margin < 1, "retrain.min_improvement", margin, "in (0, 1): ties never win")
        drop = self.max_class_drop
        _require(0 <= drop <= 1, "retrain.max_class_drop", drop, "an AP difference in [0, 1]")
        wait = self.lock_wait
        _require(wait is None or wait >= 0, "retrain.lock_wait", wait, "seconds >= 0; null: forever")


@dataclass
class PipelineConfig:
    data: DataConfig = MISSING
    sensor: SensorConfig = MISSING
    model: ModelConfig = MISSING
    hardware: HardwareConfig = MISSING
    classes: ClassesConfig = MISSING
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)


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


def load_params(path: Path | str = "params.yaml") -> PipelineConfig:
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
