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
        _require(self.name in SENSORS, "sensor.name", self.name, f"choose one of {SENSORS}")
        _require(self.channels in (1, 3), "sensor.channels", self.channels, "use 1 or 3")


@dataclass
class ModelConfig:
    name: str
    architecture: str  # Ultralytics model YAML, built with random weights
    family: str
    scale: str  # where the model sits on the guide's n..x ladder
    p2_head: bool

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
    names: list[str]

    def __post_init__(self) -> None:
        _require(len(self.names) > 0, "classes.names", self.names, "list at least one class")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        _require(not duplicates, "classes.names", duplicates, "class names must be unique")


@dataclass
class SyntheticConfig:
    sensor: str
    images: int
    size: int
    seed: int

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

    unreadable_image: str
    exif_orientation: str
    size_mismatch: str
    bad_line: str
    class_out_of_range: str
    unknown_class: str
    out_of_bounds: str
    slightly_out_of_bounds: str
    degenerate_box: str
    tiny_box: str
    duplicate_box: str
    near_duplicate_box: str
    missing_label: str
    background_image: str
    orphan_label: str
    unlisted_image: str
    no_group: str
    duplicate_image: str
    near_duplicate_image: str
    split_leakage: str

    def __post_init__(self) -> None:
        for kind, allowed in FINDING_ACTIONS.items():
            value = getattr(self, kind)
            _require(value in allowed, f"data.validation.policy.{kind}", value, f"choose one of {allowed}")


@dataclass
class ValidationConfig:
    clip_tolerance: float  # normalised units a box may overhang the frame and still be clipped
    min_box_pixels: float  # a box narrower or lower than this (in source pixels) is a tiny_box
    near_duplicate_box_iou: float
    near_duplicate_image_distance: int  # perceptual-hash Hamming distance (of 64 bits)
    exif_labels_frame: str  # frame of labels that state no image size (YOLO txt)
    missing_label_is_background: bool
    policy: PolicyConfig

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
    mode: str  # auto: keep the source's splits if it has train and val, else split by group
    group_pattern: str | None  # regex on the file stem; its first group is the group key
    train: float
    val: float
    test: float
    move_source_images: bool  # split_leakage=fix may move images between the source's own splits

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

    method: str  # percentile: stretch [low, high] percentiles; fixed: [fixed_low, fixed_high]
    scope: str  # percentile over each frame (AGC-like) or over the whole dataset (keeps contrast)
    low_percentile: float
    high_percentile: float
    fixed_low: float  # raw counts mapped to 0
    fixed_high: float  # raw counts mapped to 255

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

    images: str
    annotations: str
    categories: str
    id: str
    file_name: str
    width: str
    height: str
    image_id: str
    category_id: str
    bbox: str
    name: str
    iscrowd: str


@dataclass
class CocoConfig:
    files: dict[str, str]  # split -> JSON under data.path; {}: detect
    image_dir: str | None  # where file_name is resolved (under data.path); null: search
    category_id_base: int  # id of the first category when the JSON's categories carry no ids
    keys: CocoKeysConfig

    def __post_init__(self) -> None:
        base = self.category_id_base
        _require(base in (0, 1), "data.coco.category_id_base", base, "0 or 1")
        for split in self.files:
            _require(split in SPLITS, f"data.coco.files.{split}", split, f"splits are {SPLITS}")


@dataclass
class VocConfig:
    annotations: str
    images: str
    image_sets: str
    one_based: bool  # VOC pixel indices start at 1 (Ultralytics' VOC conversion subtracts 1)


FORMAT_SECTIONS = {"synthetic": "synthetic", "coco": "coco", "voc": "voc"}


@dataclass
class DataConfig:
    name: str
    format: str
    path: str | None
    class_map: dict[str, str | None]  # source name -> target, null drops
    link: str  # how unconverted images reach the output; falls back hardlink->symlink->copy
    split: SplitConfig
    normalize: NormalizeConfig
    validation: ValidationConfig
    allow_outside_paths: bool  # data.yaml splits, image lists and symlinks may leave data.path
    corrections: str | None  # audit's corrections.json, applied to the labels at prepare
    # The reader's own section, present for its format only (None is "absent", not a default: the
    # values live in conf/data/<entry>.yaml).
    synthetic: SyntheticConfig | None = None
    coco: CocoConfig | None = None
    voc: VocConfig | None = None

    def __post_init__(self) -> None:
        _require(self.format in DATA_FORMATS, "data.format", self.format, f"one of {DATA_FORMATS}")
        if self.format != "synthetic":
            _require(bool(self.path), "data.path", self.path, "set data.path=/path/to/dataset")
        _require(self.link in LINK_MODES, "data.link", self.link, f"one of {LINK_MODES}")
        section = FORMAT_SECTIONS.get(self.format)
        if section is not None:
            _require(
                getattr(self, section) is not None,
                f"data.{section}",
                None,
                f"data.format={self.format} reads the data.{section} section: copy it from conf/data/",
            )


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
            _require_auto_or_number(f"train.{key}", getattr(self, key))
        for key in ("lr0", "warmup_epochs", "cls_pw", *AUGMENTATION_KEYS):
            _require_auto_or_number(f"train.{key}", getattr(self, key))
        _require_auto_or_number("train.time_hours", self.time_hours, nullable=True)
        ok = self.cls_pw == AUTO or 0 <= self.cls_pw <= 1
        _require(ok, "train.cls_pw", self.cls_pw, "use 'auto' or a power in [0, 1] (Ultralytics asserts it)")
        if self.imgsz != AUTO:
            ok = isinstance(self.imgsz, int) and self.imgsz >= 32 and self.imgsz % 32 == 0
            _require(ok, "train.imgsz", self.imgsz, "use 'auto' or a multiple of 32 (the max stride)")
        for key in ("amp", "cache"):
            value = getattr(self, key)
            _require(value == AUTO or isinstance(value, bool), f"train.{key}", value, "auto/true/false")


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
        _require(self.split in ("test", "val"), "evaluate.split", self.split, "use test or val")
        _require(0 <= self.conf < 1, "evaluate.conf", self.conf, "a confidence in [0, 1)")
        _require(0 < self.iou <= 1, "evaluate.iou", self.iou, "an IoU in (0, 1]")
        _require(self.batch >= 1, "evaluate.batch", self.batch, "a batch of at least 1")
        target = self.target_precision
        _require(target is None or 0 < target <= 1, "evaluate.target_precision", target, "null or (0, 1]")
        _require(
            self.slice_min_instances >= 0, "evaluate.slice_min_instances", self.slice_min_instances, ">= 0"
        )
        if self.slices is not None:
            try:
                _require(
                    bool(re.compile(self.slices).groupindex), "evaluate.slices", self.slices, "named groups"
                )
            except re.error as exc:
                _require(False, "evaluate.slices", self.slices, f"a valid regex ({exc})")
        for key in ("localisation_ratio", "weak_class_ratio", "swap_fraction", "slice_ratio"):
            value = getattr(self, key)
            _require(0 <= value <= 1, f"evaluate.{key}", value, "a fraction in [0, 1]")


EXPORT_FORMATS = ("onnx", "torchscript", "openvino", "openvino-int8")
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")


@dataclass
class TensorRTConfig:
    """The on-device engine build (`python -m pipeline deploy`, deploy/dvc.yaml)."""

    precisions: list[str]
    max_map_drop: dict[str, float]
    calibration_images: int
    calibration_batch: int
    workspace_gb: float

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
    formats: list[str]
    opset: int
    dynamic: bool
    simplify: bool
    parity_images: int
    max_abs_diff: float
    max_map_drop: float
    max_map_drop_int8: float  # openvino-int8: raw outputs differ by design, so only mAP is bounded
    tensorrt: TensorRTConfig

    def __post_init__(self) -> None:
        _require(len(self.formats) > 0, "export.formats", self.formats, f"list some of {EXPORT_FORMATS}")
        for fmt in self.formats:
            _require(fmt in EXPORT_FORMATS, "export.formats", fmt, f"choose from {EXPORT_FORMATS}")
        _require(len(set(self.formats)) == len(self.formats), "export.formats", self.formats, "no repeats")
        _require(self.opset >= 11, "export.opset", self.opset, "opset 11 or newer (YOLO heads need it)")
        _require(self.parity_images >= 1, "export.parity_images", self.parity_images, "at least 1 image")
        for key in ("max_abs_diff", "max_map_drop", "max_map_drop_int8"):
            _require(getattr(self, key) >= 0, f"export.{key}", getattr(self, key), "a tolerance >= 0")


@dataclass
class BenchmarkConfig:
    warmup: int
    runs: int
    batch: int
    threads: int
    images: int
    openvino_precisions: list[str]

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

    metric: str  # compared on the current evaluation split
    min_improvement: float  # the challenger must beat the champion's metric by at least this
    max_class_drop: float  # and no class's AP50-95 may fall by more than this (absolute)
    targets: list[str]  # `dvc repro` targets; [] = all of dvc.yaml
    refresh_data: bool  # rerun prepare even when DVC sees no change (a data folder outside DVC)
    lock_file: str
    lock_wait: float | None  # seconds a second invocation waits for the lock; null: forever
    records: str  # decision records (JSON and Markdown)
    experiment: str  # MLflow experiment of the decision records

    def __post_init__(self) -> None:
        _require(self.metric in RETRAIN_METRICS, "retrain.metric", self.metric, f"one of {RETRAIN_METRICS}")
        margin = self.min_improvement
        _require(0 < margin < 1, "retrain.min_improvement", margin, "in (0, 1): ties never win")
        drop = self.max_class_drop
        _require(0 <= drop <= 1, "retrain.max_class_drop", drop, "an AP difference in [0, 1]")
        wait = self.lock_wait
        _require(wait is None or wait >= 0, "retrain.lock_wait", wait, "seconds >= 0; null: forever")


@dataclass
class SelectConfig:
    """`python -m pipeline select`: which unlabelled frames to label next (pipeline/ops/select.py)."""

    conf: float  # boxes kept for the pre-annotations and the flip-agreement check
    image_prefix: str  # prepended to each image's absolute path in Label Studio's data.image

    def __post_init__(self) -> None:
        _require(0 < self.conf < 1, "select.conf", self.conf, "a confidence in (0, 1)")


@dataclass
class ScalingConfig:
    """`python -m pipeline scaling`: the data-scaling forecast (pipeline/ops/scaling.py)."""

    fractions: list[float]
    target_map: float  # mAP50-95 whose image count is forecast
    seed: int  # which nested subsets are drawn

    def __post_init__(self) -> None:
        for f in self.fractions:
            _require(0 < f <= 1, "scaling.fractions", self.fractions, "fractions in (0, 1]")
        _require(0 < self.target_map < 1, "scaling.target_map", self.target_map, "an mAP in (0, 1)")


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
