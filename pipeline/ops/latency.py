"""A sweep trial's latency, measured by the pipeline's own export and benchmark stages.

A multi-objective sweep (`hydra.sweeper.metrics: [mAP50-95, latency_ms]`) needs each trial's speed on
the runtime it would be deployed with. The job runs the export stage (Ultralytics' exporter and the
parity check against PyTorch) for one format, ONNX or OpenVINO, then the benchmark stage, both
through their entry points on the job's own params.yaml, exactly as `dvc repro` runs them. So the
timer is the benchmark's (`pipeline.deploy.timing`: warm-up, then timed runs, preprocessing,
inference and NMS timed apart), not a second one. Here the runtime is ONNX Runtime or OpenVINO on
this machine's CPU, with `benchmark.threads` threads (or `hydra.sweeper.latency.threads`); on the
deployment device the same sweep would time TensorRT engines, which the benchmark picks up once the
deploy stage has built them (not done by the sweep).

`latency_ms` is end to end at batch 1: the p50s of preprocessing, inference and postprocessing
added, the quantity whose inverse the benchmark stage checks against `hardware.target_fps`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import Artifacts
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.io import read_json

LATENCY_METRIC = "latency_ms"  # the objective name a sweep gives in hydra.sweeper.metrics
FORMATS = ("onnx", "openvino")  # runtimes timed on CPU: ONNX Runtime, OpenVINO


def configure(cfg: PipelineConfig, settings: Mapping[str, Any]) -> PipelineConfig:
    """The job's config with only the timed format exported and a short benchmark at batch 1.

    The job writes it to its params.yaml, so the file still says what the job ran."""
    fmt = settings["format"]
    if fmt not in FORMATS:
        raise ConfigError(
            f"hydra.sweeper.latency.format={fmt!r} is invalid: latency is timed on CPU, choose one of "
            f"{FORMATS}"
        )
    threads = settings.get("threads") or cfg.benchmark.threads
    bench = replace(
        cfg.benchmark,
        warmup=int(settings["warmup"]),
        runs=int(settings["runs"]),
        batch=1,
        threads=int(threads),
        openvino_precisions=["f32"],
    )
    return replace(cfg, export=replace(cfg.export, formats=[fmt]), benchmark=bench)


def measure(cfg: PipelineConfig, params: Path, run_stage: Callable[[str, Path], None]) -> dict[str, Any]:
    """Export best.pt and benchmark it; the timed format's batch-1 figures from the benchmark's details."""
    fmt = cfg.export.formats[0]
    run_stage("export", params)
    run_stage("benchmark", params)
    details = read_json(Artifacts.of(cfg).benchmark.details)
    entry = details["formats"].get(fmt)
    if entry is None or "p50_ms" not in entry.get("batch_1", {}):
        raise PipelineError(
            f"the benchmark measured no {fmt} model at batch 1 ({Artifacts.of(cfg).benchmark.details})"
        )
    return summary(fmt, entry, details)


def summary(fmt: str, entry: Mapping[str, Any], details: Mapping[str, Any]) -> dict[str, Any]:
    b1 = entry["batch_1"]
    latency = round(b1["preprocess_p50_ms"] + b1["p50_ms"] + b1["postprocess_p50_ms"], 3)
    return {
        LATENCY_METRIC: latency,
        "fps": round(1000 / latency, 2),
        "format": fmt,
        "inference_p50_ms": b1["p50_ms"],
        "preprocess_p50_ms": b1["preprocess_p50_ms"],
        "postprocess_p50_ms": b1["postprocess_p50_ms"],
        "threads": details["threads"],
        "warmup": details["warmup"],
        "runs": details["runs"],
        "imgsz": details["imgsz"],
        "benchmark_mAP50-95": entry["mAP50-95"],
    }
