"""Metrics per slice: attributes from names or a CSV, per-slice scores, warnings, the promotion gate."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, DataError
from pipeline.evaluate import results
from pipeline.evaluate import stage as evaluate
from pipeline.evaluate.report import render
from pipeline.evaluate.slices import (
    SliceMetrics,
    attributes_from_csv,
    attributes_from_pattern,
    low_slice_warnings,
    slice_metrics,
    slice_regressions,
)
from pipeline.model.scoring import Sample

PATTERN = r"_(?P<light>day|night)_"


def test_named_groups_of_the_file_name_are_the_attributes():
    names = ["seq000_day_f00.png", "seq001_night_f03.png", "other.png"]
    assert attributes_from_pattern(names, PATTERN) == [{"light": "day"}, {"light": "night"}, {}]
    with pytest.raises(ConfigError, match="named groups"):
        attributes_from_pattern(names, r"_(day|night)_")


def test_csv_attributes_are_keyed_by_file_name(tmp_path):
    table = tmp_path / "attributes.csv"
    table.write_text("image,altitude\nimages/a.png,high\nb.png,low\n")
    assert attributes_from_csv(["a.png", "b.png", "c.png"], table) == [
        {"altitude": "high"},
        {"altitude": "low"},
        {},
    ]
    table.write_text("file,altitude\na.png,high\n")
    with pytest.raises(DataError, match="column 'image'"):
        attributes_from_csv(["a.png"], table)


def labelled(tmp_path, name: str) -> Sample:
    import cv2

    path = tmp_path / name
    cv2.imwrite(str(path), np.zeros((100, 100, 3), np.uint8))
    return Sample(path, np.array([[0, 0.5, 0.5, 0.2, 0.2]]))


def test_each_slice_is_scored_on_its_own_images(tmp_path):
    """Day images get a perfect box, night images a box elsewhere: the slices are 1 and 0, by construction."""
    samples = [labelled(tmp_path, f"s_{light}_{i}.png") for light in ("day", "night") for i in range(3)]
    hit = {"category_id": 1, "bbox": [40.0, 40.0, 20.0, 20.0], "score": 0.9}
    miss = {**hit, "bbox": [0.0, 0.0, 10.0, 10.0]}
    grouped = [[hit] if "day" in s.image.name else [miss] for s in samples]
    attributes = attributes_from_pattern([s.image.name for s in samples], PATTERN)
    day, night = slice_metrics(samples, grouped, attributes, classes=1)
    assert (day.key, day.images, day.instances) == ("light=day", 3, 3)
    assert (
        day.map50 == pytest.approx(1.0)
        and day.map50_95 == pytest.approx(1.0)
        and day.recall == pytest.approx(1)
    )
    assert (night.key, night.map50, night.recall) == ("light=night", 0.0, 0.0)
    [warning] = low_slice_warnings([day, night], ratio=0.5, min_instances=3)
    assert "light=night" in warning
    assert low_slice_warnings([day, night], ratio=0.5, min_instances=4) == []  # too few objects to judge


def scored(value: str, map50_95: float, instances: int = 50) -> SliceMetrics:
    return SliceMetrics("light", value, 10, instances, map50_95 + 0.2, map50_95, 0.5)


def test_slice_regressions_name_the_slice_that_dropped():
    champion = [scored("day", 0.60), scored("night", 0.40)]
    challenger = [scored("day", 0.70), scored("night", 0.30)]
    [reason] = slice_regressions(champion, challenger, max_drop=0.05, min_instances=10)
    assert "light=night" in reason and "0.400 -> 0.300" in reason
    assert slice_regressions(champion, challenger, max_drop=0.2, min_instances=10) == []
    few = [scored("day", 0.7), scored("night", 0.3, instances=5)]
    assert slice_regressions(champion, few, max_drop=0.05, min_instances=10) == []
    as_json = [s.as_dict() for s in challenger]  # as details.json stores them
    assert slice_regressions([s.as_dict() for s in champion], as_json, 0.05, 10) == [reason]


def test_evaluate_reports_the_synthetic_lighting_slices(project, tmp_path):
    """The tiny project's val+test frames are sequence 2 (day); a CSV adds a second attribute."""
    table = tmp_path / "attributes.csv"
    names = sorted(p.name for p in (project.prepared / "images" / "test").glob("*.png"))
    table.write_text(
        "image,altitude\n" + "".join(f"{n},{'high' if i % 2 else 'low'}\n" for i, n in enumerate(names))
    )
    e = evaluate.run(project.config(tmp_path, f"evaluate.slices_csv={table}"))
    assert [(s.key, s.images) for s in e.slices] == [
        ("altitude=high", 2),
        ("altitude=low", 2),
        ("light=day", 4),
    ]
    assert sum(s.instances for s in e.slices if s.attribute == "altitude") == e.instances
    assert results.details_json(e)["slices"][2]["value"] == "day"
    assert "## Per slice" in render(e, "m", "r", "1", "candidate")
