"""The analyze rules (model family, scale, P2 head, data sufficiency) against the guide's numbers."""

from __future__ import annotations

import pytest

from pipeline.core import advice, rules
from pipeline.core.compose import compose_config
from pipeline.core.rules import DatasetFacts

THERMAL = compose_config(["sensor=thermal"]).sensor
RGB = compose_config(["sensor=rgb"]).sensor


@pytest.mark.parametrize(
    ("fraction_small", "images", "platform", "family"),
    [
        (0.1, 2999, "rtx5090", "yolov9"),  # small data first: v9 needs the least (Table 6)
        (0.6, 1000, "rtx5090", "yolov9"),  # even with many small objects: v12 needs the most data
        (0.3, 3000, "rtx5090", "yolo11"),  # 30 % is not "> 30 %" (13.2.1)
        (0.31, 3000, "rtx5090", "yolo12"),
        (0.31, 20000, "jetson_nano", "yolo11"),  # v12 is poor on edge (Table 6)
        (0.05, 20000, "cpu", "yolo11"),
    ],
)
def test_model_family(fraction_small, images, platform, family):
    value, reason = advice.model_family_rule(fraction_small, images, platform)
    assert value == family and reason and "thermal" not in reason  # an RGB dataset hears nothing of it
    if value == "yolov9":
        assert "thermal" in advice.model_family_rule(fraction_small, images, platform, "thermal")[1]


@pytest.mark.parametrize(
    ("images", "max_scale", "expected"),
    [
        (2999, "x", "n"),
        (3000, "x", "s"),
        (8000, "x", "m"),
        (15000, "x", "x"),
        (15000, "l", "l"),
        (5000, "n", "n"),
    ],
)
def test_scale_is_algorithm_3_capped_by_the_platform(images, max_scale, expected):
    value, reason = advice.scale_rule(images, max_scale, "profile")
    assert value == expected
    assert ("Algorithm 1" in reason) == (expected == max_scale != rules.max_scale_for_dataset(images))


@pytest.mark.parametrize(
    ("tiny", "small", "imgsz", "platform", "expected"),
    [
        (0.51, 0.8, 1920, "rtx5090", True),  # a majority under 32 px (13.2.2)
        (0.5, 0.5, 1920, "rtx5090", False),  # half is not a majority; already at 1920
        (0.1, 0.5, 1280, "rtx5090", True),  # Algorithm 4: 1920 px or P2, and training below 1920
        (0.1, 0.49, 640, "rtx5090", False),
        (0.9, 0.9, 640, "jetson_orin", False),  # not on Jetson (13.2.2)
    ],
)
def test_p2_head(tiny, small, imgsz, platform, expected):
    value, reason = advice.p2_head_rule(tiny, small, imgsz, platform)
    assert value is expected and reason


def test_imbalance_ratio_ignores_absent_classes():
    assert rules.imbalance_ratio({"a": 10, "b": 2, "c": 0}) == 5.0
    assert rules.imbalance_ratio({"a": 0}) is None


def facts(images: int, class_images: tuple[int, ...]) -> DatasetFacts:
    return DatasetFacts(images, class_images, 0.1, 640)


def test_sufficiency_uses_backbone_plus_per_class_need():
    # eq. 20-23: 3000 + 2 x 5000 = 13000 thermal images, 3000 + 2 x 1000 = 5000 RGB
    counts = {"a": 5000, "b": 5000}
    assert any(
        "= 13000" in w for w in advice.data_warnings(THERMAL, ["a", "b"], facts(12999, (6000,) * 2), counts)
    )
    assert not advice.data_warnings(THERMAL, ["a", "b"], facts(13000, (6000, 6000)), counts)
    assert not advice.data_warnings(RGB, ["a", "b"], facts(5000, (1000, 1000)), counts)


def test_table_5_minimum_for_nano():
    warnings = advice.data_warnings(RGB, ["a"], facts(1499, (1499,)), {"a": 1499})
    assert any("Table 5's 1500 minimum" in w for w in warnings)
    assert not any("Table 5" in w for w in advice.data_warnings(RGB, ["a"], facts(1500, (1500,)), {"a": 1}))


def test_minority_and_thermal_per_class_warnings_do_not_overlap():
    names, counts = ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}
    warnings = advice.data_warnings(THERMAL, names, facts(50000, (800, 1500, 6000)), counts)
    assert [w for w in warnings if "1000-image minimum" in w] == [
        "classes below the 1000-image minimum per class: a (800) (guide 14.2.4: minority classes need it "
        "regardless of dataset size)"
    ]
    assert any(
        w.startswith("classes below 5000 images") and "b (1500)" in w and "a (" not in w for w in warnings
    )
    rgb = advice.data_warnings(RGB, names, facts(50000, (800, 1500, 6000)), counts)
    assert not any("per-class need" in w for w in rgb)  # RGB's per-class need is the 1000 minimum


def test_severe_imbalance_is_above_five_and_absent_classes_are_named():
    names = ["a", "b", "c"]
    ok = advice.data_warnings(RGB, names, facts(50000, (5000,) * 3), {"a": 50, "b": 10, "c": 20})
    assert not any("imbalance" in w for w in ok)
    bad = advice.data_warnings(RGB, names, facts(50000, (5000,) * 3), {"a": 51, "b": 10, "c": 0})
    assert any("severe class imbalance: 5.1:1" in w for w in bad)
    assert any("no training instance of c" in w for w in bad)


def test_size_buckets_are_the_guides_and_named_apart_from_cocos():
    assert [limit for _, limit in advice.SIZE_BUCKETS][:3] == [32, 96, 320]
    names = [name for name, _ in advice.SIZE_BUCKETS]
    assert names[-1] == "side_over_320px" and not {"small", "medium", "large"} & set(names)


def test_imbalance_advice_does_not_ask_for_copy_paste_which_box_labels_cannot_use():
    names, instances = ["a", "b"], {"a": 60, "b": 10}
    warnings = advice.data_warnings(RGB, names, facts(50000, (5000,) * 2), instances)
    imbalance = next(w for w in warnings if "severe class imbalance: 6:1" in w)
    assert "collect more minority data" in imbalance and "copy-paste cannot help" in imbalance
