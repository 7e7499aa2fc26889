"""Timing and memory of one runtime session: warm-up, runs in turn across formats, percentiles, and
the growth of peak resident memory while a session is created and warmed up."""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from pipeline.model.images import preprocess
from pipeline.model.inference import Runner, decode
from pipeline.model.info import ModelInfo

DEPLOY_CONF = 0.25  # postprocessing is timed as a deployment runs it, not at the mAP protocol's 0.001
DEPLOY_IOU = 0.7
MEMORY_METHODS = {
    True: "growth of peak RSS (VmHWM, reset via /proc/self/clear_refs) over session creation and warm-up",
    False: "growth of RSS (psutil) over session creation and warm-up: a lower bound of the peak",
}


@dataclass(frozen=True)
class Timing:
    batch: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_ips: float  # images per second of inference
    preprocess_p50_ms: float
    postprocess_p50_ms: float


# ---- memory ---------------------------------------------------------------------------------------


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process; False where /proc does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_kb() -> int:
    return psutil.Process().memory_info().rss // 1024


def release_freed_memory() -> None:
    """Return freed heap pages to the OS first, so memory freed by an earlier session is not reused unseen."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is a lower bound there
        return


@contextmanager
def peak_memory() -> Iterator[list[float]]:
    """Yields a list that receives the peak memory growth in MB when the block ends."""
    release_freed_memory()
    exact = reset_peak_rss()
    base = rss_kb()
    growth: list[float] = []
    yield growth
    peak = proc_status_kb("VmHWM") if exact else rss_kb()
    growth.append(max(0.0, (peak - base) / 1024))


# ---- timing ---------------------------------------------------------------------------------------


def batch_of(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    return [images[i % len(images)] for i in range(size)]


def time_once(runner: Runner, images: Sequence[np.ndarray], info: ModelInfo) -> tuple[float, float, float]:
    """(preprocess, inference, postprocess) seconds for one batch."""
    start = time.perf_counter()
    batch = preprocess(images, info.imgsz)
    prepared = time.perf_counter()
    raw = runner.infer(batch.array)
    inferred = time.perf_counter()
    decode(raw, batch, info, DEPLOY_CONF, DEPLOY_IOU, multi_label=False)
    return prepared - start, inferred - prepared, time.perf_counter() - inferred


def warm_up(
    runner: Runner, images: Sequence[np.ndarray], info: ModelInfo, batches: Sequence[int], runs: int
) -> None:
    for size in batches:
        if accepts(runner, size):
            for _ in range(runs):
                time_once(runner, batch_of(images, size), info)


def accepts(runner: Runner, size: int) -> bool:
    return runner.batch in (None, size)


def time_in_turn(
    runners: Sequence[Runner], images: Sequence[np.ndarray], info: ModelInfo, size: int, runs: int
) -> dict[str, list[tuple[float, float, float]]]:
    """Round-robin timing: each round runs every runner once, in turn."""
    picked, samples = batch_of(images, size), {r.name: [] for r in runners}
    for _ in tqdm(range(runs), desc=f"batch {size}", unit="round"):
        for runner in runners:
            samples[runner.name].append(time_once(runner, picked, info))
    return samples


def summarise_timing(size: int, samples: Sequence[tuple[float, float, float]]) -> Timing:
    pre, infer, post = (np.asarray(part) * 1000 for part in zip(*samples, strict=True))
    p50, p95, p99 = np.percentile(infer, [50, 95, 99])
    return Timing(
        batch=size,
        mean_ms=round(float(infer.mean()), 3),
        p50_ms=round(float(p50), 3),
        p95_ms=round(float(p95), 3),
        p99_ms=round(float(p99), 3),
        throughput_ips=round(size * 1000 / float(infer.mean()), 2),
        preprocess_p50_ms=round(float(np.median(pre)), 3),
        postprocess_p50_ms=round(float(np.median(post)), 3),
    )


def end_to_end_fps(timing: Timing) -> float:
    return round(1000 / (timing.preprocess_p50_ms + timing.p50_ms + timing.postprocess_p50_ms), 2)
