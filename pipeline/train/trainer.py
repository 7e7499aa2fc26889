"""The project's Ultralytics trainer (imported only when training: it loads Ultralytics).

Ultralytics pickles `type(trainer)` into the state its DDP workers load, so the class must live at
module level in an importable module for every worker, on every node, to rebuild it.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.core.yolo import import_ultralytics
from pipeline.train.callbacks import global_world_size

import_ultralytics()
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402


class PipelineTrainer(DetectionTrainer):
    """Ultralytics sizes the DDP world from this node's device list, which is right on one node
    only; under `torchrun --nnodes N` the process group must span every node's processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world_size = global_world_size(self.world_size, dict(os.environ))
