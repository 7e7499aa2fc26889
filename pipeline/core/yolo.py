"""The one door to Ultralytics: its settings and integrations are fixed before it is imported.

Ultralytics switches on its own MLflow, DVCLive and telemetry callbacks whenever those packages
import, and writes a settings file in the user's config directory. The project logs what it
chooses itself, so here it gets its own config directory and every integration off.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INTEGRATIONS_OFF = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}


def configure_environment() -> None:
    """Set before `import ultralytics`; child processes (DDP workers) inherit it."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(PROJECT_ROOT / ".ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no hub checks, no downloads of fonts or weights


def import_ultralytics() -> ModuleType:
    configure_environment()
    import ultralytics
    from ultralytics.utils import SETTINGS

    if any(SETTINGS.get(key) != value for key, value in INTEGRATIONS_OFF.items()):
        SETTINGS.update(INTEGRATIONS_OFF)
    return ultralytics
