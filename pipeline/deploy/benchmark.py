"""Stage 6, benchmark: latency, throughput, memory and accuracy of every format, read together.

Formats: PyTorch (best.pt), each export in {paths.export}/models (OpenVINO also at the runtime
precisions in `benchmark.openvino_precisions` that the CPU computes natively), and TensorRT
engines where the deploy stage built them and TensorRT and CUDA are present. Every runtime uses
`benchmark.threads` (torch.set_num_threads, ONNX Runtime intra-op threads, OpenVINO
INFERENCE_NUM_THREADS). Sessions are created once; each is warmed up, then timed for
`benchmark.runs` runs at batch 1 and at `benchmark.batch`. Formats are timed in turn, one run of
each per round, so a burst of load from elsewhere on the machine hits all of them alike.

Each run times three parts separately: preprocessing (letterbox and normalisation, the same code
for every format), inference, and postprocessing (NMS at the deployment confidence 0.25). Latency
and throughput are of inference; `fps` is end to end at batch 1 (the three p50s added), which is
what `hardware.target_fps` is checked against. Peak memory is the growth of this process's peak
resident set size (Linux VmHWM, reset through /proc/self/clear_refs) while a session is created and
warmed up at each batch size; without /proc it is the resident set growth (psutil), a lower bound.
Accuracy is mAP50-95 on the first `benchmark.images` validation images, through the same session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import tracking
from pipeline.core.artifacts import Artifacts, BenchmarkFiles
from pipeline.core.cli import stage_parser
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.deploy_config import BenchmarkConfig
from pipeline.core.io import write_json, write_text
from pipeline.core.markdown import table
from pipeline.deploy.timing import (
    MEMORY_METHODS,
    Timing,
    accepts,
    end_to_end_fps,
    peak_memory,
    summarise_timing,
    time_in_turn,
    warm_up,
)
from pipeline.model.inference import Runner, cpu_supports, open_runner
from pipeline.model.info import ModelInfo, exported_models, read_model_info, require_weights
from pipeline.model.scoring import Sample, load_images, measure_map, read_split
from pipeline.model.tensorrt import missing_requirements


@dataclass(frozen=True)
class Candidate:
    name: str
    path: Path
    precision: str = "f32"  # OpenVINO's runtime precision; the other runtimes run the file as it is


@dataclass(frozen=True)
class FormatResult:
    name: str
    file: str
    map50_95: float
    peak_memory_mb: float
    timings: tuple[Timing, ...]
    skipped_batches: dict[int, str]
    fps: float  # end to end at batch 1
    target_met: bool | None  # None when the hardware profile sets no target


@dataclass(frozen=True)
class BenchmarkResult:
    threads: int
    imgsz: int
    runs: int
    warmup: int
    batches: tuple[int, ...]
    target_fps: float | None
    memory_method: str
    formats: tuple[FormatResult, ...]
    skipped: dict[str, str]  # format -> why it was not measured

    def format(self, name: str) -> FormatResult:
        return next(f for f in self.formats if f.name == name)


# ---- which formats ----------------------------------------------------------------------------------


def candidates(cfg: PipelineConfig) -> tuple[list[Candidate], dict[str, str]]:
    """PyTorch, each passing export, OpenVINO's extra precisions, TensorRT engines; and what is skipped."""
    found, skipped = [Candidate("pytorch", Artifacts.of(cfg).best_weights)], {}
    for fmt, (path, _) in exported_models(Artifacts.of(cfg).models).items():
        found.append(Candidate(fmt, path))
        if fmt == "openvino":
            for precision in [p for p in cfg.benchmark.openvino_precisions if p != "f32"]:
                if cpu_supports(precision):
                    found.append(Candidate(f"openvino-{precision}", path, precision))
                else:
                    skipped[f"openvino-{precision}"] = f"this CPU does not compute {precision} natively"
    engines, reason = tensorrt_engines(cfg)
    found += engines
    if reason:
        skipped["tensorrt"] = reason
    return found, skipped


def tensorrt_engines(cfg: PipelineConfig) -> tuple[list[Candidate], str | None]:
    engines = sorted(Artifacts.of(cfg).engines.glob("*.engine"))
    if not engines:
        return [], "no engine: build one on the target device (python -m pipeline deploy)"
    if missing := missing_requirements():
        return [], "engines present but this machine lacks " + " and ".join(missing)
    return [Candidate(f"tensorrt-{p.stem.split('.')[-1]}", p) for p in engines], None


# ---- the measurement -------------------------------------------------------------------------------


Opener = Callable[[], Runner]


def open_measured(
    opener: Opener, images: Sequence[np.ndarray], info: ModelInfo, batches: Sequence[int], warmup: int
) -> tuple[Runner, float]:
    """Create and warm up a session, returning it with the peak memory that took."""
    with peak_memory() as growth:
        runner = opener()
        warm_up(runner, images, info, batches, warmup)
    return runner, round(growth[0], 1)


def measure(
    openers: dict[str, Opener],
    samples: Sequence[Sample],
    images: Sequence[np.ndarray],
    info: ModelInfo,
    bench: BenchmarkConfig,
    target_fps: float | None,
) -> tuple[FormatResult, ...]:
    """Open every session once, time them in turn at each batch size, then measure their accuracy."""
    batches = sorted({1, bench.batch})
    sessions = {n: open_measured(o, images, info, batches, bench.warmup) for n, o in openers.items()}
    runners = [runner for runner, _ in sessions.values()]
    timed = {
        size: time_in_turn([r for r in runners if accepts(r, size)], images, info, size, bench.runs)
        for size in batches
    }
    return tuple(
        format_result(runner, memory, timed, measure_map(runner, samples, images, info).map50_95, target_fps)
        for runner, memory in sessions.values()
    )


Timed = dict[int, dict[str, list[tuple[float, float, float]]]]  # batch -> format -> timed runs


def format_result(
    runner: Runner, memory: float, timed: Timed, accuracy: float, target: float | None
) -> FormatResult:
    timings = tuple(summarise_timing(size, t[runner.name]) for size, t in timed.items() if runner.name in t)
    skipped = {
        size: f"the model's input batch is fixed at {runner.batch} (export with export.dynamic=true)"
        for size, t in timed.items()
        if runner.name not in t
    }
    fps = end_to_end_fps(timings[0])
    met = None if target is None else fps >= target
    return FormatResult(runner.name, runner.path.name, round(accuracy, 5), memory, timings, skipped, fps, met)


def measure_candidates(
    cfg: PipelineConfig, found: list[Candidate], info: ModelInfo
) -> tuple[FormatResult, ...]:
    samples = read_split(Artifacts.of(cfg).prepared, "val", cfg.benchmark.images, needed_for="the benchmark")
    images = load_images(samples, info.channels)
    openers = {c.name: opener(c, cfg.benchmark.threads) for c in found}
    return measure(openers, samples, images, info, cfg.benchmark, cfg.hardware.target_fps)


def assemble(
    cfg: PipelineConfig, info: ModelInfo, formats: tuple[FormatResult, ...], skipped: dict[str, str]
) -> BenchmarkResult:
    return BenchmarkResult(
        threads=cfg.benchmark.threads,
        imgsz=info.imgsz,
        runs=cfg.benchmark.runs,
        warmup=cfg.benchmark.warmup,
        batches=tuple(sorted({1, cfg.benchmark.batch})),
        target_fps=cfg.hardware.target_fps,
        memory_method=MEMORY_METHODS[Path("/proc/self/clear_refs").exists()],
        formats=formats,
        skipped=skipped,
    )


def run(cfg: PipelineConfig) -> BenchmarkResult:
    info = read_model_info(require_weights(Artifacts.of(cfg).best_weights))
    found, skipped = candidates(cfg)
    return assemble(cfg, info, measure_candidates(cfg, found, info), skipped)


def opener(candidate: Candidate, threads: int) -> Opener:
    return lambda: open_runner(candidate.path, threads, candidate.precision)


# ---- outputs --------------------------------------------------------------------------------------


def fastest_format(result: BenchmarkResult) -> dict[str, Any]:
    """The format to deploy on this machine: the fastest at batch 1, against PyTorch eager."""
    measured = [f for f in result.formats if f.timings]
    if not measured:
        return {}
    fastest = min(measured, key=lambda f: f.timings[0].p50_ms)
    pytorch = next((f for f in measured if f.name == "pytorch"), None)
    ratio = fastest.timings[0].p50_ms / pytorch.timings[0].p50_ms if pytorch else None
    return {
        "name": fastest.name,
        "p50_ms": fastest.timings[0].p50_ms,
        "fps": fastest.fps,
        "vs_pytorch": None if ratio is None else round(ratio, 3),
        "mAP50-95": fastest.map50_95,
    }


def headline_json(result: BenchmarkResult) -> dict[str, Any]:
    """benchmark.json, the DVC metrics file: the fastest format's p50 and end-to-end FPS only, so
    `dvc exp show` stays narrow (its name, its speed against PyTorch and its accuracy are in
    details.json under `fastest`)."""
    fastest = fastest_format(result)
    return {key: fastest[key] for key in ("p50_ms", "fps")} if fastest else {}


def result_json(result: BenchmarkResult) -> dict[str, Any]:
    """details.json beside it: every format, batch and percentile."""
    header = {k: v for k, v in asdict(result).items() if k not in ("formats", "skipped")}
    return {
        **header,
        "timing": "latency and throughput: inference only; fps: preprocess + inference + postprocess p50s",
        "fastest": fastest_format(result),
        "formats": {f.name: format_json(f) for f in result.formats},
        "skipped": result.skipped,
    }


def format_json(f: FormatResult) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "file": f.file,
        "mAP50-95": f.map50_95,
        "peak_memory_mb": f.peak_memory_mb,
        "fps": f.fps,
        "target_fps_met": f.target_met,
    }
    entry |= {f"batch_{t.batch}": {k: v for k, v in asdict(t).items() if k != "batch"} for t in f.timings}
    entry |= {f"batch_{size}": {"skipped": why} for size, why in f.skipped_batches.items()}
    return entry


def verdict(f: FormatResult) -> str:
    return "no target" if f.target_met is None else ("met" if f.target_met else "missed")


def result_markdown(result: BenchmarkResult, title: str = "Benchmark") -> str:
    reference = next((f.timings[0].p50_ms for f in result.formats if f.name == "pytorch"), None)
    header = ["format", "batch", "p50 ms", "mean", "p95", "p99", "img/s", "pre ms", "post ms", "vs PyTorch"]
    rows = [
        [
            f.name,
            str(t.batch),
            f"{t.p50_ms:.2f}",
            f"{t.mean_ms:.2f}",
            f"{t.p95_ms:.2f}",
            f"{t.p99_ms:.2f}",
            f"{t.throughput_ips:.1f}",
            f"{t.preprocess_p50_ms:.2f}",
            f"{t.postprocess_p50_ms:.2f}",
            f"{t.p50_ms / reference:.2f}x" if reference and t.batch == 1 else "",
        ]
        for f in result.formats
        for t in f.timings
    ]
    target = f"target {result.target_fps:g} fps" if result.target_fps else "target fps"
    summary = [
        [f.name, f"{f.map50_95:.4f}", f"{f.peak_memory_mb:.1f}", f"{f.fps:.1f}", verdict(f)]
        for f in result.formats
    ]
    lines = [
        f"# {title}",
        "",
        f"{result.threads} threads for every runtime, image size {result.imgsz}, {result.warmup} warm-up and "
        f"{result.runs} timed runs per batch size, formats timed in turn.",
        "",
        *table(["format", "mAP50-95", "peak MB", "fps (batch 1, end to end)", target], summary),
        "",
        *table(header, rows),
        "",
        "Latency and img/s are inference only; pre/post are letterbox+normalise and NMS (conf 0.25).",
        f"Memory: {result.memory_method}.",
    ]
    lines += [f"- {name}: not measured ({why})" for name, why in result.skipped.items()]
    lines += [
        f"- {f.name}, batch {size}: not measured ({why})"
        for f in result.formats
        for size, why in f.skipped_batches.items()
    ]
    return "\n".join(lines) + "\n"


def draw(result: BenchmarkResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for i, f in enumerate(result.formats):  # labels stepped up and down so close points stay readable
        axis.scatter(f.timings[0].p50_ms, f.map50_95)
        offset = (4, 4 + 10 * (i % 3))
        axis.annotate(f.name, (f.timings[0].p50_ms, f.map50_95), textcoords="offset points", xytext=offset)
    axis.set(xlabel="p50 latency at batch 1 (ms, inference)", ylabel="mAP50-95 (validation subset)")
    axis.set_title(f"Latency vs accuracy ({result.threads} threads, {result.imgsz} px)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def flat_metrics(result: BenchmarkResult) -> dict[str, float]:
    values: dict[str, float] = {}
    for f in result.formats:
        values |= {f"{f.name}/map50_95": f.map50_95, f"{f.name}/peak_memory_mb": f.peak_memory_mb}
        values |= {f"{f.name}/fps": f.fps}
        for t in f.timings:
            values |= {
                f"{f.name}/b{t.batch}_p50_ms": t.p50_ms,
                f"{f.name}/b{t.batch}_images_per_s": t.throughput_ips,
            }
    return values


def write_outputs(result: BenchmarkResult, files: BenchmarkFiles, title: str = "Benchmark") -> list[Path]:
    return [
        write_json(files.metrics, headline_json(result)),
        write_json(files.details, result_json(result)),
        write_text(files.table, result_markdown(result, title)),
        draw(result, files.plot),
    ]


def log_to_mlflow(
    cfg: PipelineConfig, result: BenchmarkResult, files: list[Path], prefix: str = "benchmark/"
):
    import mlflow

    with tracking.stage_run(cfg):
        tracking.log_metrics(flat_metrics(result), prefix=prefix)
        for file in files:
            mlflow.log_artifact(str(file), artifact_path=prefix.rstrip("/"))


def main(argv: list[str], prog: str = "benchmark", command: str = "benchmark") -> int:
    parser = stage_parser(prog, "Benchmark every available format: latency, throughput, memory, accuracy.")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    result = run(cfg)
    files = write_outputs(result, Artifacts.of(cfg).benchmark)
    log_to_mlflow(cfg, result, files)
    print(result_markdown(result))
    return 0
