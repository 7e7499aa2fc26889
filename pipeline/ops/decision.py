"""The promotion rule and the decision it produces (pure: no registry, no files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.core.config import RETRAIN_METRICS, RetrainConfig
from pipeline.evaluate.compare import Interval
from pipeline.evaluate.slices import slice_regressions

CHAMPION, CHALLENGER = "champion", "challenger"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelScore:
    """A registered model version and its metrics."""

    version: str
    run_id: str
    dataset_hash: str | None  # of the data it was trained on
    metrics: dict[str, float]  # RETRAIN_METRICS
    per_class: dict[str, float]  # AP50-95 of each class with instances in the split
    measured: str  # where the metrics come from
    slices: tuple[dict, ...] = ()  # evaluate.slices metrics on the same split (SliceMetrics.as_dict)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    metric_delta: float | None  # challenger - champion on the rule's metric
    class_deltas: dict[str, float] = field(default_factory=dict)
    regressions: dict[str, float] = field(default_factory=dict)  # classes falling beyond the bound
    interval: Interval | None = None  # paired bootstrap of challenger - champion F1 on the same images
    slice_regressions: tuple[str, ...] = ()  # slices falling beyond retrain.max_slice_drop, in words


@dataclass(frozen=True)
class Decision:
    command: str  # retrain | rollback
    outcome: str  # promoted | kept | nothing_to_do | failed | rolled_back
    reason: str
    model: str  # the registered model's name
    rule: str
    started: str
    finished: str = field(default_factory=now)
    champion_before: str | None = None
    champion_after: str | None = None
    # by role: champion and challenger (retrain), rolled_back and restored (rollback)
    scores: dict[str, ModelScore] = field(default_factory=dict)
    verdict: Verdict | None = None
    dataset_hash: str | None = None  # of the current data
    split: str | None = None  # what the models were evaluated on


# ---- the rule (pure) ------------------------------------------------------------------------------


def rule_text(rule: RetrainConfig) -> str:
    return (
        f"promote when challenger {rule.metric} - champion {rule.metric} >= {rule.min_improvement}, "
        f"the lower bound of the {rule.confidence:.0%} paired bootstrap interval of challenger - champion "
        f"F1 (per image, at each model's deployment thresholds) >= {rule.min_improvement}, no "
        f"class's AP50-95 falls by more than {rule.max_class_drop} and no slice's mAP50-95 by more than "
        f"{rule.max_slice_drop}; the first model is promoted"
    )


def class_deltas(champion: ModelScore, challenger: ModelScore) -> dict[str, float]:
    names = sorted(set(champion.per_class) | set(challenger.per_class))
    return {n: round(challenger.per_class.get(n, 0.0) - champion.per_class.get(n, 0.0), 5) for n in names}


def decide(
    champion: ModelScore | None,
    challenger: ModelScore,
    rule: RetrainConfig,
    interval: Interval | None = None,
    slice_min_instances: int = 0,
    replicas: Sequence[ModelScore] = (),
) -> Verdict:
    """Promote or keep, with the reason in words. `interval`: the paired bootstrap of the F1
    difference on the evaluation images (None only without a champion); slices with fewer objects
    than `slice_min_instances` (evaluate's) are too noisy to block a promotion. `replicas`: the
    challenger's recipe trained with other seeds (retrain --seeds); the metric margin is then
    checked on the mean over all seeds, the class and slice bounds on the challenger itself."""
    if champion is None:
        return Verdict(True, "no champion yet: the first model becomes champion", None)
    seeds = [challenger, *replicas]
    ours = sum(s.metrics[rule.metric] for s in seeds) / len(seeds)
    theirs = champion.metrics[rule.metric]
    delta = round(ours - theirs, 5)
    deltas = class_deltas(champion, challenger)
    regressions = {name: d for name, d in deltas.items() if d < -rule.max_class_drop}
    mean = f" (mean of {len(seeds)} seeds)" if replicas else ""
    compared = f"{rule.metric} {ours:.4f}{mean} against the champion's {theirs:.4f} ({delta:+.4f})"
    if regressions:
        fallen = ", ".join(f"{name} {d:+.4f}" for name, d in regressions.items())
        reason = f"{compared}, but AP50-95 falls by more than {rule.max_class_drop} for: {fallen}"
        return Verdict(False, reason, delta, deltas, regressions, interval)
    fallen_slices = tuple(
        slice_regressions(champion.slices, challenger.slices, rule.max_slice_drop, slice_min_instances)
    )
    if fallen_slices:
        reason = f"{compared}, but a slice falls: {'; '.join(fallen_slices)}"
        return Verdict(False, reason, delta, deltas, interval=interval, slice_regressions=fallen_slices)
    if delta < rule.min_improvement:
        reason = f"{compared}: below the margin {rule.min_improvement}"
        return Verdict(False, reason, delta, deltas, interval=interval)
    if interval is None or not interval.clears(rule.min_improvement):
        reason = f"{compared}, but {interval_text(interval)} does not clear the margin {rule.min_improvement}"
        return Verdict(False, reason + ": the gain may be noise", delta, deltas, interval=interval)
    reason = (
        f"{compared} and {interval_text(interval)} clear the margin {rule.min_improvement}; "
        "no class falls beyond the bound"
    )
    return Verdict(True, reason, delta, deltas, interval=interval)


def interval_text(interval: Interval | None) -> str:
    if interval is None:
        return "no paired interval (the models were not scored on the same images)"
    seeds = f" and {interval.seeds} challenger seeds" if interval.seeds > 1 else ""
    return (
        f"the {interval.level:.0%} paired bootstrap interval of the F1 difference "
        f"[{interval.low:+.4f}, {interval.high:+.4f}] ({interval.resamples} resamples of the images{seeds})"
    )


def render_markdown(d: Decision) -> str:
    lines = [
        f"# {d.command.capitalize()} decision: {d.outcome.replace('_', ' ')}",
        "",
        f"- **Outcome:** {d.outcome.replace('_', ' ')}",
        f"- **Why:** {d.reason}",
        f"- **Registered model:** `{d.model}`; champion before: {version_text(d.champion_before)}, "
        f"after: {version_text(d.champion_after)}",
        f"- **Rule:** {d.rule}",
        f"- **When:** {d.started} to {d.finished}",
    ]
    if d.dataset_hash:
        lines.append(f"- **Data:** dataset_hash `{d.dataset_hash}`")
    if d.split:
        models = "both models" if len(d.scores) == 2 else "the model"
        lines.append(f"- **Evaluated on:** the current {d.split}, {models} with the evaluate stage's code")
    if d.verdict and d.verdict.interval:
        i = d.verdict.interval
        lines.append(f"- **F1 difference (challenger - champion):** {i.delta:+.4f}, {interval_text(i)}")
    return "\n".join(lines + metric_table(d) + class_table(d)) + "\n"


def version_text(version: str | None) -> str:
    return "none" if version is None else f"version {version}"


def metric_table(d: Decision) -> list[str]:
    if not d.scores:
        return []
    roles = list(d.scores)
    head = "| | " + " | ".join(f"{r} (v{d.scores[r].version})" for r in roles) + " |"
    rows = ["", "## Metrics", "", head, "|---" * (len(roles) + 1) + "|"]
    for key in RETRAIN_METRICS:
        cells = [fmt(d.scores[r].metrics.get(key)) for r in roles]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    rows.append(
        "| trained on data | " + " | ".join(f"`{(d.scores[r].dataset_hash or '?')[:12]}`" for r in roles)
    )
    rows[-1] += " |"
    rows.append("| measured on | " + " | ".join(d.scores[r].measured for r in roles) + " |")
    return rows


def class_table(d: Decision) -> list[str]:
    if not (d.verdict and d.verdict.class_deltas):
        return []
    champion, challenger = d.scores[CHAMPION], d.scores[CHALLENGER]
    rows = [
        "",
        "## AP50-95 per class",
        "",
        "| class | champion | challenger | delta | |",
        "|---|---|---|---|---|",
    ]
    for name, delta in d.verdict.class_deltas.items():
        flag = "falls beyond the bound" if name in d.verdict.regressions else ""
        cells = [
            fmt(champion.per_class.get(name)),
            fmt(challenger.per_class.get(name)),
            f"{delta:+.4f}",
            flag,
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
