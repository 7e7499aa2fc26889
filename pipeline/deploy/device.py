"""On the target device: TensorRT engines from the exported ONNX, checked against it, then benchmarked.

`python -m pipeline deploy` (then `dvc commit -f deploy/dvc.yaml:deploy` to record its outputs; the
stage in deploy/dvc.yaml is frozen so the training host's `dvc repro` skips it) runs on the host that
will run the engine, never on the training host: engines are tied to the GPU and TensorRT version
that built them. Without TensorRT or a CUDA device the stage stops before doing anything and says
what is missing, where it is meant to run, and the equivalent trtexec commands.

For each precision in `export.tensorrt.precisions` (fp16, int8 by default) it builds an engine with
TensorRT's Python API (INT8 through an entropy calibrator fed from the train split, with a cache
keyed by the calibration images, the TensorRT version and the ONNX), writes its metadata beside it,
checks mAP50-95 against the ONNX on validation images within `export.tensorrt.max_map_drop`, and
benchmarks the engines beside the ONNX with the benchmark stage's code. An INT8 engine that fails its
bound is rebuilt once with the detection head pinned to FP16 (pipeline.deploy.trt_fallback), its
precision plan written beside it, and checked again with the same bound.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import Artifacts, metadata_path
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import MissingDependencyError, PipelineError
from pipeline.core.io import atomic_path, read_json, write_json
from pipeline.deploy import benchmark as bench
from pipeline.deploy import trt_fallback as fallback
from pipeline.model import tensorrt as trt
from pipeline.model.inference import open_runner
from pipeline.model.info import ModelInfo
from pipeline.model.parity import Parity, Tolerance, check
from pipeline.model.scoring import load_images, read_split, split_images


@dataclass(frozen=True)
class OnnxSource:
    path: Path
    shape: tuple[int, ...]  # the largest input an engine must take: (batch, channels, imgsz, imgsz)
    dynamic: bool
    meta: dict


@dataclass(frozen=True)
class DeployResult:
    engines: dict[str, Path]  # precision -> engine file
    parity: tuple[Parity, ...]


# ---- plans and commands (no TensorRT needed) ----------------------------------------------------------


def onnx_source(cfg: PipelineConfig) -> OnnxSource:
    """The ONNX the export stage checked, with the input shape its engines are built for."""
    path = Artifacts.of(cfg).onnx
    if not metadata_path(path).exists():
        raise MissingDependencyError(
            f"{path} (and its metadata) not found: run the export stage with onnx in export.formats, then "
            "`dvc pull` it onto this device"
        )
    meta = read_json(metadata_path(path))
    dynamic = meta["batch"] == "dynamic"
    largest = max(cfg.benchmark.batch, cfg.export.tensorrt.calibration_batch)
    batch = largest if dynamic else int(meta["batch"])
    return OnnxSource(path, (batch, meta["channels"], meta["imgsz"], meta["imgsz"]), dynamic, meta)


def planned_source(cfg: PipelineConfig) -> OnnxSource:
    """The ONNX source, or the shape it will have once exported (for the commands shown when it is absent)."""
    try:
        return onnx_source(cfg)
    except MissingDependencyError:
        imgsz = cfg.train.imgsz if isinstance(cfg.train.imgsz, int) else 640
        return OnnxSource(Artifacts.of(cfg).onnx, (1, cfg.sensor.channels, imgsz, imgsz), False, {})


def profile(cfg: PipelineConfig, source: OnnxSource, precision: str) -> trt.Profile:
    """A dynamic ONNX is tuned for batch 1, or for the calibration batch while calibrating INT8."""
    calibrating = precision == "int8" and source.dynamic
    return trt.Profile(
        source.shape, source.dynamic, cfg.export.tensorrt.calibration_batch if calibrating else 1
    )


def command(
    cfg: PipelineConfig,
    source: OnnxSource,
    precision: str,
    cache: Path | None,
    plan: fallback.PrecisionPlan | None = None,
) -> str:
    engine, workspace = Artifacts.of(cfg).engine(precision), cfg.export.tensorrt.workspace_gb
    shapes, pinned = profile(cfg, source, precision), plan.layer_precisions if plan else None
    return shlex.join(trt.trtexec_command(source.path, engine, precision, workspace, shapes, cache, pinned))


def commands(cfg: PipelineConfig, source: OnnxSource) -> list[str]:
    cache = Artifacts.of(cfg).calibration / "calibration-<key>.cache"
    return [command(cfg, source, p, cache if p == "int8" else None) for p in cfg.export.tensorrt.precisions]


def missing_message(cfg: PipelineConfig, missing: list[str]) -> str:
    lines = "\n  ".join(commands(cfg, planned_source(cfg)))
    return (
        f"deploy builds TensorRT engines on the device that will run them, and this machine lacks "
        f"{' and '.join(missing)}. Run it on the target (a Jetson or an RTX host) with TensorRT 10 "
        "(JetPack ships it; elsewhere pip install 'yolo-pipeline[tensorrt]'): `dvc pull` the export and "
        "the prepared data there, then `python -m pipeline deploy` and "
        "`dvc commit -f deploy/dvc.yaml:deploy`. "
        f"Equivalent trtexec commands (INT8 reads the cache the calibrator writes):\n  {lines}"
    )


def require_device(cfg: PipelineConfig) -> None:
    if missing := trt.missing_requirements():
        raise MissingDependencyError(missing_message(cfg, missing))


def calibration_set(cfg: PipelineConfig, source: OnnxSource) -> trt.CalibrationSet:
    """Images from the train split (val if there is none); a static ONNX calibrates at its own batch."""
    prepared = Path(cfg.paths.prepared)
    pool = split_images(prepared, "train") or split_images(prepared, "val")
    settings = cfg.export.tensorrt
    batch = settings.calibration_batch if source.dynamic else source.shape[0]
    images = trt.pick_calibration_images(pool, settings.calibration_images)
    if len(images) < batch:
        raise PipelineError(f"INT8 calibration needs at least {batch} images; {prepared} has {len(images)}")
    return trt.CalibrationSet(images, batch, source.shape[2], source.shape[1])


def class_thresholds(cfg: PipelineConfig) -> dict[str, float] | None:
    """Per-class confidences from evaluate's thresholds.json, carried in each engine's metadata."""
    path = Artifacts.of(cfg).thresholds
    if not path.exists():
        return None
    return {entry["name"]: entry["conf"] for entry in read_json(path)["classes"].values()}


def engine_metadata(
    precision: str,
    source: OnnxSource,
    device: trt.DeviceInfo,
    calibration: dict | None,
    thresholds: dict[str, float] | None = None,
) -> trt.EngineMetadata:
    meta = source.meta
    return trt.EngineMetadata(
        tensorrt_version=device.tensorrt_version,
        gpu_name=device.gpu_name,
        compute_capability=device.compute_capability,
        precision=precision,
        input_shape=source.shape,
        dynamic_batch=source.dynamic,
        names=tuple(meta["names"]),
        imgsz=meta["imgsz"],
        channels=meta["channels"],
        end2end=meta["end2end"],
        source_onnx=str(source.path),
        source_onnx_sha256=meta["sha256_file"],
        calibration=calibration,
        class_thresholds=thresholds,
    )


# ---- on the device ---------------------------------------------------------------------------------


def calibrator(cfg: PipelineConfig, source: OnnxSource, device: trt.DeviceInfo) -> tuple[Any, dict[str, Any]]:
    """(entropy calibrator, what it was fed) for an INT8 build; the cache is keyed by all it depends on."""
    import tensorrt
    import torch

    data = calibration_set(cfg, source)
    digest = trt.images_hash(data.images)
    key = trt.cache_key(digest, device.tensorrt_version, source.meta["sha256_file"], data.batch_size)
    cache = trt.CalibrationCache(Artifacts.of(cfg).calibration, key)
    state = "reused" if cache.read() is not None else "new"
    print(f"INT8 calibration on {len(data.images)} images, cache {cache.path} ({state})")
    make = trt.calibrator_class(tensorrt.IInt8EntropyCalibrator2)
    instance = make(data, cache, lambda batch: torch.from_numpy(batch).to("cuda"))
    facts = {"images": len(data.images), "images_sha256": digest, "batch": data.batch_size, "cache_key": key}
    return instance, {**facts, "cache": str(cache.path)}


def precision_plan_path(engine: Path) -> Path:
    return metadata_path(engine, "precision")


def write_plan(engine: Path, plan: fallback.PrecisionPlan, trtexec: str) -> Path:
    """The plan beside the engine: pinned layers and why, the builder's arguments, the trtexec line."""
    return write_json(precision_plan_path(engine), {**plan.as_dict(), "command": trtexec})


def build(
    cfg: PipelineConfig,
    precision: str,
    source: OnnxSource,
    device: trt.DeviceInfo,
    plan: fallback.PrecisionPlan | None = None,
) -> Path:
    calib, facts = calibrator(cfg, source, device) if precision == "int8" else (None, None)
    engine = Artifacts.of(cfg).engine(precision)
    line = command(cfg, source, precision, Path(facts["cache"]) if facts else None, plan)
    print(f"building {engine}: {line}")
    if plan is None:
        precision_plan_path(engine).unlink(missing_ok=True)  # an earlier build's plan no longer applies
    else:
        write_plan(engine, plan, line)
    shapes, pinned = profile(cfg, source, precision), plan.layer_precisions if plan else None
    workspace = cfg.export.tensorrt.workspace_gb
    data = trt.build_engine(source.path, precision, workspace, shapes, calib, pinned)
    with atomic_path(engine) as tmp:
        tmp.write_bytes(data)
    trt.write_metadata(engine, engine_metadata(precision, source, device, facts, class_thresholds(cfg)))
    return engine


def tolerance(cfg: PipelineConfig, precision: str) -> Tolerance:
    bound = cfg.export.tensorrt.max_map_drop[precision]
    return Tolerance(None, bound, source=f"export.tensorrt.max_map_drop.{precision}={bound}")


def run(cfg: PipelineConfig) -> DeployResult:
    require_device(cfg)
    source, device = onnx_source(cfg), trt.current_device()
    trt.require_tensorrt_10(device.tensorrt_version)
    info = ModelInfo.from_dict(source.meta)
    samples = read_split(
        Path(cfg.paths.prepared), "val", cfg.export.parity_images, needed_for="engine parity"
    )
    images = load_images(samples, info.channels)
    reference = open_runner(source.path, threads=os.cpu_count() or 1)
    engines, results = {}, []
    for precision in cfg.export.tensorrt.precisions:
        engines[precision] = build(cfg, precision, source, device)
        bound = tolerance(cfg, precision)
        result = check(reference, trt.TensorRTRunner(engines[precision]), samples, images, info, bound)
        if fallback.needs_fallback(precision, result):
            plan = fallback.precision_plan(source.path, trt.OUTPUT, result)
            pinned = len(plan.layers)
            print(f"{result.name} failed parity ({result.failure}): rebuilding, {pinned} layers at FP16")
            engines[precision] = build(cfg, precision, source, device, plan)
            result = check(reference, trt.TensorRTRunner(engines[precision]), samples, images, info, bound)
        results.append(result)
    return DeployResult(engines, tuple(results))


def benchmark(cfg: PipelineConfig, result: DeployResult) -> tuple[bench.BenchmarkResult, list[Path]]:
    """The ONNX and every engine, timed in turn by the benchmark stage's code."""
    source = onnx_source(cfg)
    info = ModelInfo.from_dict(source.meta)
    found = [bench.Candidate("onnx", source.path)]
    found += [bench.Candidate(f"tensorrt-{p}", engine) for p, engine in result.engines.items()]
    outcome = bench.assemble(cfg, info, bench.measure_candidates(cfg, found, info), {})
    return outcome, bench.write_outputs(
        outcome, Artifacts.of(cfg).tensorrt_benchmark, title="TensorRT benchmark (on the device)"
    )


def parity_report(cfg: PipelineConfig, result: DeployResult) -> Path:
    engines = {p.name: p.as_dict() for p in result.parity}
    return write_json(
        Artifacts.of(cfg).tensorrt_parity, {"passed": all(p.passed for p in result.parity), **engines}
    )


def main(argv: list[str], prog: str = "deploy", command: str = "deploy") -> int:
    parser = stage_parser(prog, "On the target device: build TensorRT engines, check them, benchmark them.")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    result = run(cfg)
    report = parity_report(cfg, result)
    if failures := [f"{p.name}: {p.failure}" for p in result.parity if not p.passed]:
        raise PipelineError(
            f"TensorRT parity against the ONNX failed (see {report}):\n  " + "\n  ".join(failures)
        )
    outcome, files = benchmark(cfg, result)
    bench.log_to_mlflow(cfg, outcome, [report, *files], prefix="deploy/")
    engines = ", ".join(map(str, result.engines.values()))
    print(f"engines: {engines}; reports in {Artifacts.of(cfg).tensorrt_reports}")
    return 0
