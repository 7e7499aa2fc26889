"""OpenVINO INT8 by NNCF post-training quantization, for the export stage's `openvino-int8` format.

Calibrated on train images spread over the split (the selection the TensorRT calibrator uses),
preprocessed exactly as at inference. The detection head's decoding (its Sigmoid and the box
arithmetic after it, the DFL) stays in floating point, as Ultralytics' own INT8 export keeps it:
quantizing box coordinates costs more accuracy than it saves time. The head's convolutions are INT8.

With `export.int8.accuracy_control`, `nncf.quantize_with_accuracy_control` quantizes the same way,
then scores the INT8 model's mAP50-95 (the project's scoring, pipeline.model.scoring) on a few
validation images against the float model's and reverts the layers that cost the most accuracy to
float, one per iteration, until the drop is within `export.max_map_drop_int8` or
`export.int8.max_reverted_layers` is reached. The metadata records, per convolution, whether it
ended up INT8 (read off the quantized graph: a FakeQuantize on its input), which ones stayed in
float, and the accuracy before and after.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.deploy_config import Int8Config
from pipeline.core.layout import label_path
from pipeline.model.images import load_image, preprocess
from pipeline.model.inference import predict, static_dims
from pipeline.model.info import ModelInfo
from pipeline.model.scoring import (
    MAP_CONF,
    MAP_IOU,
    Sample,
    coco_ground_truth,
    coco_predictions,
    coco_summary,
    read_labels,
    split_images,
)
from pipeline.model.tensorrt import pick_calibration_images

INT8_FOLDER_SUFFIX = "_int8_openvino_model"
LAYER_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")  # what INT8 speeds up
METRIC = "mAP50-95"
DEQUANTIZE_CHAIN = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")


@dataclass(frozen=True)
class AccuracyControl:
    """What `nncf.quantize_with_accuracy_control` validates on, and how far it may go."""

    samples: tuple[Sample, ...]
    images: tuple[np.ndarray, ...]
    max_drop: float  # absolute mAP50-95
    max_reverted_layers: int
    overlaps_parity: bool  # the val split was too small to keep these apart from the parity images


def calibration_batches(images: tuple[Path, ...], info: ModelInfo) -> Iterator[np.ndarray]:
    for image in images:
        yield preprocess([load_image(image, info.channels)], info.imgsz).array


def head_scope(model: Any) -> list[str]:
    """Operations of the detection head kept in floating point: every Sigmoid and what follows the last."""
    operations = model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in operations if op.get_type_name() == "Sigmoid"]
    if not sigmoids:
        return []
    head = sigmoids[-1].split("/", 1)[0]
    return [
        op.get_friendly_name()
        for op in operations
        if op.get_type_name() == "Sigmoid" or op.get_friendly_name().startswith((f"{head}/", f"{head}.dfl"))
    ]


def quantized_input(op: Any, index: int) -> bool:
    """Whether input `index` of `op` is INT8: a FakeQuantize, or an 8-bit constant behind its
    dequantization (Convert, Subtract, Multiply; how NNCF stores quantized weights), feeds it."""
    node = op.input_value(index).get_node()
    for _ in range(5):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8")
        if kind not in DEQUANTIZE_CHAIN:
            return False
        node = node.input_value(0).get_node()
    return False


def layer_precisions(model: Any) -> dict[str, str]:
    """Each convolution or MatMul of an OpenVINO model: "int8" where its weights (or, for a MatMul of
    two activations, either input) are quantized, else "float"."""
    precisions = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in LAYER_TYPES:
            inputs = (0, 1) if op.get_type_name() == "MatMul" else (1,)
            quantized = any(quantized_input(op, index) for index in inputs)
            precisions[op.get_friendly_name()] = "int8" if quantized else "float"
    return precisions


def calibration_images(cfg: PipelineConfig) -> tuple[Path, ...]:
    return pick_calibration_images(
        split_images(Path(cfg.paths.prepared), "train"), cfg.export.tensorrt.calibration_images
    )


def accuracy_control(cfg: PipelineConfig, channels: int) -> AccuracyControl | None:
    """The validation set for accuracy control: val images after the parity subset where the split has
    enough, so the parity gate checks on images accuracy control did not choose layers on."""
    settings = cfg.export.int8
    if not settings.accuracy_control:
        return None
    val = split_images(Path(cfg.paths.prepared), "val")
    rest = val[cfg.export.parity_images :]
    overlaps = len(rest) < settings.validation_images
    picked = pick_calibration_images(val if overlaps else rest, settings.validation_images)
    samples = tuple(Sample(image, read_labels(label_path(image))) for image in picked)
    images = tuple(load_image(image, channels) for image in picked)
    return AccuracyControl(
        samples, images, cfg.export.max_map_drop_int8, settings.max_reverted_layers, overlaps
    )


# ---- the validation function NNCF calls ------------------------------------------------------------


class CompiledRunner:
    """An OpenVINO CompiledModel (what NNCF hands the validation function) as a pipeline Runner."""

    def __init__(self, compiled: Any):
        self.compiled, self.name, self.path = compiled, "openvino-int8-candidate", Path("<in memory>")
        dims = compiled.input(0).get_partial_shape()
        self.input_shape = static_dims([d.get_length() if d.is_static else None for d in dims])
        self.batch = self.input_shape[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(batch)[self.compiled.output(0)])


def scored(samples: Sequence[Sample], found: Sequence[Any], classes: int) -> float:
    predictions = coco_predictions(found)
    if not predictions:
        return 0.0
    return coco_summary(coco_ground_truth(samples, classes), predictions).map50_95


def validation_function(info: ModelInfo) -> Callable[[Any, Iterable[Any]], tuple[float, list[float]]]:
    """mAP50-95 of a compiled model on (sample, image) items under the validation protocol, and each
    item's own mAP50-95 (NNCF ranks layers by how much each item's value drops)."""

    def validate(compiled: Any, items: Iterable[tuple[Sample, np.ndarray]]) -> tuple[float, list[float]]:
        samples, images = zip(*items, strict=True)
        found = predict(CompiledRunner(compiled), images, info, MAP_CONF, MAP_IOU, multi_label=True)
        per_item = [scored([s], [d], len(info.names)) for s, d in zip(samples, found, strict=True)]
        return scored(samples, found, len(info.names)), per_item

    return validate


# ---- quantization --------------------------------------------------------------------------------


def quantize_controlled(
    model: Any, calibration: Any, control: AccuracyControl, info: ModelInfo, common: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    items = list(zip(control.samples, control.images, strict=True))
    validate = validation_function(info)
    before = validate(ov.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), items)[0]
    quantized = nncf.quantize_with_accuracy_control(
        model,
        calibration,
        nncf.Dataset(items),
        validate,
        max_drop=control.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=control.max_reverted_layers
        ),
        **common,
    )
    after = validate(ov.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), items)[0]
    return quantized, {
        "metric": METRIC,
        "validation_images": len(items),
        "overlaps_parity_images": control.overlaps_parity,
        "max_drop": control.max_drop,
        "max_reverted_layers": control.max_reverted_layers,
        "map_float": round(before, 6),
        "map_int8": round(after, 6),
        "drop": round(before - after, 6),
        "reached": before - after <= control.max_drop,
    }


def quantize(
    fp32_folder: Path,
    info: ModelInfo,
    images: tuple[Path, ...],
    settings: Int8Config,
    control: AccuracyControl | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The INT8 copy of an FP32 OpenVINO export folder, and what the metadata records about it."""
    import nncf
    import openvino as ov

    xml = next(fp32_folder.glob("*.xml"))
    model = ov.Core().read_model(str(xml))
    kept = head_scope(model)
    common = {
        "preset": nncf.QuantizationPreset(settings.preset),
        "subset_size": len(images),
        "ignored_scope": nncf.IgnoredScope(names=kept) if kept else None,
    }
    calibration = nncf.Dataset(list(calibration_batches(images, info)))
    start = time.perf_counter()
    if control is None:
        quantized, accuracy = nncf.quantize(model, calibration, **common), None
    else:
        quantized, accuracy = quantize_controlled(model, calibration, control, info, common)
    seconds = round(time.perf_counter() - start, 1)
    target = fp32_folder.with_name(fp32_folder.name.replace("_openvino_model", INT8_FOLDER_SUFFIX))
    shutil.copytree(fp32_folder, target)  # metadata.yaml and friends; the model files are replaced
    ov.save_model(quantized, str(target / xml.name), compress_to_fp16=False)
    layers = layer_precisions(quantized)
    float_layers = [name for name, precision in layers.items() if precision == "float"]
    if accuracy is not None:  # what accuracy control turned back to float, beyond the fixed head scope
        accuracy["reverted_layers"] = [name for name in float_layers if name not in kept]
    return target, {
        "method": "nncf.quantize_with_accuracy_control" if control else "nncf.quantize",
        "preset": settings.preset,
        "calibration_images": len(images),
        "higher_precision_ops": kept,
        "int8_layers": sum(precision == "int8" for precision in layers.values()),
        "higher_precision_layers": float_layers,
        "accuracy_control": accuracy,
        "seconds": seconds,
    }
