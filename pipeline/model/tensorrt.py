"""TensorRT on the target device: engine build (FP16, INT8 by entropy calibration), metadata, loading.

Engines are specific to the GPU and the TensorRT version that built them, so each engine carries a
metadata JSON beside it and loading refuses one built elsewhere. INT8 calibration batches come
from the prepared dataset's train split; the calibration cache is keyed by the calibration images'
hash, the TensorRT version and the ONNX's hash, so a stale cache is never read. Written for
TensorRT 10 (builder precision flags, IInt8EntropyCalibrator2, the name-based tensor API with
execute_async_v3); TensorRT 11 removed implicit INT8 calibration. Device memory is handled through
torch's CUDA tensors, so no pycuda is needed. Nothing imports tensorrt at module level: the
calibration data, cache keying, metadata and refusal logic and the trtexec command are plain Python.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.artifacts import metadata_path
from pipeline.core.errors import MissingDependencyError, PipelineError
from pipeline.core.io import atomic_path, read_json, write_json
from pipeline.model.images import load_image, preprocess
from pipeline.model.info import ModelInfo, file_sha256

TRT_MAJOR = 10
INPUT, OUTPUT = "images", "output0"  # the tensor names of Ultralytics' ONNX export


class EngineMismatchError(PipelineError):
    """An engine built for another GPU or TensorRT version, or one without its metadata."""


# ---- what this machine has ---------------------------------------------------------------------------


def missing_requirements() -> list[str]:
    """What this machine lacks for TensorRT, in words; empty when the stage can run here."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the `tensorrt` Python module (TensorRT 10)")
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA device (torch.cuda.is_available() is False)")
    return missing


@dataclass(frozen=True)
class DeviceInfo:
    gpu_name: str
    compute_capability: str  # e.g. "8.7" for Jetson Orin
    tensorrt_version: str


def current_device() -> DeviceInfo:
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return DeviceInfo(torch.cuda.get_device_name(0), f"{major}.{minor}", trt.__version__)


def require_tensorrt_10(version: str) -> None:
    if int(version.split(".")[0]) != TRT_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {version} found; this stage uses TensorRT {TRT_MAJOR}.x (builder precision flags and "
            f"IInt8EntropyCalibrator2, which TensorRT 11 removed): install tensorrt=={TRT_MAJOR}.*"
        )


# ---- engine metadata and the refusal ----------------------------------------------------------------


@dataclass(frozen=True)
class EngineMetadata:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, ...]  # the largest input the engine takes (its profile's max when dynamic)
    dynamic_batch: bool
    names: tuple[str, ...]
    imgsz: int
    channels: int
    end2end: bool
    source_onnx: str
    source_onnx_sha256: str
    calibration: dict[str, Any] | None  # INT8: images, their hash, the cache key
    class_thresholds: dict[str, float] | None = None  # evaluate's per-class confidences, for the application

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape), "names": list(self.names)}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> EngineMetadata:
        return EngineMetadata(
            **{**raw, "input_shape": tuple(raw["input_shape"]), "names": tuple(raw["names"])}
        )

    def model_info(self) -> ModelInfo:
        return ModelInfo(self.names, self.imgsz, self.channels, self.end2end, self.source_onnx_sha256)


def write_metadata(engine: Path, meta: EngineMetadata) -> Path:
    return write_json(metadata_path(engine), meta.as_dict())


def read_metadata(engine: Path) -> EngineMetadata:
    path = metadata_path(engine)
    if not path.exists():
        raise EngineMismatchError(
            f"{engine}: no metadata ({path.name}) beside it, so the GPU and TensorRT version it was built "
            "for are unknown; rebuild it on this device with `python -m pipeline deploy`"
        )
    return EngineMetadata.from_dict(read_json(path))


def compatibility_problem(meta: EngineMetadata, device: DeviceInfo) -> str | None:
    """Why an engine cannot run on `device`, or None. Engines are tied to the GPU and the TensorRT version."""
    built = (meta.gpu_name, meta.compute_capability, meta.tensorrt_version)
    here = (device.gpu_name, device.compute_capability, device.tensorrt_version)
    labels = ("GPU", "compute capability", "TensorRT")
    differing = [
        f"{label} {b!r} (this machine: {h!r})"
        for label, b, h in zip(labels, built, here, strict=True)
        if b != h
    ]
    if not differing:
        return None
    return "it was built for " + ", ".join(differing)


def check_compatible(engine: Path, meta: EngineMetadata, device: DeviceInfo) -> None:
    if problem := compatibility_problem(meta, device):
        raise EngineMismatchError(
            f"refusing to load {engine}: {problem}. TensorRT engines only run on the GPU model and TensorRT "
            "version that built them; rebuild it here with `python -m pipeline deploy`."
        )


# ---- INT8 calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSet:
    """Representative images, served in full batches of `batch_size` (a short remainder is left out)."""

    images: tuple[Path, ...]
    batch_size: int
    imgsz: int
    channels: int

    @property
    def batch_count(self) -> int:
        return len(self.images) // self.batch_size

    def batches(self) -> Iterator[np.ndarray]:
        for start in range(0, self.batch_count * self.batch_size, self.batch_size):
            files = self.images[start : start + self.batch_size]
            yield preprocess([load_image(f, self.channels) for f in files], self.imgsz).array


def pick_calibration_images(images: list[Path], count: int) -> tuple[Path, ...]:
    """`count` images spread evenly over the sorted list, so every part of the split is represented."""
    images = sorted(images)
    if len(images) <= count:
        return tuple(images)
    return tuple(images[i] for i in np.linspace(0, len(images) - 1, count).round().astype(int))


def images_hash(images: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.name}:{file_sha256(image)}\n".encode())
    return digest.hexdigest()


def cache_key(images_sha256: str, tensorrt_version: str, onnx_sha256: str, batch_size: int) -> str:
    """Everything the calibration scales depend on: a change in any gives a new key, never a stale cache."""
    parts = f"images={images_sha256};tensorrt={tensorrt_version};onnx={onnx_sha256};batch={batch_size}"
    return hashlib.sha256(parts.encode()).hexdigest()


@dataclass(frozen=True)
class CalibrationCache:
    directory: Path
    key: str

    @property
    def path(self) -> Path:
        return self.directory / f"calibration-{self.key[:24]}.cache"

    def read(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def write(self, data: bytes) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(data)


def calibrator_class(base: type) -> type:
    """An entropy calibrator on `base` (tensorrt.IInt8EntropyCalibrator2 on the device).

    `to_device` copies a batch to GPU memory and returns an object with `data_ptr()`; the calibrator
    keeps it alive until the next batch, as TensorRT reads the memory after get_batch returns.
    """

    class EntropyCalibrator(base):
        def __init__(
            self, data: CalibrationSet, cache: CalibrationCache, to_device: Callable[[np.ndarray], Any]
        ):
            base.__init__(self)
            self.data, self.cache, self.to_device = data, cache, to_device
            self.pending, self.current = data.batches(), None

        def get_batch_size(self) -> int:
            return self.data.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.pending, None)
            if batch is None:
                return None  # tells TensorRT the calibration data is exhausted
            self.current = self.to_device(batch)
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return self.cache.read()

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache.write(bytes(cache))

    return EntropyCalibrator


# ---- input shapes, the equivalent trtexec command ----------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The inputs an engine takes: one shape for a static ONNX, a batch range for a dynamic one."""

    shape: tuple[int, ...]  # the largest input: (batch, channels, imgsz, imgsz)
    dynamic: bool
    opt_batch: int = 1  # the batch TensorRT tunes for; the calibration batch while calibrating INT8

    def at(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape[1:])


def dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def layer_precision_arguments(layer_precisions: Mapping[str, str]) -> list[str]:
    """trtexec's per-layer precisions, obeyed (what `build_engine` does with `layer_precisions`)."""
    if not layer_precisions:
        return []
    specs = ",".join(f"{name}:{precision}" for name, precision in layer_precisions.items())
    return [f"--layerPrecisions={specs}", "--precisionConstraints=obey"]


def trtexec_command(
    onnx: Path,
    engine: Path,
    precision: str,
    workspace_gb: float,
    profile: Profile,
    calibration_cache: Path | None = None,
    layer_precisions: Mapping[str, str] | None = None,
) -> list[str]:
    """trtexec doing what `build_engine` does; INT8 there reads the calibration cache deploy wrote."""
    command = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    command.append(f"--memPoolSize=workspace:{round(workspace_gb * 1024)}M")
    if profile.dynamic:
        command.append(f"--minShapes={INPUT}:{dims(profile.at(1))}")
        command.append(f"--optShapes={INPUT}:{dims(profile.at(profile.opt_batch))}")
        command.append(f"--maxShapes={INPUT}:{dims(profile.shape)}")
    if precision in ("fp16", "int8"):
        command.append("--fp16")  # INT8 layers fall back to FP16, not FP32
    if precision == "int8":
        command.append("--int8")
        if calibration_cache is not None:
            command.append(f"--calib={calibration_cache}")
    return command + layer_precision_arguments(layer_precisions or {})


# ---- build and run (on the device) ---------------------------------------------------------------------


def pin_layers(network: Any, layer_precisions: Mapping[str, str], trt: Any) -> list[str]:
    """Set each named layer's precision (TensorRT layer names are the ONNX node names); the names the
    network has no layer for, which the caller reports."""
    types = {"fp16": trt.float16, "fp32": trt.float32, "int8": trt.int8}
    found = set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in layer_precisions:
            layer.precision = types[layer_precisions[layer.name]]
            found.add(layer.name)
    return [name for name in layer_precisions if name not in found]


def build_engine(
    onnx: Path,
    precision: str,
    workspace_gb: float,
    profile: Profile,
    calibrator: Any,
    layer_precisions: Mapping[str, str] | None = None,
) -> bytes:
    """Serialised engine from the ONNX through TensorRT's Python API; `layer_precisions` (a precision
    plan) pins layers, with TensorRT obeying the constraints."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PipelineError(f"TensorRT cannot parse {onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if profile.dynamic:
        optimization = builder.create_optimization_profile()
        optimization.set_shape(INPUT, min=profile.at(1), opt=profile.at(profile.opt_batch), max=profile.shape)
        config.add_optimization_profile(optimization)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    if layer_precisions:
        if missing := pin_layers(network, layer_precisions, trt):
            print(f"precision plan: no TensorRT layer named {missing} (fused or renamed by the parser)")
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PipelineError(f"TensorRT failed to build a {precision} engine from {onnx} (see its log above)")
    return bytes(serialized)


class TensorRTRunner:
    """A deserialised engine on GPU 0; refuses engines built for another GPU or TensorRT version."""

    def __init__(self, path: Path):
        import tensorrt as trt
        import torch

        self.meta = read_metadata(path)
        check_compatible(path, self.meta, current_device())
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.torch, self.name, self.path = torch, f"tensorrt-{self.meta.precision}", Path(path)
        self.batch = None if self.meta.dynamic_batch else self.meta.input_shape[0]
        self.input_shape = (self.batch, *self.meta.input_shape[1:])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        source = torch.from_numpy(batch).to("cuda")
        self.context.set_input_shape(INPUT, tuple(source.shape))
        output = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(INPUT, source.data_ptr())
        self.context.set_tensor_address(OUTPUT, output.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise PipelineError(f"TensorRT failed to run {self.path}")
        stream.synchronize()
        return output.cpu().numpy()
