"""MLflow records of a sweep: one parent run per study, one nested run per trial, plots, the best.

Only `MlflowClient` is used (never an active fluent run): with Hydra's basic launcher the jobs run
in this process and open their own runs with `mlflow.start_run`.
Nesting is the `mlflow.parentRunId` tag, which is what `start_run(nested=True)` writes too; it
works across processes and hosts, where a fluent parent run does not exist.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the MLflow run of the trial's job
PRUNED_EPOCH_ATTR = "pruned_epoch"
TAG_WRITE_ATTEMPTS = 3  # a tag write that loses a race with another worker is retried
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def client_for(tracking_uri: str | None) -> MlflowClient:
    """A client whose tag writes survive the other workers of the study writing the same tag."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    class SharedStudyClient(MlflowClient):
        def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None):
            """Workers that finish together summarise the shared parent run (and mark the trial
            runs) at the same moment: on PostgreSQL two first writes of one tag both INSERT, and
            the loser gets a unique-key error. The row exists by then, so writing again updates it."""
            for attempt in range(TAG_WRITE_ATTEMPTS):
                try:
                    return super().set_tag(run_id, key, value, synchronous=synchronous)
                except MlflowException:
                    if attempt == TAG_WRITE_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))

    return SharedStudyClient(tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:  # another worker created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def shared_run(client: MlflowClient, exp_id: str, key: str, value: str, run_name: str) -> tuple[str, bool]:
    """(run id, created by this call) of the one run tagged `key=value`.

    Workers that start together may each create one; all then keep the earliest (by start time,
    then id) and the others delete theirs, so every worker ends up with the same run.
    """
    existing = runs_tagged(client, exp_id, key, value)
    if existing:
        return existing[0], False
    mine = client.create_run(exp_id, run_name=run_name, tags={key: value}).info.run_id
    earliest = runs_tagged(client, exp_id, key, value)[0]
    if earliest != mine:
        client.delete_run(mine)
    return earliest, earliest == mine


def runs_tagged(client: MlflowClient, exp_id: str, key: str, value: str) -> list[str]:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{key}` = '{value}'", max_results=1000)
    return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]


def nest(client: MlflowClient, run_id: str, parent_id: str, name: str, tags: Mapping[str, str]) -> None:
    client.set_tag(run_id, PARENT_TAG, parent_id)
    client.set_tag(run_id, RUN_NAME_TAG, name)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def param_key(name: str) -> str:
    """MLflow keys allow alphanumerics and `_-. /`; override keys may start with `+` or hold `@`."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in name)


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


# ---- the sweep's parent run -----------------------------------------------------------------------


def open_parent(client: MlflowClient, exp_id: str, study_name: str, description: Mapping[str, Any]) -> str:
    run_id, created = shared_run(client, exp_id, "sweep.study", study_name, f"sweep-{study_name}")
    if created:
        for key, value in description.items():
            client.log_param(run_id, param_key(key), str(value)[:6000])
    client.set_tag(run_id, "sweep.kind", "optuna")
    client.log_dict(run_id, {k: str(v) for k, v in description.items()}, "sweep/description.json")
    client.update_run(run_id, status="RUNNING")
    return run_id


def finish_parent(client: MlflowClient, run_id: str, failed: bool) -> None:
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


# ---- trial runs -----------------------------------------------------------------------------------


def record_trial(
    client: MlflowClient,
    exp_id: str,
    parent_id: str,
    trial: optuna.trial.FrozenTrial,
    metrics: Sequence[str] = (),
) -> str:
    """Tag the trial's run (its job made it) with the outcome, or make one for a trial whose job
    never reached MLflow (e.g. it failed while composing its configuration)."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    state = trial.state.name
    if run_id is None:
        run_id = client.create_run(exp_id, run_name=trial_name(trial.number)).info.run_id
        for key, value in trial.params.items():
            client.log_param(run_id, param_key(key), str(value))
        client.set_terminated(run_id, status=STATUS.get(state, "FAILED"))
    tags = {
        "sweep.trial": str(trial.number),
        "sweep.state": state,
        **{f"optuna.{param_key(k)}": str(v) for k, v in trial.params.items()},
    }
    if PRUNED_EPOCH_ATTR in trial.user_attrs:
        tags["sweep.pruned_epoch"] = str(trial.user_attrs[PRUNED_EPOCH_ATTR])
    if "error" in trial.user_attrs:
        tags["sweep.error"] = str(trial.user_attrs["error"])[:5000]
    nest(client, run_id, parent_id, trial_name(trial.number), tags)
    values = trial.values or []
    if len(values) == 1 and math.isfinite(values[0]):
        client.log_metric(run_id, "sweep/objective", values[0])
    elif len(values) > 1:  # multi-objective: one metric per objective, by its name
        for name, value in zip(metrics, values, strict=True):
            if math.isfinite(value):
                client.log_metric(run_id, f"sweep/{param_key(name)}", value)
    return run_id


def mark_best(
    client: MlflowClient, parent_id: str, study: optuna.Study, metric: str, discarded: set[int]
) -> None:
    """Tag the best trial's run (and only it) and summarise it on the parent run."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number not in discarded]
    if not complete:
        client.set_tag(parent_id, "sweep.best_trial", "none (no completed trial)")
        return
    best = study.best_trial
    for trial in study.get_trials(deepcopy=False):
        if RUN_ATTR in trial.user_attrs:
            client.set_tag(trial.user_attrs[RUN_ATTR], "sweep.best", str(trial.number == best.number).lower())
    client.set_tag(parent_id, "sweep.best_trial", str(best.number))
    client.set_tag(parent_id, "sweep.best_run_id", str(best.user_attrs.get(RUN_ATTR, "")))
    client.set_tag(parent_id, "sweep.best_params", json.dumps(best.params, default=str))
    client.log_metric(parent_id, f"best_{param_key(metric)}", float(best.value), step=len(study.trials))


def record_lead(client: MlflowClient, parent_id: str, best: Any, runner_up: Any, interval: Any) -> None:
    """The paired F1 interval of the best trial over the runner-up, on the parent run."""
    client.set_tag(parent_id, "sweep.runner_up_trial", str(runner_up.number))
    step = max(best.number, runner_up.number) + 1
    for name in ("delta", "low", "high"):
        client.log_metric(parent_id, f"best_lead_F1_{name}", float(getattr(interval, name)), step=step)


# ---- plots ----------------------------------------------------------------------------------------


def log_plots(client: MlflowClient, parent_id: str, study: optuna.Study) -> dict[str, str]:
    """Optuna's plots as PNGs on the parent run; returns {plot: reason} for the plots skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    wanted: dict[str, tuple[Callable[..., Any], int]] = {
        "optimization_history": (plots.plot_optimization_history, 1),
        "intermediate_values": (plots.plot_intermediate_values, 0),
        "parallel_coordinate": (plots.plot_parallel_coordinate, 1),
        "param_importances": (plots.plot_param_importances, 2),
    }
    skipped = {}
    for name, (plot, minimum) in wanted.items():
        if complete < minimum:
            skipped[name] = f"needs {minimum} completed trials, the study has {complete}"
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of parameters that never varied
                skipped[name] = str(exc)
                continue
        figure = first_axes(axes).figure
        figure.tight_layout()
        client.log_figure(parent_id, figure, f"sweep/{name}.png")
        plt.close(figure)
    for name, reason in skipped.items():
        client.set_tag(parent_id, f"sweep.plot_skipped.{name}", reason[:5000])
    return skipped


def first_axes(axes: Any) -> Any:
    """Optuna returns one Axes or an array of them (one per parameter)."""
    return axes.flat[0] if hasattr(axes, "flat") else axes
