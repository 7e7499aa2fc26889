"""The `export:` and `benchmark:` sections: what export writes, how TensorRT builds on the device, and
how the benchmark measures (conf/config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config_checks import PRECISIONS, require

EXPORT_FORMATS = ("onnx", "torchscript", "openvino", "openvino-int8")
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
INT8_PRESETS = ("mixed", "performance")  # NNCF: asymmetric activations (mixed) or all symmetric


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
            require(precision in PRECISIONS, "export.tensorrt.precisions", precision, f"one of {PRECISIONS}")
            require(
                precision in self.max_map_drop,
                "export.tensorrt.max_map_drop",
                self.max_map_drop,
                f"give a bound for {precision}",
            )
        require(
            self.calibration_batch >= 1, "export.tensorrt.calibration_batch", self.calibration_batch, ">= 1"
        )
        require(
            self.calibration_images >= self.calibration_batch,
            "export.tensorrt.calibration_images",
            self.calibration_images,
            "at least one calibration batch of images",
        )
        require(self.workspace_gb > 0, "export.tensorrt.workspace_gb", self.workspace_gb, "a size in GB > 0")


@dataclass
class Int8Config:
    """openvino-int8: NNCF post-training quantization, optionally with accuracy control on val mAP."""

    preset: str
    accuracy_control: bool  # nncf.quantize_with_accuracy_control, max_drop = export.max_map_drop_int8
    validation_images: int  # val images its validation function scores (mAP50-95)
    max_reverted_layers: int  # NNCF's max_num_iterations: layers it may revert to float, one per step

    def __post_init__(self) -> None:
        require(self.preset in INT8_PRESETS, "export.int8.preset", self.preset, f"one of {INT8_PRESETS}")
        require(self.validation_images >= 1, "export.int8.validation_images", self.validation_images, ">= 1")
        require(
            self.max_reverted_layers >= 0,
            "export.int8.max_reverted_layers",
            self.max_reverted_layers,
            "0 or more layers",
        )


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
    int8: Int8Config
    tensorrt: TensorRTConfig

    def __post_init__(self) -> None:
        require(len(self.formats) > 0, "export.formats", self.formats, f"list some of {EXPORT_FORMATS}")
        for fmt in self.formats:
            require(fmt in EXPORT_FORMATS, "export.formats", fmt, f"choose from {EXPORT_FORMATS}")
        require(len(set(self.formats)) == len(self.formats), "export.formats", self.formats, "no repeats")
        require(self.opset >= 11, "export.opset", self.opset, "opset 11 or newer (YOLO heads need it)")
        require(self.parity_images >= 1, "export.parity_images", self.parity_images, "at least 1 image")
        for key in ("max_abs_diff", "max_map_drop", "max_map_drop_int8"):
            require(getattr(self, key) >= 0, f"export.{key}", getattr(self, key), "a tolerance >= 0")


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
            require(getattr(self, key) >= 1, f"benchmark.{key}", getattr(self, key), "a count of at least 1")
        require(self.warmup >= 0, "benchmark.warmup", self.warmup, "0 or more warm-up runs")
        for precision in self.openvino_precisions:
            require(
                precision in OPENVINO_PRECISIONS,
                "benchmark.openvino_precisions",
                precision,
                f"one of {OPENVINO_PRECISIONS}",
            )
