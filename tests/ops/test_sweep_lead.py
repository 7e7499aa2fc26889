"""The best trial's lead over the runner-up: a paired bootstrap on real Optuna trials whose
per-image counts make the answer certain by construction."""

from __future__ import annotations

import optuna
from optuna.trial import create_trial

from hydra_plugins.optuna_sweeper import _lead

IMAGES = 40


def counts(tp: int, fp: int, fn: int, images: str = "same") -> dict:
    return {"images": images, "counts": [[tp, fp, fn]] * IMAGES}


def study_of(*trials: tuple[float, dict]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for value, image_counts in trials:
        study.add_trial(create_trial(value=value, user_attrs={_lead.COUNTS_ATTR: image_counts}))
    return study


def test_a_best_trial_that_finds_everything_leads_a_runner_up_that_finds_nothing():
    study = study_of((0.2, counts(0, 0, 3)), (0.9, counts(3, 0, 0)), (0.1, counts(0, 2, 3)))
    best, runner_up, interval = _lead.best_lead(study, set())
    assert (best.number, runner_up.number) == (1, 0)
    assert interval.low > 0.9 and "a real lead" in _lead.describe(best, runner_up, interval)


def test_identical_trials_are_not_told_apart():
    study = study_of((0.51, counts(2, 1, 1)), (0.50, counts(2, 1, 1)))
    _, _, interval = _lead.best_lead(study, set())
    assert interval.low == interval.high == 0.0
    assert "not told apart" in _lead.describe(*_lead.best_lead(study, set()))


def test_no_interval_without_two_trials_on_the_same_images():
    assert _lead.best_lead(study_of((0.5, counts(1, 0, 0))), set()) is None
    other_images = study_of((0.5, counts(1, 0, 0)), (0.4, counts(1, 0, 0, images="other")))
    assert _lead.best_lead(other_images, set()) is None
    discarded = study_of((0.5, counts(1, 0, 0)), (0.4, counts(0, 0, 1)))
    assert _lead.best_lead(discarded, {1}) is None  # a discarded trial is never the runner-up
