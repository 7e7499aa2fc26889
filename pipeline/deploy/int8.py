"""OpenVINO INT8 by NNCF post-training quantization, for the export stage's `openvino-int8` format.

Calibrated on train images spread over the split (the selection the TensorRT calibrator uses),
preprocessed exactly as at inference. The detection head (its Sigmoid and the box decoding after
it) stays in floating point, as Ultralytics' own INT8 export keeps it: quantizing box coordinates
costs more accuracy than it saves time. The names of those operations go into the export metadata.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.model.images import load_image, preprocess
from pipeline.model.info import ModelInfo
from pipeline.model.scoring import split_images
from pipeline.model.tensorrt import pick_calibration_images

INT8_FOLDER_SUFFIX = "_int8_openvino_model"


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


def calibration_images(cfg: PipelineConfig) -> tuple[Path, ...]:
    return pick_calibration_images(
        split_images(Path(cfg.paths.prepared), "train"), cfg.export.tensorrt.calibration_images
    )


def quantize(fp32_folder: Path, info: ModelInfo, images: tuple[Path, ...]) -> tuple[Path, dict[str, Any]]:
    """The INT8 copy of an FP32 OpenVINO export folder, and what the metadata records about it."""
    import nncf
    import openvino as ov

    xml = next(fp32_folder.glob("*.xml"))
    model = ov.Core().read_model(str(xml))
    kept = head_scope(model)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(list(calibration_batches(images, info))),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=kept) if kept else None,
    )
    target = fp32_folder.with_name(fp32_folder.name.replace("_openvino_model", INT8_FOLDER_SUFFIX))
    shutil.copytree(fp32_folder, target)  # metadata.yaml and friends; the model files are replaced
    ov.save_model(quantized, str(target / xml.name), compress_to_fp16=False)
    return target, {"calibration_images": len(images), "higher_precision_ops": kept}
