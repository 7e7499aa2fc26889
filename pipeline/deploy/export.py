"""Stage 5, export: ONNX, TorchScript and OpenVINO by Ultralytics' exporter, each checked against PyTorch.

An export counts only once it behaves like the PyTorch model on real validation images (the first
`export.parity_images` of the val split): same input and output shapes, raw output within
`export.max_abs_diff` (box coordinates as a fraction of the image size, class scores as they are),
and mAP50-95 within `export.max_map_drop`. A failed check fails the stage, naming both numbers, and
the failing file never reaches {paths.export}/models. Each model file gets a metadata JSON beside it
(class names, image size, channels, source weights hash, opset, package versions) that benchmark
and the on-device deploy stage read instead of reopening the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import tracking
from pipeline.core.artifacts import Artifacts, metadata_path
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.faults import kill_if_armed
from pipeline.core.io import swap_dir, write_json
from pipeline.core.lineage import package_versions
from pipeline.core.yolo import import_ultralytics
from pipeline.deploy.int8 import accuracy_control, calibration_images, quantize
from pipeline.model import parity as parity_check
from pipeline.model.inference import FORMAT_SUFFIXES, Runner, open_runner
from pipeline.model.info import ModelInfo, file_sha256, read_model_info, require_weights
from pipeline.model.parity import Parity, Tolerance
from pipeline.model.scoring import load_images, read_split

STEM = "model"
STAGING_PREFIX = ".staging-"  # scratch folders under {paths.export}; a killed export leaves one behind
VERSIONED = ("ultralytics", "torch", "onnx", "onnxslim", "onnxruntime", "openvino", "nncf")
INT8 = "openvino-int8"


class ParityError(PipelineError):
    """An exported model does not behave like the model it was exported from."""


@dataclass(frozen=True)
class ExportResult:
    models: dict[str, Path]  # format -> exported file or folder in {paths.export}/models
    parity: tuple[Parity, ...]

    @property
    def failures(self) -> tuple[Parity, ...]:
        return tuple(p for p in self.parity if not p.passed)


# ---- pure helpers ---------------------------------------------------------------------------------


def export_arguments(cfg: PipelineConfig, fmt: str, info: ModelInfo) -> dict[str, Any]:
    """Ultralytics `export()` keywords: raw outputs (no embedded NMS) at the trained image size, batch 1."""
    arguments: dict[str, Any] = {
        "format": fmt,
        "imgsz": info.imgsz,
        "batch": 1,
        "device": "cpu",
        "dynamic": cfg.export.dynamic,
        "verbose": False,
    }
    if info.end2end:
        arguments["nms"] = False  # keeps the NMS-free head the PyTorch model runs (None would swap it)
    if fmt == "onnx":
        arguments.update(opset=cfg.export.opset, simplify=cfg.export.simplify)
    return arguments


def tolerance(cfg: PipelineConfig, fmt: str) -> Tolerance:
    if fmt == INT8:  # quantized outputs differ from PyTorch's by design: only the accuracy is bounded
        drop = cfg.export.max_map_drop_int8
        controlled = ", also accuracy control's max_drop" if cfg.export.int8.accuracy_control else ""
        return Tolerance(None, drop, source=f"export.max_map_drop_int8={drop}{controlled}")
    diff, drop = cfg.export.max_abs_diff, cfg.export.max_map_drop
    return Tolerance(diff, drop, source=f"export.max_abs_diff={diff}, export.max_map_drop={drop}")


def metadata(
    cfg: PipelineConfig, fmt: str, model: Path, info: ModelInfo, parity: Parity, quantization: dict[str, Any]
) -> dict[str, Any]:
    return {
        "format": fmt,
        "file": model.name,
        **info.as_dict(),
        "batch": "dynamic" if cfg.export.dynamic else 1,
        "opset": cfg.export.opset if fmt == "onnx" else None,
        "simplified": cfg.export.simplify if fmt == "onnx" else None,
        "source_weights": str(Artifacts.of(cfg).best_weights),
        "sha256_file": file_sha256(model),
        "versions": package_versions(VERSIONED),
        "parity": parity.as_dict(),
        "quantization": quantization or None,  # INT8: calibration, layers kept in float, accuracy control
    }


def failure_message(failures: tuple[Parity, ...], report: Path) -> str:
    lines = [f"{p.name} ({p.file}): {p.failure}" for p in failures]
    return (
        f"{len(failures)} export(s) failed the parity check against PyTorch (details in {report}):\n  "
        + "\n  ".join(lines)
    )


# ---- the stage ------------------------------------------------------------------------------------


def export_format(weights: Path, arguments: dict[str, Any]) -> Path:
    """Ultralytics' exporter; it writes beside `weights`, so callers pass a copy in a scratch folder."""
    import_ultralytics()
    from ultralytics import YOLO

    return Path(YOLO(str(weights)).export(**arguments))


def export_model(cfg: PipelineConfig, fmt: str, staged: Path, info: ModelInfo) -> tuple[Path, dict[str, Any]]:
    """The exported file or folder, and what quantization recorded (empty for the float formats)."""
    if fmt != INT8:
        return export_format(staged, export_arguments(cfg, fmt, info)), {}

    fp32 = export_format(staged, export_arguments(cfg, "openvino", info))
    control = accuracy_control(cfg, info.channels)
    return quantize(fp32, info, calibration_images(cfg), cfg.export.int8, control)


def accuracy_control_failure(parity: Parity, quantization: dict[str, Any]) -> Parity:
    """Accuracy control's own verdict joins the parity gate's: an INT8 model that NNCF could not bring
    within max_drop on its validation images (reverting at most max_reverted_layers) is refused too."""
    accuracy = quantization.get("accuracy_control")
    if not accuracy or accuracy["reached"]:
        return parity
    problem = (
        f"accuracy control left mAP50-95 {accuracy['map_int8']:.4f} vs float {accuracy['map_float']:.4f} "
        f"on {accuracy['validation_images']} validation images, a drop of {accuracy['drop']:.4f} "
        f"(max_drop {accuracy['max_drop']}) after reverting {len(accuracy['reverted_layers'])} layer(s) "
        f"(export.int8.max_reverted_layers={accuracy['max_reverted_layers']})"
    )
    return dataclasses.replace(parity, failure="; ".join(filter(None, [parity.failure, problem])))


def export_and_check(
    cfg: PipelineConfig, fmt: str, staged: Path, info: ModelInfo, check: Callable[[Runner], Parity]
) -> tuple[Path, dict[str, Any], Parity]:
    exported, quantization = export_model(cfg, fmt, staged, info)
    kill_if_armed("export_exported", cfg.export.formats.index(fmt) + 1)
    result = check(open_runner(exported, threads=os.cpu_count() or 1))
    return exported, quantization, accuracy_control_failure(result, quantization)


def publish(
    cfg: PipelineConfig,
    fmt: str,
    exported: Path,
    info: ModelInfo,
    parity: Parity,
    quantization: dict[str, Any],
    target: Path,
) -> Path:
    """Move a checked export into the new models folder under its fixed name, metadata beside it."""
    final = target / f"{STEM}{FORMAT_SUFFIXES[fmt]}"
    shutil.move(str(exported), final)
    write_json(metadata_path(final), metadata(cfg, fmt, final, info, parity, quantization))
    return final


def run(cfg: PipelineConfig) -> ExportResult:
    weights = require_weights(Artifacts.of(cfg).best_weights)
    info = read_model_info(weights)
    samples = read_split(
        Path(cfg.paths.prepared), "val", cfg.export.parity_images, needed_for="the parity check"
    )
    images = load_images(samples, info.channels)
    reference = open_runner(weights, threads=os.cpu_count() or 1)

    def check(candidate: Runner) -> Parity:
        return parity_check.check(reference, candidate, samples, images, info, tolerance(cfg, candidate.name))

    export_root = Path(cfg.paths.export)
    export_root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(export_root)
    models, results = {}, []
    with tempfile.TemporaryDirectory(dir=export_root, prefix=STAGING_PREFIX) as scratch:
        staged, target = Path(scratch) / f"{STEM}.pt", Path(scratch) / "models"
        shutil.copy2(weights, staged)
        target.mkdir()
        for fmt in cfg.export.formats:
            exported, quantization, result = export_and_check(cfg, fmt, staged, info, check)
            results.append(result)
            print(
                f"{fmt}: {'parity ok' if result.passed else 'PARITY FAILED'} ({describe(result)})", flush=True
            )
            if result.passed:
                models[fmt] = publish(cfg, fmt, exported, info, result, quantization, target)
        kill_if_armed("export_published")
        swap_dir(target, Artifacts.of(cfg).models)
    return ExportResult(
        {fmt: Artifacts.of(cfg).models / path.name for fmt, path in models.items()}, tuple(results)
    )


def remove_stale_staging(export_root: Path) -> None:
    """Scratch folders of exports killed before cleaning up: never published, so nothing to keep.
    Stages run one at a time on a project (DVC's lock), so no live export owns one."""
    for stale in export_root.glob(f"{STAGING_PREFIX}*"):
        print(f"removing {stale}, left by an interrupted export", flush=True)
        shutil.rmtree(stale, ignore_errors=True)


def describe(result: Parity) -> str:
    if result.max_abs_diff is None:
        return result.failure or ""
    return (
        f"max abs diff {result.max_abs_diff:.2e}, mAP50-95 {result.map_candidate:.4f} "
        f"vs PyTorch {result.map_reference:.4f} on {result.images} images"
    )


def parity_report(result: ExportResult) -> dict[str, Any]:
    """parity.json, the DVC metrics file: one entry per format and an overall verdict."""
    return {
        "passed": not result.failures,
        "formats": {p.name: p.as_dict() for p in result.parity},
    }


def log_to_mlflow(cfg: PipelineConfig, result: ExportResult, report: Path) -> None:
    import mlflow

    with tracking.stage_run(cfg):
        for p in result.parity:
            values = {"max_abs_diff": p.max_abs_diff, "map50_95": p.map_candidate, "passed": float(p.passed)}
            tracking.log_metrics(
                {k: v for k, v in values.items() if v is not None}, prefix=f"export/{p.name}/"
            )
        mlflow.log_artifact(str(report), artifact_path="export")
        for model in result.models.values():
            mlflow.log_artifact(str(metadata_path(model)), artifact_path="export/metadata")


def main(argv: list[str], prog: str = "export", command: str = "export") -> int:
    parser = stage_parser(prog, "Export the trained model (ONNX/TorchScript/OpenVINO) and check parity.")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    result = run(cfg)
    report = write_json(Artifacts.of(cfg).parity, parity_report(result))
    log_to_mlflow(cfg, result, report)
    if result.failures:
        raise ParityError(failure_message(result.failures, report))
    print(f"exported {', '.join(result.models)} to {Artifacts.of(cfg).models}; parity in {report}")
    return 0
