"""The kill switch: `PIPELINE_KILL_AT=<point>[:<epoch>]` SIGKILLs the process at a named moment.

This is how the tests prove that a rerun recovers from `kill -9` anywhere (README, "Reliability"),
and how a user can drill the same faults. Every point is listed here, in the order a pipeline run
reaches them, so a misspelt point fails loudly instead of silently never firing.
"""

from __future__ import annotations

import os
import signal

from pipeline.core.errors import ConfigError

KILL_ENV = "PIPELINE_KILL_AT"
KILL_POINTS = (
    "swap_between_renames",  # prepare: the old dataset is moved aside, the new one not yet in place
    "setup",  # train: Ultralytics built the model, data and optimizer, before epoch 1
    "mid_epoch",  # train: after the first batch of the epoch
    "after_results_row",  # train: the epoch's results.csv row is written, its checkpoint is not
    "optimizer_strip",  # train: training ended; last.pt is stripped of its optimizer, best.pt is not yet
    "final_validation",  # train: both checkpoints stripped; Ultralytics' final validation starts
    "evaluate_validated",  # evaluate: Ultralytics' validation ran; no evaluate output is written yet
    "evaluate_registered",  # evaluate: the version is registered; metrics.json and the report are not
    "export_exported",  # export (n: the format's place in export.formats): exported, not yet checked
    "export_published",  # export: every checked format is staged; models/ is not swapped yet
)


def is_main_rank() -> bool:
    """Rank 0 under torchrun, or no distributed launch at all."""
    return int(os.environ.get("RANK", -1)) in (-1, 0)


def kill_armed(point: str, epoch: int | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether `KILL_ENV` asks for a kill at `point` (at `epoch`, 1-based, when it names one)."""
    armed = (os.environ if environ is None else environ).get(KILL_ENV, "")
    if not armed:
        return False
    name, _, at_epoch = armed.partition(":")
    if name not in KILL_POINTS:
        raise ConfigError(
            f"{KILL_ENV}={armed!r}: unknown point {name!r}; use one of {', '.join(KILL_POINTS)}"
        )
    return name == point and (not at_epoch or epoch == int(at_epoch))


def kill_if_armed(point: str, epoch: int | None = None) -> None:
    """Die here, as `kill -9` would, when the switch names this point (on rank 0 only)."""
    if is_main_rank() and kill_armed(point, epoch):
        os.kill(os.getpid(), signal.SIGKILL)
