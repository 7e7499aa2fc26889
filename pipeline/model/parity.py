"""Does a converted model behave like its source? Input shape, output shape, raw output and mAP.

Export checks each file against the PyTorch model; deploy checks each TensorRT engine against the
ONNX it was built from. Both use the same images, the same preprocessing and the same mAP protocol
(pipeline.model.inference, pipeline.model.scoring), and a failure says what differs with both numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.model.images import preprocess
from pipeline.model.inference import Runner, chunks, run_batch
from pipeline.model.info import ModelInfo
from pipeline.model.scoring import Sample, measure_map


@dataclass(frozen=True)
class Tolerance:
    max_abs_diff: float | None  # None: the raw difference is reported, not checked (reduced precision)
    max_map_diff: float
    source: str  # the config keys, named in a failure message


@dataclass(frozen=True)
class Parity:
    name: str
    file: str
    reference: str
    images: int
    max_abs_diff: float | None
    map_reference: float | None
    map_candidate: float | None
    failure: str | None  # None when the check passed

    @property
    def passed(self) -> bool:
        return self.failure is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def expected_input(info: ModelInfo) -> tuple[int, int, int]:
    return info.channels, info.imgsz, info.imgsz


def input_problem(candidate: Runner, info: ModelInfo) -> str | None:
    """A static input size other than the model's (channels, imgsz, imgsz), said in words."""
    shape = getattr(candidate, "input_shape", None)
    if shape is None or None in shape[1:] or tuple(shape[1:]) == expected_input(info):
        return None
    wanted = "x".join(map(str, expected_input(info)))
    return (
        f"it takes input {'x'.join(map(str, shape[1:]))} but the model was trained at {wanted} "
        f"(channels x height x width): export it again at imgsz={info.imgsz}"
    )


def output_problem(reference: np.ndarray, candidate: np.ndarray, info: ModelInfo) -> str | None:
    if reference.shape == candidate.shape:
        return None
    detail = ""
    if not info.end2end and reference.shape[1] != candidate.shape[1]:
        detail = (
            f": {candidate.shape[1] - 4} classes instead of {reference.shape[1] - 4} ({list(info.names)})"
        )
    elif reference.shape[2:] != candidate.shape[2:]:
        detail = ": a different number of anchors, i.e. a different input size"
    return f"its output shape {candidate.shape} differs from the reference's {reference.shape}{detail}"


def output_difference(reference: np.ndarray, candidate: np.ndarray, info: ModelInfo) -> float:
    """Largest absolute difference: box coordinates as a fraction of the image size, scores as they are.

    End-to-end heads emit their top detections sorted by score, so a tiny numeric difference can
    reorder rows; for them only the sorted scores are compared and the boxes are left to the mAP check.
    """
    if info.end2end:
        return float(np.abs(np.sort(reference[..., 4]) - np.sort(candidate[..., 4])).max())
    scale = np.ones((reference.shape[1], 1), dtype=np.float32)
    scale[:4] = 1.0 / info.imgsz
    return float(np.abs((reference - candidate) * scale).max())


def raw_difference(
    reference: Runner, candidate: Runner, images: Sequence[np.ndarray], info: ModelInfo
) -> tuple[float, str | None]:
    """(largest raw difference over all images, a shape problem or None)."""
    worst = 0.0
    for part in chunks(candidate, len(images)):
        batch = preprocess(images[part], info.imgsz)
        expected, produced = run_batch(reference, batch), run_batch(candidate, batch)
        if problem := output_problem(expected, produced, info):
            return float("nan"), problem
        worst = max(worst, output_difference(expected, produced, info))
    return worst, None


def check(
    reference: Runner,
    candidate: Runner,
    samples: Sequence[Sample],
    images: Sequence[np.ndarray],
    info: ModelInfo,
    tolerance: Tolerance,
) -> Parity:
    """Compare `candidate` with `reference` on labelled images; `failure` explains any mismatch."""
    partial = dict(
        name=candidate.name, file=candidate.path.name, reference=reference.name, images=len(images)
    )
    if problem := input_problem(candidate, info):
        return Parity(**partial, max_abs_diff=None, map_reference=None, map_candidate=None, failure=problem)
    diff, problem = raw_difference(reference, candidate, images, info)
    if problem:
        return Parity(**partial, max_abs_diff=None, map_reference=None, map_candidate=None, failure=problem)
    expected = measure_map(reference, samples, images, info).map50_95
    produced = measure_map(candidate, samples, images, info).map50_95
    failure = judge(reference.name, len(images), diff, expected, produced, tolerance)
    return Parity(
        **partial, max_abs_diff=diff, map_reference=expected, map_candidate=produced, failure=failure
    )


def judge(
    reference: str, count: int, diff: float, expected: float, produced: float, tolerance: Tolerance
) -> str | None:
    problems = []
    if tolerance.max_abs_diff is not None and diff > tolerance.max_abs_diff:
        problems.append(
            f"raw output differs from {reference} by up to {diff:.6f} "
            f"(tolerance {tolerance.max_abs_diff}; boxes as a fraction of the image, scores as is)"
        )
    if abs(produced - expected) > tolerance.max_map_diff:
        problems.append(
            f"mAP50-95 {produced:.4f} vs {reference} {expected:.4f} on {count} validation images "
            f"differs by {abs(produced - expected):.4f} (tolerance {tolerance.max_map_diff})"
        )
    return "; ".join(problems) + f" [{tolerance.source}]" if problems else None
