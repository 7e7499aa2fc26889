"""Knowledge distillation: `train.distill.teacher` trains the student against a teacher checkpoint.

Ultralytics 8.4 wraps the student in `ultralytics.nn.distill_model.DistillationModel` when the
trainer gets `distill_model` (a checkpoint path); the teacher stays frozen and feature maps at the
same levels are matched through a learnt projector. The teacher is a weights path or any URI MLflow
resolves (`models:/yolo-detector@champion`, `runs:/<id>/train/weights/best.pt`). A teacher that
detects other classes, or reads another number of channels, would teach the student the wrong
thing, so it is refused before training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError
from pipeline.core.tracking import download_checkpoint, tracking_uri
from pipeline.model.info import file_sha256, read_model_info, require_weights

URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def resolve_teacher(cfg: PipelineConfig) -> Path | None:
    """The teacher's checkpoint on local disk (downloaded for an MLflow URI), or None without one."""
    teacher = cfg.train.distill.teacher
    if teacher is None:
        return None
    if not teacher.startswith(URI_SCHEMES):
        return require_weights(Path(teacher))
    return download_checkpoint(teacher, tracking_uri(cfg), f"train.distill.teacher={teacher!r}")


def check_teacher(cfg: PipelineConfig, weights: Path) -> None:
    info = read_model_info(weights)
    names, channels = tuple(cfg.classes.names), cfg.sensor.channels
    if info.names != names:
        raise ConfigError(
            f"train.distill.teacher={cfg.train.distill.teacher!r} detects {list(info.names)}, the student "
            f"{list(names)}: distil from a teacher trained on the same classes"
        )
    if info.channels != channels:
        raise ConfigError(
            f"train.distill.teacher={cfg.train.distill.teacher!r} reads {info.channels} channel(s), the "
            f"student {channels} (sensor.channels): distil from a teacher of the same sensor"
        )


def teacher_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """Ultralytics `train()` keywords for distillation: none without a teacher."""
    weights = resolve_teacher(cfg)
    if weights is None:
        return {}
    check_teacher(cfg, weights)
    return {"distill_model": str(weights)}


def teacher_lineage(cfg: PipelineConfig) -> dict[str, str]:
    """MLflow tags naming the teacher as configured and the checkpoint it resolved to."""
    weights = resolve_teacher(cfg)
    if weights is None:
        return {}
    return {
        "pipeline.distill.teacher": str(cfg.train.distill.teacher),
        "pipeline.distill.sha256": file_sha256(weights),
    }
