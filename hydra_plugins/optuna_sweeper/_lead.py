"""How sure is the best trial's lead? A paired bootstrap of its F1 against the runner-up's.

The objective picks the best trial on the validation split, where one lucky epoch can decide. Each
job of the pipeline also returns its per-image TP/FP/FN on the evaluation split (at the deployment
thresholds); the two best trials are paired image by image and the images resampled, as retrain's
champion/challenger decision does (`pipeline.evaluate.compare`). An interval that contains 0 says
the sweep did not tell them apart: compare them over seeds before trusting the ranking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluate.compare import Interval, paired_bootstrap

COUNTS_ATTR = (
    "image_counts"  # trial user attribute: {"images": <hash of the image names>, "counts": [[tp, fp, fn]]}
)


def ranked(study, discarded: set[int]) -> list:
    """Completed trials with per-image counts, best first in the study's direction."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number not in discarded and COUNTS_ATTR in t.user_attrs
    ]
    return sorted(complete, key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)


def best_lead(study, discarded: set[int], resamples: int = 1000, level: float = 0.95) -> tuple | None:
    """(best, runner-up, interval of F1(best) - F1(runner-up)), or None without two comparable trials."""
    trials = ranked(study, discarded)
    if len(trials) < 2:
        return None
    best, runner_up = trials[0], trials[1]
    a, b = best.user_attrs[COUNTS_ATTR], runner_up.user_attrs[COUNTS_ATTR]
    if a["images"] != b["images"] or not a["counts"]:
        return None  # scored on other images (another dataset, another split): no pairing
    interval = paired_bootstrap(np.array(b["counts"]), np.array(a["counts"]), resamples, level, seed=0)
    return best, runner_up, interval


def describe(best: Any, runner_up: Any, interval: Interval) -> str:
    verdict = (
        "a real lead" if interval.low > 0 else "not told apart (the interval contains 0): compare over seeds"
    )
    return (
        f"best trial {best.number} against runner-up {runner_up.number} on the evaluation images: F1 "
        f"{interval.delta:+.4f}, {interval.level:.0%} interval [{interval.low:+.4f}, {interval.high:+.4f}]; "
        f"{verdict}"
    )
