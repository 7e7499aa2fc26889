"""YOLO11n at 640 px on this CPU: each format's p50 inference latency and its ratio to PyTorch eager.

The targets: the fastest exported format's p50 at most 0.35x PyTorch eager's (issue 5), and
OpenVINO INT8's at most 0.15x (issue 14). The model is
built from yolo11n.yaml with random weights (nothing is downloaded; latency does not depend on the
weight values), exported with the export stage's own arguments, and timed with the benchmark
stage's code: every runtime at the same thread count, warmed up, then timed in turn (one run of
each per round). PyTorch eager is the fused model as Ultralytics predicts with it. OpenVINO runs
at f32 and, where the CPU computes bf16 natively, at bf16 (OpenVINO's own default on such CPUs).
OpenVINO INT8 is the export stage's NNCF quantization (`export.int8.preset` from conf/, or
--int8-preset), calibrated on synthetic scenes (latency does not depend on what calibration chose,
only on which layers are INT8); where the CPU has bf16 it is timed a second time with its float
layers (the head's decoding) in bf16. Every row is inference only, NMS excluded on every side.

    .venv/bin/python scripts/benchmark_formats.py [--threads 2] [--runs 50] [--warmup 10] [--int8-preset P]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core.compose import compose_config
from pipeline.core.deploy_config import INT8_PRESETS
from pipeline.deploy import export
from pipeline.deploy.int8 import quantize
from pipeline.deploy.timing import Timing, summarise_timing, time_in_turn, warm_up
from pipeline.model.inference import cpu_supports, open_runner
from pipeline.model.info import ModelInfo, file_sha256

TARGET_RATIO = 0.35
INT8_TARGET_RATIO = 0.15  # issue 14: OpenVINO INT8 p50 against PyTorch eager
FORMATS = ("onnx", "torchscript", "openvino")
CALIBRATION_SCENES = 16


def random_yolo11n(folder: Path) -> Path:
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")
    model.save(folder / "model.pt")
    return folder / "model.pt"


def test_image(imgsz: int, seed: int = 0):
    """A 640 px synthetic RGB scene, BGR as OpenCV reads images."""
    from pipeline.data.synthetic import generate

    return next(generate("rgb", 1, imgsz, seed)).image[..., ::-1].copy()


def calibration_scenes(folder: Path, imgsz: int) -> tuple[Path, ...]:
    import cv2

    folder.mkdir()
    paths = tuple(folder / f"{seed}.png" for seed in range(1, CALIBRATION_SCENES + 1))
    for seed, path in enumerate(paths, start=1):
        cv2.imwrite(str(path), test_image(imgsz, seed))
    return paths


def runners(weights: Path, info: ModelInfo, threads: int, preset: str | None) -> list:
    cfg = compose_config([f"export.opset={17}", *([f"export.int8.preset={preset}"] if preset else [])])
    found = [open_runner(weights, threads)]
    for fmt in FORMATS:
        exported = export.export_format(weights, export.export_arguments(cfg, fmt, info))
        found.append(open_runner(exported, threads))
    fp32_folder = weights.with_name("model_openvino_model")
    if cpu_supports("bf16"):
        found.append(open_runner(fp32_folder, threads, "bf16"))
    scenes = calibration_scenes(weights.parent / "calibration", info.imgsz)
    int8_folder, _ = quantize(fp32_folder, info, scenes, cfg.export.int8)
    found.append(open_runner(int8_folder, threads))
    if cpu_supports("bf16"):  # the same INT8 file; only its float layers run in bf16
        found.append(open_runner(int8_folder, threads, "bf16"))
    return found


def report(timings: dict[str, Timing], threads: int) -> bool:
    eager = timings["pytorch"].p50_ms
    print(f"\nYOLO11n, 640 px, batch 1, {threads} threads (p50 of inference, formats timed in turn)")
    print(f"{'format':<20}{'p50 ms':>10}{'p95 ms':>10}{'vs PyTorch':>12}")
    for name, t in timings.items():
        print(f"{name:<20}{t.p50_ms:>10.1f}{t.p95_ms:>10.1f}{t.p50_ms / eager:>11.2f}x")
    name, best = min(((n, t) for n, t in timings.items() if n != "pytorch"), key=lambda item: item[1].p50_ms)
    ratio = best.p50_ms / eager
    met = ratio <= TARGET_RATIO
    print(
        f"fastest exported format: {name} at {ratio:.2f}x PyTorch eager (target <= {TARGET_RATIO}x): "
        f"{'met' if met else 'missed'}"
    )
    int8_name = min((n for n in timings if n.startswith("openvino-int8")), key=lambda n: timings[n].p50_ms)
    int8 = timings[int8_name].p50_ms / eager
    int8_met = int8 <= INT8_TARGET_RATIO
    print(
        f"fastest INT8: {int8_name} at {int8:.2f}x PyTorch eager (target <= {INT8_TARGET_RATIO}x): "
        f"{'met' if int8_met else 'missed'}"
    )
    return met and int8_met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--int8-preset", choices=INT8_PRESETS, help="default: export.int8.preset in conf/")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="benchmark-formats-"))
    try:
        weights = random_yolo11n(folder)
        info = ModelInfo(tuple(str(i) for i in range(80)), args.imgsz, 3, False, file_sha256(weights))
        sessions = runners(weights, info, args.threads, args.int8_preset)
        image = [test_image(args.imgsz)]
        for runner in sessions:
            warm_up(runner, image, info, [1], args.warmup)
        timed = time_in_turn(sessions, image, info, size=1, runs=args.runs)
        met = report({name: summarise_timing(1, s) for name, s in timed.items()}, args.threads)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
