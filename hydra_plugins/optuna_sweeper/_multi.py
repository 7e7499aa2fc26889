"""Multi-objective sweeps: accuracy against latency, the Pareto front, and the trial to deploy.

`hydra.sweeper.directions: [maximize, minimize]` with `metrics: [mAP50-95, latency_ms]` (either
order) makes a multi-objective study: each job returns its validation metric and its end-to-end
batch-1 latency on the target runtime (`pipeline.ops.latency`). Optuna prunes single-objective
studies only (`Trial.report` refuses a multi-objective trial), so any pruner but `none` is refused.

At the end the Pareto front (`study.best_trials`: no other trial is both more accurate and faster)
is plotted and logged to the parent run, every front trial becomes an overlay
`sweep_<study>_<trial>`, and the chooser picks the trial to deploy, written as `sweep_<study>`: the
most accurate front trial whose FPS (1000 / latency_ms) reaches the hardware profile's
`hardware.target_fps`; if none does, the fastest, and the log and the parent run say so; with no
target in the profile, the most accurate front trial.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from pipeline.ops.latency import LATENCY_METRIC

log = logging.getLogger(__name__)
NOP_PRUNER = "optuna.pruners.NopPruner"


@dataclass(frozen=True)
class Objectives:
    metrics: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def accuracy(self) -> str:
        return next(m for m in self.metrics if m != LATENCY_METRIC)

    def value(self, trial: Any, metric: str) -> float:
        return float(trial.values[self.metrics.index(metric)])


def objectives(settings: Any) -> Objectives:
    """The sweep's objectives: `metric`/`direction`, or `metrics`/`directions`, checked."""
    metrics, directions = settings.get("metrics"), settings.get("directions")
    if metrics is None and directions is None:
        return Objectives((str(settings.metric),), (str(settings.direction),))
    example = "e.g. hydra.sweeper.metrics=[mAP50-95,latency_ms] hydra.sweeper.directions=[maximize,minimize]"
    if metrics is None or directions is None:
        raise HydraException(
            f"a multi-objective sweep sets both hydra.sweeper.metrics and directions ({example})"
        )
    metrics, directions = [str(m) for m in metrics], [str(d).lower() for d in directions]
    wanted = {m: "minimize" if m == LATENCY_METRIC else "maximize" for m in metrics}
    if len(metrics) != 2 or LATENCY_METRIC not in metrics or len(set(metrics)) != 2 or len(directions) != 2:
        raise HydraException(
            f"a multi-objective sweep takes two objectives, a validation metric and {LATENCY_METRIC} "
            f"({example}); got metrics={metrics}, directions={directions}"
        )
    if directions != [wanted[m] for m in metrics]:
        raise HydraException(
            f"directions {directions} do not fit metrics {metrics}: accuracy is maximized and "
            f"{LATENCY_METRIC} minimized, so directions=[{','.join(wanted[m] for m in metrics)}]"
        )
    pruner = str(settings.pruner._target_)
    if pruner != NOP_PRUNER:
        raise HydraException(
            f"Optuna does not prune multi-objective studies (Trial.report and should_prune are for one "
            f"objective), but the pruner is {pruner}: add hydra/sweeper/pruner=none"
        )
    return Objectives(tuple(metrics), tuple(directions))


# ---- the front and the chooser --------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    number: int
    accuracy: float
    latency_ms: float

    @property
    def fps(self) -> float:
        return 1000 / self.latency_ms if self.latency_ms > 0 else math.inf


@dataclass(frozen=True)
class Choice:
    member: Member
    target_fps: float | None
    met: bool | None  # None: the hardware profile sets no target
    reason: str


def member(trial: Any, obj: Objectives) -> Member:
    return Member(trial.number, obj.value(trial, obj.accuracy), obj.value(trial, LATENCY_METRIC))


def completed(study: Any, obj: Objectives, discarded: set[int]) -> list[Member]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [member(t, obj) for t in trials if t.number not in discarded]


def pareto_front(study: Any, obj: Objectives, discarded: set[int]) -> list[Member]:
    """Optuna's Pareto front (`study.best_trials`), fastest first."""
    front = [member(t, obj) for t in study.best_trials if t.number not in discarded]
    return sorted(front, key=lambda m: (m.latency_ms, -m.accuracy, m.number))


def choose(front: Sequence[Member], target_fps: float | None, metric: str = "mAP50-95") -> Choice:
    """The most accurate front trial at or above `target_fps`; none there: the fastest; no target:
    the most accurate. Ties go to the faster trial, then the lower number."""
    if not front:
        raise ValueError("an empty front has nothing to choose from")

    def figures(m: Member) -> str:
        return f"{metric} {m.accuracy:.4g}, {m.latency_ms:.2f} ms = {m.fps:.1f} fps"

    most_accurate = max(front, key=lambda m: (m.accuracy, -m.latency_ms, -m.number))
    if target_fps is None:
        reason = (
            f"no hardware.target_fps in the profile: trial {most_accurate.number}, the most accurate "
            f"front trial ({figures(most_accurate)})"
        )
        return Choice(most_accurate, None, None, reason)
    meeting = [m for m in front if m.fps >= target_fps]
    if meeting:
        best = max(meeting, key=lambda m: (m.accuracy, -m.latency_ms, -m.number))
        reason = (
            f"trial {best.number}: the most accurate of the {len(meeting)} of {len(front)} front trials that "
            f"reach target_fps {target_fps:g} ({figures(best)})"
        )
        return Choice(best, target_fps, True, reason)
    fastest = min(front, key=lambda m: (m.latency_ms, -m.accuracy, m.number))
    reason = (
        f"no front trial reaches target_fps {target_fps:g}: chose the fastest, trial {fastest.number} "
        f"({figures(fastest)}); a smaller model or image size, or a faster runtime, is needed to meet it"
    )
    return Choice(fastest, target_fps, False, reason)


# ---- the plot ---------------------------------------------------------------------------------------


def plot_front(trials: Sequence[Member], front: Sequence[Member], choice: Choice | None, metric: str) -> Any:
    """Accuracy against latency: every completed trial, the front highlighted, the choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    on_front = {m.number for m in front}
    others = [m for m in trials if m.number not in on_front]
    axis.scatter([m.latency_ms for m in others], [m.accuracy for m in others], c="0.6", label="dominated")
    axis.step(
        [m.latency_ms for m in front], [m.accuracy for m in front], where="post", c="tab:red", alpha=0.5
    )
    axis.scatter(
        [m.latency_ms for m in front], [m.accuracy for m in front], c="tab:red", label="Pareto front"
    )
    for m in trials:  # trial numbers, as the overlays sweep_<study>_<trial> are named
        axis.annotate(str(m.number), (m.latency_ms, m.accuracy), textcoords="offset points", xytext=(4, 4))
    if choice is not None:
        axis.scatter(
            [choice.member.latency_ms], [choice.member.accuracy], marker="*", s=250, c="gold",
            edgecolors="k", zorder=3, label=f"chosen (trial {choice.member.number})",
        )  # fmt: skip
        if choice.target_fps:
            limit, slowest = 1000 / choice.target_fps, max(m.latency_ms for m in trials)
            label = f"target {choice.target_fps:g} fps = {limit:.4g} ms"
            if limit <= 1.5 * slowest:
                axis.axvline(limit, ls="--", c="tab:blue", label=label)
            else:  # far right of every trial: a line there would squeeze the points together
                axis.plot([], [], ls="--", c="tab:blue", label=f"{label} (off the plot)")
    axis.set(xlabel=f"{LATENCY_METRIC} (batch 1, end to end)", ylabel=f"{metric} (validation)")
    axis.set_title(f"Pareto front: {len(front)} of {len(trials)} completed trials")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


# ---- the end of a sweep -----------------------------------------------------------------------------

Writer = Callable[[dict, str, str], "Path | None"]  # (trial params, overlay name, header title) -> path


def summarise(
    study: Any, obj: Objectives, client: Any, parent_id: str, target_fps: Any, write: Writer
) -> None:
    """Front, plot, overlays and choice, on the parent run and in conf/experiment."""
    import matplotlib.pyplot as plt

    from hydra_plugins.optuna_sweeper import _overlay, _study

    discarded = _study.discarded_numbers(study)
    trials, front = completed(study, obj, discarded), pareto_front(study, obj, discarded)
    if not front:
        client.set_tag(parent_id, "sweep.chosen_trial", "none (no completed trial)")
        log.info("no completed trial yet: no Pareto front, no overlays")
        return
    target = None if target_fps is None else float(target_fps)
    choice = choose(front, target, obj.accuracy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        figure = plot_front(trials, front, choice, obj.accuracy)
    client.log_figure(parent_id, figure, "sweep/pareto_front.png")
    plt.close(figure)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    overlays = {}
    for m in front:
        name = f"{_overlay.overlay_name(study.study_name)}_{m.number}"
        title = f"Pareto-front trial {m.number} of Optuna study '{study.study_name}': {describe(m, obj)}"
        overlays[m.number] = write(by_number[m.number].params, name, title)
    remove_stale_overlays(overlays, trials, study.study_name)
    chosen = by_number[choice.member.number]
    path = write(chosen.params, _overlay.overlay_name(study.study_name), f"Chosen: {choice.reason}")
    record(client, parent_id, study, obj, front, choice, path)
    for m in front:
        log.info(
            "Pareto front: trial %d, %s (+experiment=%s)",
            m.number,
            describe(m, obj),
            stem(overlays[m.number]),
        )
    log.info("chosen for deployment: %s (+experiment=%s)", choice.reason, stem(path))


def describe(m: Member, obj: Objectives) -> str:
    return f"{obj.accuracy} {m.accuracy:.5g}, {LATENCY_METRIC} {m.latency_ms:.3f} ({m.fps:.1f} fps)"


def stem(path: Path | None) -> str:
    return "-" if path is None else path.stem


def remove_stale_overlays(written: dict[int, Path | None], trials: Sequence[Member], study_name: str) -> None:
    """A trial that left the front (a rerun found better ones) loses the overlay an earlier run wrote."""
    from hydra_plugins.optuna_sweeper._overlay import overlay_name

    directory = next((p.parent for p in written.values() if p is not None), None)
    if directory is None:
        return
    for m in trials:
        stale = directory / f"{overlay_name(study_name)}_{m.number}.yaml"
        if m.number not in written and stale.exists():
            log.info("trial %d is no longer on the Pareto front: removing %s", m.number, stale)
            stale.unlink()


def record(
    client: Any,
    parent_id: str,
    study: Any,
    obj: Objectives,
    front: Sequence[Member],
    choice: Choice,
    path: Any,
) -> None:
    from hydra_plugins.optuna_sweeper._tracking import RUN_ATTR, param_key

    numbers = {m.number for m in front}
    for trial in study.get_trials(deepcopy=False):
        if RUN_ATTR in trial.user_attrs:
            run_id = trial.user_attrs[RUN_ATTR]
            client.set_tag(run_id, "sweep.pareto", str(trial.number in numbers).lower())
            client.set_tag(run_id, "sweep.chosen", str(trial.number == choice.member.number).lower())
    met = "no target" if choice.met is None else str(choice.met).lower()
    tags = {
        "sweep.pareto_trials": ",".join(str(m.number) for m in front),
        "sweep.chosen_trial": str(choice.member.number),
        "sweep.chosen_reason": choice.reason[:5000],
        "sweep.chosen_target_met": met,
        "sweep.target_fps": str(choice.target_fps),
    }
    if path is not None:
        tags["sweep.experiment_overlay"] = str(path)
    for key, value in tags.items():
        client.set_tag(parent_id, key, value)
    step = len(study.trials)
    m = choice.member
    for key, value in {
        "pareto_size": len(front),
        f"chosen_{param_key(obj.accuracy)}": m.accuracy,
        f"chosen_{LATENCY_METRIC}": m.latency_ms,
        "chosen_fps": m.fps,
    }.items():
        client.log_metric(parent_id, key, float(value), step=step)
    report = {"front": [asdict(f) | {"fps": f.fps} for f in front], "choice": asdict(choice)}
    client.log_text(parent_id, json.dumps(report, indent=2, default=str), "sweep/pareto_front.json")
