"""The registered model: its aliases, the champion history and the version tags retrain keeps."""

from __future__ import annotations

from pathlib import Path

from pipeline.core import tracking
from pipeline.core.artifacts import BEST_WEIGHTS
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import PipelineError
from pipeline.ops.decision import CHAMPION, now

HISTORY_TAG = "champion_history"
ROLLED_BACK_TAG = "retrain.rolled_back"
DATASET_TAG = "pipeline.dataset_hash"
OUTCOME_TAG = "retrain.outcome"  # on each version a retrain decided about
UNDECIDED = "undecided"  # OUTCOME_TAG of a version registered without a decision
HISTORY_KEEP = 200  # champions remembered (a registered-model tag value is bounded)


class RetrainError(PipelineError):
    """A step of the retrain failed (DVC, the registry)."""


def reconciled(history: list[str], champion: str | None) -> tuple[list[str], list[str]]:
    """(history, versions rolled back from) consistent with the champion alias.

    A champion missing from the history was promoted by a command that stopped before writing it;
    one below the top was rolled back to (by `rollback` or by hand), dropping the versions above it.
    """
    if champion is None or (history and history[-1] == champion):
        return history, []
    if champion in history:
        keep = len(history) - history[::-1].index(champion)
        return history[:keep], history[keep:]
    return [*history, champion][-HISTORY_KEEP:], []


class Registry:
    """One registered model's aliases, champion history and version tags."""

    def __init__(self, tracking_uri: str, name: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.name = name

    def aliases(self) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(version) for alias, version in model.aliases.items()}

    def version(self, alias: str):
        number = self.aliases().get(alias)
        return None if number is None else self.client.get_model_version(self.name, number)

    def history(self) -> list[str]:
        tags = self.client.get_registered_model(self.name).tags
        return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]

    def reconcile(self) -> list[str]:
        """Repair the history after an interrupted command; returns it."""
        aliases = self.aliases()
        if not aliases and not self.exists():
            return []
        recorded = self.history()
        history, rolled_back = reconciled(recorded, aliases.get(CHAMPION))
        for version in rolled_back:
            self.client.set_model_version_tag(self.name, version, ROLLED_BACK_TAG, now())
        if history != recorded:
            self.client.set_registered_model_tag(self.name, HISTORY_TAG, ",".join(history))
        return history

    def mark_undecided(self) -> list[str]:
        """Tag the versions no retrain decided about (one killed between registering its challenger
        and deciding, or a model registered outside retrain); returns them. They stay candidates:
        the retrain that reaches them as its challenger decides and replaces the tag."""
        champion = self.aliases().get(CHAMPION)
        versions = self.client.search_model_versions(f"name = '{self.name}'")
        found = sorted(
            (str(v.version) for v in versions if OUTCOME_TAG not in v.tags and str(v.version) != champion),
            key=int,
        )
        for version in found:
            self.client.set_model_version_tag(self.name, version, OUTCOME_TAG, UNDECIDED)
        return found

    def exists(self) -> bool:
        return bool(self.client.search_registered_models(filter_string=f"name = '{self.name}'"))

    def move(self, alias: str, version: str) -> None:
        """One call: the alias leaves its old version as it reaches the new one."""
        self.client.set_registered_model_alias(self.name, alias, version)

    def promote(self, version: str) -> list[str]:
        self.move(CHAMPION, version)
        return self.reconcile()

    def version_of_run(self, run_id: str):
        found = self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'")
        if not found:
            raise RetrainError(
                f"no version of registered model '{self.name}' comes from run {run_id} "
                "(reports/train/run.json): the evaluate stage registers it; check that it ran "
                "(retrain.targets must include evaluate) and logged to the same MLflow tracking URI"
            )
        return max(found, key=lambda v: int(v.version))

    def dataset_hash(self, version) -> str | None:
        return self.client.get_run(version.run_id).data.tags.get(DATASET_TAG) if version.run_id else None

    def download(self, version, target: Path) -> Path:
        """The version's weights as `target/<BEST_WEIGHTS>` (what the evaluate stage expects)."""
        where = f"{self.name} version {version.version}"
        local = tracking.download_checkpoint(version.source, self.tracking_uri, where, target)
        if local != target / BEST_WEIGHTS:
            local.replace(target / BEST_WEIGHTS)
        return target / BEST_WEIGHTS


def open_registry(cfg: PipelineConfig) -> Registry:
    return Registry(tracking.tracking_uri(cfg), cfg.track.register_model)


def is_rolled_back(version) -> bool:
    return ROLLED_BACK_TAG in version.tags
