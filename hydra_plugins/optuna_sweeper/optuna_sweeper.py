"""`hydra/sweeper=optuna`: the Hydra Sweeper plugin (the work is in `_run`, imported on use)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

import hydra_plugins.optuna_sweeper.config  # noqa: F401  (registers hydra/sweeper=optuna and its groups)

__all__ = ["OptunaSweeper"]


class OptunaSweeper(Sweeper):
    """Optuna study with pruning over Hydra jobs; see hydra_plugins/optuna_sweeper/config.py."""

    def __init__(self, **settings: Any) -> None:
        # Hydra composed and type-checked these against OptunaSweeperConf; kept as one DictConfig.
        self.settings: DictConfig = OmegaConf.create(settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.optuna_sweeper._run import run_sweep

        return run_sweep(self, arguments)
