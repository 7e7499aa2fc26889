"""Images in, model input out: reading and letterboxing exactly as Ultralytics does.

Shared by every runner (pipeline.model.inference) and by TensorRT's INT8 calibrator, so a model is
always fed what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.yolo import import_ultralytics


@dataclass(frozen=True)
class Batch:
    array: np.ndarray  # (B, C, H, W) float32 in [0, 1], RGB for 3 channels
    shapes: tuple[tuple[int, int], ...]  # each image's original (height, width)


def load_image(path: Path, channels: int) -> np.ndarray:
    """An image as Ultralytics reads it: BGR (H, W, 3), or (H, W, 1) for single-channel models."""
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise ConfigError(f"{path}: not a readable image")
    return image[..., None] if image.ndim == 2 else image


def preprocess(images: Sequence[np.ndarray], imgsz: int) -> Batch:
    """Letterbox to a square `imgsz` (centred, grey padding), BGR to RGB, HWC to CHW, scale to [0, 1]."""
    import_ultralytics()
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    boxed = [letterbox(image=image) for image in images]
    boxed = [b[..., None] if b.ndim == 2 else b for b in boxed]
    array = np.stack([b[..., ::-1] if b.shape[-1] == 3 else b for b in boxed]).transpose(0, 3, 1, 2)
    return Batch(np.ascontiguousarray(array, dtype=np.float32) / 255.0, tuple(i.shape[:2] for i in images))
