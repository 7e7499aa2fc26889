"""The project's Ultralytics trainer (imported only when training: it loads Ultralytics).

Ultralytics pickles `type(trainer)` into the state its DDP workers load, so the class must live at
module level in an importable module for every worker, on every node, to rebuild it.

DDP on CPU (`hardware=cpu_ddp` under torchrun, gloo): Ultralytics 8.4 runs DDP on accelerators only.
The overrides below change nothing where a rank trains on a GPU (or NPU/XPU); on CPU they replace
the three places that assume an accelerator, each marked "CPU DDP".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipeline.core.errors import ConfigError
from pipeline.core.faults import is_main_rank, kill_armed
from pipeline.core.yolo import import_ultralytics
from pipeline.train.callbacks import (
    global_world_size,
    kill_at_final_validation,
    kill_at_setup,
    kill_job_if_armed,
    kill_mid_epoch,
)

import_ultralytics()
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils import LOCAL_RANK, LOGGER, RANK  # noqa: E402
from ultralytics.utils.torch_utils import strip_optimizer, torch_distributed_zero_first  # noqa: E402

DDP_TIMEOUT = timedelta(hours=3)  # Ultralytics' own process-group timeout


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP of a CPU module: torch refuses any `device_ids` there, and Ultralytics always passes
    `[self.device.index]`, which is `[None]` on CPU."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module, device_ids=None, **kwargs)


@contextmanager
def cpu_ddp_wrapper() -> Iterator[None]:
    """`torch.nn.parallel.DistributedDataParallel` is the CPU variant inside the block only, so the
    wrap in Ultralytics' `_setup_train` (which reads the name at call time) builds a CPU DDP."""
    parallel = torch.nn.parallel
    original = parallel.DistributedDataParallel
    parallel.DistributedDataParallel = CpuDistributedDataParallel
    try:
        yield
    finally:
        parallel.DistributedDataParallel = original


class PipelineTrainer(DetectionTrainer):
    """Ultralytics sizes the DDP world from this node's device list, which is right on one node
    only; under `torchrun --nnodes N` the process group must span every node's processes.
    It also carries the kill points (`pipeline.core.faults.KILL_POINTS`) that fall between
    Ultralytics' callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # On CPU Ultralytics counts 0 devices; under torchrun the world is torchrun's WORLD_SIZE
        self.world_size = global_world_size(self.world_size, dict(os.environ))
        if self.world_size > 1 and self.batch_size < self.world_size:
            raise ConfigError(
                f"train.batch={self.batch_size} is split over {self.world_size} processes: each needs at "
                f"least one image; set train.batch to {self.world_size} or more"
            )
        self.add_callback("on_train_start", kill_at_setup)
        self.add_callback("on_train_batch_end", kill_mid_epoch)
        self.add_callback("on_val_start", kill_at_final_validation)  # the validator shares these callbacks

    @property
    def cpu_ddp(self) -> bool:
        """Several ranks (torchrun) training on CPU: the gloo path."""
        return self.world_size > 1 and self.device.type == "cpu"

    def _setup_ddp(self) -> None:
        if not self.cpu_ddp:
            return super()._setup_ddp()
        # CPU DDP: Ultralytics' version binds the rank to an accelerator (`torch.device("cuda",
        # LOCAL_RANK)`, nccl when built in); a CPU rank keeps torch.device("cpu") and joins over gloo.
        dist.init_process_group("gloo", timeout=DDP_TIMEOUT, rank=RANK, world_size=self.world_size)
        return None

    def _setup_train(self) -> None:
        if not self.cpu_ddp:
            return super()._setup_train()
        with cpu_ddp_wrapper():  # CPU DDP: Ultralytics wraps with device_ids=[None], which torch refuses
            super()._setup_train()
        return None

    def _do_train(self) -> None:
        try:
            super()._do_train()
        finally:
            if self.cpu_ddp and dist.is_initialized():
                dist.destroy_process_group()

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        super().save_metrics(metrics)  # the results.csv row; the checkpoint is written after it
        kill_job_if_armed("after_results_row", self.epoch + 1)

    def final_eval(self) -> None:
        if is_main_rank() and kill_armed("optimizer_strip") and self.last.exists():
            strip_optimizer(self.last)  # Ultralytics' own first step of final_eval, then the kill
            kill_job_if_armed("optimizer_strip")
        if self.cpu_ddp:
            return self._final_eval_cpu_ddp()
        return super().final_eval()

    def _final_eval_cpu_ddp(self) -> None:
        """CPU DDP: Ultralytics' final step strips both checkpoints, then re-validates best.pt through
        AutoBackend on a device it builds as `torch.device("cuda", current_device())` on every DDP
        rank, which fails without a GPU. The stripping is done as Ultralytics does it; the
        re-validation is skipped, as the project's own finalising step skips it: the stage reports
        from results.csv (each epoch was validated on both ranks over gloo) and the evaluate stage
        validates best.pt."""
        with torch_distributed_zero_first(LOCAL_RANK):  # rank 0 strips while the others wait
            if RANK in {-1, 0}:
                checkpoint = strip_optimizer(self.last) if self.last.exists() else {}
                if self.best.exists():
                    strip_optimizer(self.best, updates={"train_results": checkpoint.get("train_results")})
        kill_job_if_armed("final_validation")  # where the re-validation would start
        LOGGER.info(f"CPU DDP: final re-validation of {self.best.name} skipped (Ultralytics' needs a GPU)")
