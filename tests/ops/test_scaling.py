"""The data-scaling forecast: the power-law fit on known points, and one tiny end-to-end run."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.core.artifacts import Artifacts
from pipeline.core.compose import compose_config
from pipeline.core.io import read_json
from pipeline.data.prepare import run as prepare
from pipeline.ops import scaling
from pipeline.ops.scaling import fit_power_law, images_for, nested_subsets
from tests.conftest import tiny_overrides

SIZES = np.array([50, 100, 200, 400, 800, 1600])
A, B, C = 0.8, 2.0, 0.5  # mAP(n) = 0.8 - 2 n^-0.5: 0.52 at 50 images, 0.75 at 1600


def law(n: np.ndarray) -> np.ndarray:
    return A - B * n**-C


def test_fit_recovers_a_known_power_law_and_its_forecast():
    noisy = law(SIZES) + np.random.default_rng(0).normal(0, 0.002, len(SIZES))
    fit = fit_power_law(SIZES, noisy, target=0.7)
    assert (fit.a, fit.b, fit.c) == pytest.approx((A, B, C), rel=0.05)
    truth = float(images_for(0.7, A, B, C))  # (2 / 0.1)^2 = 400
    assert truth == pytest.approx(400)
    assert fit.low <= truth <= fit.high and fit.needed == pytest.approx(truth, rel=0.1)
    assert fit.trustworthy, fit.problems


def test_flat_points_are_flagged_untrustworthy():
    flat = 0.3 + np.random.default_rng(1).normal(0, 0.01, len(SIZES))
    fit = fit_power_law(SIZES, flat, target=0.25)
    assert not fit.trustworthy and any("no curvature" in p for p in fit.problems)


def test_noisy_points_give_an_interval_wider_than_the_prediction():
    noisy = law(SIZES) + np.random.default_rng(0).normal(0, 0.05, len(SIZES))
    fit = fit_power_law(SIZES, noisy, target=0.7)
    assert not fit.trustworthy and any("wider than the prediction" in p for p in fit.problems)


def test_too_few_points_and_an_unreachable_target_are_said_plainly():
    few = fit_power_law(SIZES[:3], law(SIZES[:3]), target=0.7)
    assert few.needed is None and "too few points" in few.problems[0]
    above = fit_power_law(SIZES, law(SIZES), target=0.9)
    assert any("above the fitted ceiling" in p for p in above.problems)
    assert above.as_dict()["needed"] is None  # inf is not JSON


def test_subsets_are_nested():
    images = [Path(f"{i}.png") for i in range(40)]
    subsets = nested_subsets(images, [0.5, 0.125, 1.0, 0.25], seed=0)
    assert [len(s) for s in subsets.values()] == [5, 10, 20, 40]
    sizes = list(subsets.values())
    assert all(set(small) <= set(big) for small, big in itertools.pairwise(sizes))


def test_scaling_trains_each_subset_as_a_child_run(tmp_path):
    """Structure only: two subsets at 32 px, one epoch; the fitted numbers mean nothing at this size."""
    overrides = [
        *tiny_overrides(tmp_path, images=24, size=32),
        "train.epochs=1",
        f"paths.scaling={tmp_path / 's'}",
    ]
    cfg = compose_config(overrides)
    prepare(cfg)
    forecast = scaling.run(cfg, [0.5, 1.0])
    points = forecast["points"]
    assert [p["fraction"] for p in points] == [0.5, 1.0] and points[0]["images"] < points[1]["images"]
    client = MlflowClient(cfg.track.tracking_uri)
    parents = {client.get_run(p["run_id"]).data.tags["mlflow.parentRunId"] for p in points}
    assert len(parents) == 1 and len({p["run_id"] for p in points}) == 2
    assert not forecast["fits"]["all"]["trustworthy"]  # two points never make a trustworthy fit
    files = Artifacts.of(cfg).scaling
    assert read_json(files.forecast) == json.loads(json.dumps(forecast))
    assert files.plot.stat().st_size > 0 and "too few points" in files.report.read_text()


def test_a_forecast_with_an_unbounded_interval_is_described_after_a_json_round_trip():
    """forecast.json stores inf as null; the command prints the fits it read back from there."""
    fit = scaling.PowerLawFit(
        (10, 20, 40, 80), (0.1, 0.2, 0.25, 0.27), 0.3, 0.3, 1.0, 0.5, 400.0, 90.0, math.inf
    )
    back = {k: v for k, v in fit.as_dict().items() if k != "trustworthy"}
    assert back["high"] is None
    assert "400 images (5-95 %: 90 .. unbounded)" in scaling.describe("all", scaling.PowerLawFit(**back))
