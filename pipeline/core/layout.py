"""Ultralytics' YOLO folder convention, in one place: which files are images, and where the label
file of an image is. Readers of a source, analyze, evaluate and select all follow it."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # what prepare reads and writes


def label_path(image: Path) -> Path:
    """Ultralytics' rule (`img2label_paths`): the last `/images/` becomes `/labels/`, the suffix `.txt`."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(labels.join(str(image).rsplit(images, 1)).rsplit(".", 1)[0] + ".txt")
