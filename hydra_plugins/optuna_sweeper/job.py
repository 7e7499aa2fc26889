"""The job's side of a sweep: which trial am I, report to it, ask its pruner, nest my MLflow run.

A job launched by the Optuna sweeper finds its trial from its own Hydra config: the sweeper's
settings (storage, study, pruner) and `hydra.job.num`, which the sweeper sets to the trial
number. Nothing else is passed, so this works with any launcher, on any host that reaches the
storage. `TrialLink` is a small picklable value: training callbacks carry it into DDP workers.

No `from __future__ import annotations`: Hydra's plugin scanner executes this module before it is
in `sys.modules`, where dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra_plugins.optuna_sweeper._tracking import (  # noqa: F401  (re-exported for jobs)
    PRUNED_EPOCH_ATTR,
    RUN_ATTR,
    client_for,
    experiment_id,
    nest,
    shared_run,
    trial_name,
)
from hydra_plugins.optuna_sweeper.config import SWEEPER_TARGET


@dataclass(frozen=True)
class TrialLink:
    storage_url: str
    study_name: str
    number: int
    pruner: dict = field(default_factory=dict)  # the sweeper's pruner node, as a plain dict
    metric: str = "mAP50-95"
    metrics: tuple[str, ...] = ()  # a multi-objective sweep's objectives, in order (empty: `metric` only)
    latency: dict = field(default_factory=dict)  # the sweeper's `latency` node: how latency_ms is measured

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def open(self) -> Any:
        """The trial as an `optuna.Trial` in this process (to report to and ask the pruner)."""
        from hydra_plugins.optuna_sweeper._study import build_pruner, reopen_trial

        return reopen_trial(self.storage_url, self.study_name, self.number, build_pruner(self.pruner))

    def frozen(self) -> Any:
        from hydra_plugins.optuna_sweeper._study import make_storage

        storage = make_storage(self.storage_url)
        study_id = storage.get_study_id_from_name(self.study_name)
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, self.number))

    def parent_run_id(self) -> str | None:
        import optuna

        from hydra_plugins.optuna_sweeper._study import MLFLOW_PARENT_ATTR, make_storage

        study = optuna.load_study(study_name=self.study_name, storage=make_storage(self.storage_url))
        return study.user_attrs.get(MLFLOW_PARENT_ATTR)


def current_trial() -> TrialLink | None:
    """The trial of the running Hydra job, or None outside an Optuna sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.optuna_sweeper._study import storage_url

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.sweeper.get("_target_") != SWEEPER_TARGET:
        return None
    sweeper = hydra_cfg.sweeper
    return TrialLink(
        storage_url=storage_url(sweeper.storage, hydra_cfg.sweep.dir, hydra_cfg.runtime.cwd),
        study_name=sweeper.study_name,
        number=int(hydra_cfg.job.num),
        pruner=OmegaConf.to_container(sweeper.pruner, resolve=True),
        metric=sweeper.metric,
        metrics=tuple(sweeper.get("metrics") or ()),
        latency=OmegaConf.to_container(sweeper.latency, resolve=True) if "latency" in sweeper else {},
    )
