"""Typed configuration of the sweeper, registered in Hydra's ConfigStore.

No `from __future__ import annotations` here: Hydra's plugin scanner executes this module before
it is in `sys.modules`, where dataclasses cannot resolve string annotations.

`hydra/sweeper=optuna` selects `OptunaSweeperConf`; `hydra/sweeper/sampler=<name>` and
`hydra/sweeper/pruner=<name>` pick a sampler and a pruner. Samplers and pruners are `_target_`
nodes: the sweeper builds the sampler (it adds the seed and, for the grid sampler, the search
space), and each job builds the same pruner from the same node to decide, epoch by epoch,
whether its trial goes on.

A multi-objective sweep sets `directions` and `metrics` (two each: a validation metric and
`latency_ms`, see `_multi`), with `hydra/sweeper/sampler=nsgaii` and `hydra/sweeper/pruner=none`.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

PROVIDER = "optuna_sweeper"
SWEEPER_TARGET = "hydra_plugins.optuna_sweeper.optuna_sweeper.OptunaSweeper"


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10
    multivariate: bool = True
    group: bool = False
    constant_liar: bool = True  # parallel workers do not all sample the same promising point


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    n_startup_trials: int = 1
    restart_strategy: str | None = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = True


@dataclass
class GridSamplerConf:
    """Every combination of the (discrete) search space once; `n_trials` is capped at its size."""

    _target_: str = "optuna.samplers.GridSampler"


@dataclass
class NSGAIISamplerConf:
    """NSGA-II for multi-objective studies; the first `population_size` trials are sampled at random."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 5
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 5
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConf:
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MlflowConf:
    # $MLFLOW_TRACKING_URI wins (as in the pipeline's stages); then this; then the app's `track.tracking_uri`
    tracking_uri: str | None = None
    experiment: str | None = None  # null: the app's `track.experiment` (where the jobs' runs go)


@dataclass
class LatencyConf:
    """How each job of a sweep with the objective `latency_ms` measures it: best.pt exported by the
    export stage to `format`, timed by the benchmark stage (batch 1, end to end) on this machine's CPU."""

    format: str = "onnx"  # onnx (ONNX Runtime) or openvino (OpenVINO)
    warmup: int = 2
    runs: int = 10
    threads: int | None = None  # null: benchmark.threads


@dataclass
class OptunaSweeperConf:
    _target_: str = SWEEPER_TARGET
    _recursive_: bool = False  # sampler and pruner stay configs: the sweeper and each job build them
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    study_name: str = "sweep"
    storage: str | None = None  # null: sqlite:///<hydra.sweep.dir>/optuna.db
    direction: str = "maximize"
    metric: str = "mAP50-95"  # what each job reports per epoch and returns (validation split)
    # multi-objective (both set; then direction and metric are not used): e.g. [maximize, minimize]
    # and [mAP50-95, latency_ms]; needs pruner none, e.g. with hydra/sweeper/sampler=nsgaii
    directions: list[str] | None = None
    metrics: list[str] | None = None
    latency: LatencyConf = field(default_factory=LatencyConf)
    n_trials: int = 20  # total for the study: a rerun resumes and stops there
    n_jobs: int = 1  # trials in flight at once (through the configured launcher)
    seed: int | None = None  # sampler seed; give each worker of a shared study its own (or none)
    max_failure_rate: float = 0.25  # stop once failed trials exceed this share of n_trials
    params: dict[str, str] = field(default_factory=dict)  # key -> value or sweep (interval, choice...)
    heartbeat_interval: int | None = 60  # seconds; RDB storages only; null disables stale detection
    grace_period: int | None = 180  # a RUNNING trial silent this long is failed and re-queued
    experiment_dir: str | None = None  # where the best trial's overlay goes; null: <conf>/experiment
    experiment_exclude: list[str] = field(default_factory=lambda: ["sweep", "paths", "track", "hydra"])
    mlflow: MlflowConf = field(default_factory=MlflowConf)


SAMPLERS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "qmc": QMCSamplerConf,
    "grid": GridSamplerConf,
    "nsgaii": NSGAIISamplerConf,
}
PRUNERS = {
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "threshold": ThresholdPrunerConf,
    "none": NopPrunerConf,
}


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider=PROVIDER)
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider=PROVIDER)
    for name, node in PRUNERS.items():
        store.store(group="hydra/sweeper/pruner", name=name, node=node, provider=PROVIDER)


register()
