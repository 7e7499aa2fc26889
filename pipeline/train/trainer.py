"""The project's Ultralytics trainer (imported only when training: it loads Ultralytics).

Ultralytics pickles `type(trainer)` into the state its DDP workers load, so the class must live at
module level in an importable module for every worker, on every node, to rebuild it.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.core.faults import kill_armed, kill_if_armed
from pipeline.core.yolo import import_ultralytics
from pipeline.train.callbacks import (
    global_world_size,
    kill_at_final_validation,
    kill_at_setup,
    kill_mid_epoch,
)

import_ultralytics()
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils.torch_utils import strip_optimizer  # noqa: E402


class PipelineTrainer(DetectionTrainer):
    """Ultralytics sizes the DDP world from this node's device list, which is right on one node
    only; under `torchrun --nnodes N` the process group must span every node's processes.
    It also carries the kill points (`pipeline.core.faults.KILL_POINTS`) that fall between
    Ultralytics' callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world_size = global_world_size(self.world_size, dict(os.environ))
        self.add_callback("on_train_start", kill_at_setup)
        self.add_callback("on_train_batch_end", kill_mid_epoch)
        self.add_callback("on_val_start", kill_at_final_validation)  # the validator shares these callbacks

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        super().save_metrics(metrics)  # the results.csv row; the checkpoint is written after it
        kill_if_armed("after_results_row", self.epoch + 1)

    def final_eval(self) -> None:
        if kill_armed("optimizer_strip") and self.last.exists():
            strip_optimizer(self.last)  # Ultralytics' own first step of final_eval, then the kill
            kill_if_armed("optimizer_strip")
        super().final_eval()
