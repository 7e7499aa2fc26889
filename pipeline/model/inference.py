"""Run a detector of any format on a batch of images and decode its output to boxes.

PyTorch, TorchScript, ONNX Runtime, OpenVINO and TensorRT runners share one preprocessing
(Ultralytics' letterbox) and one decoding (Ultralytics' NMS). Export parity, deploy parity and the
benchmark all go through this module, so a difference they report is a difference between the
formats, never between copies of the pre- and post-processing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.deploy_config import OPENVINO_PRECISIONS
from pipeline.core.errors import ConfigError
from pipeline.core.yolo import import_ultralytics
from pipeline.model.images import Batch, preprocess
from pipeline.model.info import ModelInfo
from pipeline.model.tensorrt import TensorRTRunner

FORMAT_SUFFIXES = {
    "pytorch": ".pt",
    "torchscript": ".torchscript",
    "onnx": ".onnx",
    "openvino-int8": "_int8_openvino_model",  # before openvino: format_of takes the first suffix that fits
    "openvino": "_openvino_model",
    "tensorrt": ".engine",
}
PREDICT_CHUNK = 8  # images per call for runners that take any batch


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (N, 4) x1 y1 x2 y2 in the original image's pixels
    scores: np.ndarray  # (N,)
    classes: np.ndarray  # (N,) int


class Runner(Protocol):
    name: str  # format, plus the runtime precision when it is not fp32 (e.g. openvino-bf16)
    path: Path
    batch: int | None  # the model's fixed input batch; None when any batch runs
    input_shape: tuple[int | None, ...] | None  # (B, C, H, W), None for unknown or dynamic parts

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for a preprocessed batch: (B, 4 + C, anchors), or (B, max_det, 6) end to end."""


# ---- images in, boxes out --------------------------------------------------------------------------


def decode(
    raw: np.ndarray, batch: Batch, info: ModelInfo, conf: float, iou: float, multi_label: bool
) -> list[Detections]:
    """Ultralytics' NMS on the raw output, boxes scaled back from the letterbox to each original image."""
    import torch

    import_ultralytics()
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    kept = non_max_suppression(
        torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)),
        conf,
        iou,
        multi_label=multi_label,
        max_det=300,
        end2end=info.end2end,
    )
    square = (info.imgsz, info.imgsz)
    return [
        Detections(
            scale_boxes(square, k[:, :4].clone(), shape).numpy(), k[:, 4].numpy(), k[:, 5].numpy().astype(int)
        )
        for k, shape in zip(kept, batch.shapes, strict=True)
    ]


def chunks(runner: Runner, count: int) -> list[slice]:
    """Slices of at most the runner's batch; a fixed-batch model gets exactly its batch (the last padded)."""
    size = runner.batch or PREDICT_CHUNK
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def run_batch(runner: Runner, batch: Batch) -> np.ndarray:
    """Infer, padding a short last batch by repetition when the model's batch is fixed."""
    array = batch.array
    missing = (runner.batch or len(array)) - len(array)
    if missing > 0:
        array = np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
    return runner.infer(array)[: len(batch.array)]


def predict(
    runner: Runner, images: Sequence[np.ndarray], info: ModelInfo, conf: float, iou: float, multi_label: bool
) -> list[Detections]:
    detections: list[Detections] = []
    for part in chunks(runner, len(images)):
        batch = preprocess(images[part], info.imgsz)
        detections += decode(run_batch(runner, batch), batch, info, conf, iou, multi_label)
    return detections


# ---- runners ---------------------------------------------------------------------------------------


def format_of(path: Path) -> str:
    name = Path(path).name
    for fmt, suffix in FORMAT_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ConfigError(f"{path}: unknown model format (expected one of {sorted(FORMAT_SUFFIXES.values())})")


def open_runner(path: Path, threads: int, precision: str = "f32") -> Runner:
    """A ready session for the model at `path`, using `threads` CPU threads where the runtime has any."""
    fmt = format_of(path)
    if fmt in ("openvino", "openvino-int8"):
        return OpenVinoRunner(Path(path), threads, precision)
    if fmt == "tensorrt":
        return TensorRTRunner(Path(path))
    return {"pytorch": TorchRunner, "torchscript": TorchScriptRunner, "onnx": OnnxRunner}[fmt](
        Path(path), threads
    )


def static_dims(dims: Sequence[object]) -> tuple[int | None, ...]:
    """A model input's shape: ints where fixed, None where symbolic or dynamic."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


class TorchRunner:
    """PyTorch eager, fused as Ultralytics runs it for prediction."""

    def __init__(self, path: Path, threads: int):
        import torch

        import_ultralytics()
        from ultralytics.nn.tasks import load_checkpoint

        torch.set_num_threads(threads)
        self.name, self.path, self.batch, self.input_shape = "pytorch", path, None, None
        self.model = load_checkpoint(str(path))[0].fuse().eval()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.model(torch.from_numpy(batch))
        return (output[0] if isinstance(output, (tuple, list)) else output).numpy()


class TorchScriptRunner(TorchRunner):
    """A traced graph: its input shape is the one Ultralytics recorded in the file's metadata."""

    def __init__(self, path: Path, threads: int):
        import torch

        torch.set_num_threads(threads)
        extra = {"config.txt": ""}
        self.model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        meta = json.loads(extra["config.txt"] or "{}")
        imgsz = meta.get("imgsz") or [None, None]
        dynamic = meta.get("args", {}).get("dynamic", False)
        shape = (meta.get("batch"), meta.get("channels"), *imgsz)
        self.name, self.path, self.batch = "torchscript", path, None
        self.input_shape = None if dynamic else static_dims(shape)


class OnnxRunner:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: spinning would take the CPU from whatever runs next
        # (the next format timed in turn, or another process on a shared machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.name, self.path = "onnx", path
        self.input_shape = static_dims(self.session.get_inputs()[0].shape)
        self.batch = self.input_shape[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]


class OpenVinoRunner:
    """OpenVINO on CPU at an explicit precision: it would pick bf16 by itself on CPUs that have it."""

    def __init__(self, path: Path, threads: int, precision: str = "f32"):
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"OpenVINO precision {precision!r}: use one of {OPENVINO_PRECISIONS}")
        core = ov.Core()
        model = core.read_model(str(next(Path(path).glob("*.xml"))))
        settings = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        }
        self.compiled = core.compile_model(model, "CPU", settings)
        self.request = self.compiled.create_infer_request()
        dims = model.inputs[0].partial_shape
        fmt = format_of(path)
        self.name, self.path = fmt if precision == "f32" else f"{fmt}-{precision}", path
        self.input_shape = static_dims([d.get_length() if d.is_static else None for d in dims])
        self.batch = self.input_shape[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return self.request.get_output_tensor(0).data.copy()


def cpu_supports(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin computes natively in `precision` (bf16 needs AVX512_BF16 or AMX)."""
    import openvino as ov

    capability = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}[precision]
    return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
