"""What a trained detector is, read once from its checkpoint: classes, input size, channels, hash.

Evaluate, export, benchmark and deploy all need the same few facts about `best.pt`; the export
metadata JSON carries them on to the exported files, so a deployed model never has to be
reopened in PyTorch to learn its classes or input size.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import MissingDependencyError
from pipeline.core.io import read_json
from pipeline.core.yolo import import_ultralytics

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    names: tuple[str, ...]
    imgsz: int  # the square input size the model was trained at
    channels: int
    end2end: bool  # NMS-free head (YOLOv10, YOLO26): outputs (B, max_det, 6) instead of (B, 4 + C, anchors)
    sha256: str  # of the source weights

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "names": list(self.names)}

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> ModelInfo:
        return ModelInfo(
            tuple(raw["names"]), int(raw["imgsz"]), int(raw["channels"]), bool(raw["end2end"]), raw["sha256"]
        )


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (names and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def require_weights(weights: Path) -> Path:
    if not Path(weights).exists():
        raise MissingDependencyError(f"{weights} not found: run the train stage first (dvc repro train)")
    return Path(weights)


def read_model_info(weights: Path) -> ModelInfo:
    """Facts of an Ultralytics checkpoint; the image size is the one it was trained at."""
    import_ultralytics()
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(str(require_weights(weights)))
    train_args = ckpt.get("train_args") or model.args
    return ModelInfo(
        names=tuple(str(model.names[i]) for i in sorted(model.names)),
        imgsz=int(train_args["imgsz"]),
        channels=int(model.yaml.get("channels", 3)),
        end2end=bool(getattr(model, "end2end", False)),
        sha256=file_sha256(weights),
    )


def exported_models(directory: Path) -> dict[str, tuple[Path, ModelInfo]]:
    """format -> (model file, its facts), from the metadata files an export stage wrote."""
    found = {}
    for meta_file in sorted(Path(directory).glob("*.json")):
        meta = read_json(meta_file)
        found[meta["format"]] = (Path(directory) / meta["file"], ModelInfo.from_dict(meta))
    return found
