"""Typed configuration: the schema every stage reads `params.yaml` through.

`params.yaml` is composed from `conf/` (see `pipeline.compose`). Loading merges it into these
dataclasses with OmegaConf, so an unknown key or a wrong type fails before any work starts,
and `__post_init__` checks the values no type can express (image size a multiple of 32, an
empty class list, `auto` where only `auto` or a number makes sense).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError

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


@dataclass
class DataConfig:
    name: str = MISSING
    format: str = MISSING
    path: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _require(self.format in DATA_FORMATS, "data.format", self.format, f"one of {DATA_FORMATS}")
        if self.format != "synthetic":
            _require(bool(self.path), "data.path", self.path, "set data.path=/path/to/dataset")


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
    """Ultralytics training arguments; `auto` ones are resolved by `pipeline.rules`."""

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
    target_precision: float | None = None

    def __post_init__(self) -> None:
        _require(self.split in ("test", "val"), "evaluate.split", self.split, "use test or val")


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx", "torchscript"])
    opset: int = 17
    dynamic: bool = False
    simplify: bool = True
    parity_images: int = 16
    max_abs_diff: float = 0.01
    max_map_drop: float = 0.005


@dataclass
class BenchmarkConfig:
    warmup: int = 5
    runs: int = 30
    batch: int = 4
    threads: int = 2
    images: int = 16


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
