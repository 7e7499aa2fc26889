"""The analyze stage on hand-built YOLO datasets with known answers, and on the real thermal set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.artifacts import ANALYSIS_PLOTS
from pipeline.core.compose import compose_config, write_params
from pipeline.core.errors import DataError, MissingDependencyError
from pipeline.core.facts import DatasetFacts, load_facts
from pipeline.data import analyze, synthetic
from pipeline.data.labels import read_labels
from tests.conftest import require_shared_dataset

# name -> ((width, height), label lines or None for no label file)
HAND_TRAIN = {
    "a": ((100, 100), ["0 0.5 0.5 0.05 0.05", "0 0.3 0.3 0.2 0.2", "1 0.5 0.5 0.5 0.5"]),
    "b": ((200, 100), ["0 0.5 0.5 0.1 0.2", "0 0.5 0.5 0.5 1.0", "0 0.5 0.5 1.0 1.0"]),
    "c": ((100, 100), ["0 0.5 0.5 1.0 1.0"]),
    "d": ((100, 100), []),  # an empty label file: a background image
    "e": ((100, 100), None),  # no label file: background too (Ultralytics' rule)
}
HAND_VAL = {"v": ((100, 100), ["1 0.5 0.5 0.4 0.4"])}
# Source sides sqrt(w*h) in px: a 5, 20, 50; b 20, 100, 141.4; c 100.


def write_yolo(root: Path, splits: dict[str, dict], names: list[str]) -> Path:
    for split, images in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for name, (size, lines) in images.items():
            Image.new("L", size, 40).save(root / "images" / split / f"{name}.png")
            if lines is not None:
                (root / "labels" / split / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    yaml_lines = [f"{split}: images/{split}" for split in splits]
    yaml_lines += ["names:", *(f"  {i}: {name}" for i, name in enumerate(names))]
    (root / "data.yaml").write_text("\n".join(yaml_lines) + "\n")
    return root


def write_synthetic(root: Path, images: int = 40, size: int = 64) -> Path:
    """The embedded generator's frames as a YOLO dataset (16-bit counts stretched to 8 bit)."""
    frames = list(synthetic.generate("thermal", images, size, 0))
    splits: dict[str, dict] = {"train": {}, "val": {}}
    for index, frame in enumerate(frames):
        split = "train" if index < images * 3 // 4 else "val"
        lines = [f"{int(b[0])} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f} {b[4]:.6f}" for b in frame.boxes]
        splits[split][frame.name] = (frame.image, lines)
    for split, items in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for name, (image, lines) in items.items():
            low, high = float(image.min()), float(image.max())
            grey = ((image - low) / max(high - low, 1.0) * 255).astype(np.uint8)
            Image.fromarray(grey).save(root / "images" / split / f"{name}.png")
            (root / "labels" / split / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(synthetic.CLASSES))
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames:\n{names}\n")
    return root


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"paths.prepared={tmp_path / 'data'}",
        f"paths.analysis={tmp_path / 'analysis'}",
        "classes.names=[cat,dog]",
        *extra,
    ]


@pytest.fixture
def hand_built(tmp_path) -> Path:
    return write_yolo(tmp_path / "data", {"train": HAND_TRAIN, "val": HAND_VAL}, ["cat", "dog"])


# ---- statistics with known answers ---------------------------------------------------------------


def test_hand_built_statistics_at_an_explicit_image_size(tmp_path, hand_built):
    result = analyze.measure(compose_config(overrides(tmp_path, "train.imgsz=320")))
    train, val = result.splits
    assert result.imgsz == 320
    assert (train.images, train.instances, train.background_images, train.missing_label_files) == (5, 7, 2, 1)
    assert train.class_instances == {"cat": 6, "dog": 1}
    assert train.class_images == {"cat": 3, "dog": 1}
    assert train.imbalance_ratio == 6.0
    # At 320 px: a scales x3.2 (16, 64, 160), b x1.6 (32, 160, 226), c x3.2 (320).
    assert train.size_buckets == {
        "side_under_32px": 1,
        "side_32_to_96px": 2,
        "side_96_to_320px": 3,
        "side_over_320px": 1,
    }
    assert train.fraction_small == pytest.approx(2 / 7, abs=1e-6)  # 16 and 32; 64 is not under 64
    assert train.fraction_tiny == pytest.approx(1 / 7, abs=1e-6)
    assert train.fraction_small_source == pytest.approx(4 / 7, abs=1e-6)  # 5, 20, 50, 20 source px
    # the plan's facts give the same shares at any size, to the percentile
    assert result.facts.fraction_small_at(320) == pytest.approx(train.fraction_small, abs=0.01)
    assert result.facts.fraction_small_at(1280) == 0.0  # 4x the sizes at 320: the smallest is 64
    assert train.max_side == 200
    assert train.boxes_per_image["max"] == 3 and train.boxes_per_image["mean"] == pytest.approx(7 / 5)
    assert train.aspect_ratio["median"] == pytest.approx(1.0)  # b's 1.0x1.0 box is 200x100 px: 2.0
    assert (val.images, val.instances, val.class_instances) == (1, 1, {"cat": 0, "dog": 1})
    assert val.size_buckets == {
        "side_under_32px": 0,
        "side_32_to_96px": 0,
        "side_96_to_320px": 1,
        "side_over_320px": 0,
    }  # 40 px x 3.2 = 128


def test_auto_image_size_comes_from_source_facts_and_buckets_follow_it(tmp_path, hand_built):
    result = analyze.measure(compose_config(overrides(tmp_path, "train.imgsz=auto")))
    train = result.splits[0]
    # 4/7 under 64 px at the source: Algorithm 4 asks 1920, capped at the 200 px frames -> 224.
    facts = result.facts
    assert (facts.train_images, facts.class_images, facts.fraction_small, facts.max_side) == (
        5,
        (3, 1),
        round(4 / 7, 6),
        200,
    )
    assert result.imgsz == 224
    # x2.24 for 100 px frames (11.2, 44.8, 112, 224), x1.12 for b (22.4, 112, 158.4)
    assert train.size_buckets == {
        "side_under_32px": 2,
        "side_32_to_96px": 1,
        "side_96_to_320px": 4,
        "side_over_320px": 0,
    }
    assert dict((d.key, d.value) for d in result.recommendations)["imgsz"] == 224


def test_size_bucket_edges_belong_to_the_bucket_above():
    sides = np.array([31.9, 32.0, 95.9, 96.0, 319.9, 320.0, 1000.0])
    assert analyze.size_bucket_counts(sides) == {
        "side_under_32px": 1,
        "side_32_to_96px": 2,
        "side_96_to_320px": 2,
        "side_over_320px": 2,
    }


def test_class_ids_follow_classes_names_when_data_yaml_orders_them_differently(tmp_path):
    write_yolo(tmp_path / "data", {"train": HAND_TRAIN}, ["dog", "cat"])  # id 0 is dog here
    train = analyze.measure(compose_config(overrides(tmp_path, "train.imgsz=320"))).splits[0]
    assert train.class_instances == {"cat": 1, "dog": 6}


def test_a_data_yaml_class_missing_from_the_config_is_refused(tmp_path):
    write_yolo(tmp_path / "data", {"train": HAND_TRAIN}, ["cat", "horse"])
    with pytest.raises(DataError, match=r"horse.*classes\.names"):
        analyze.measure(compose_config(overrides(tmp_path)))


def test_image_sizes_come_from_the_prepare_manifest_when_it_lists_them(tmp_path, hand_built):
    # prepare records the frame each image's labels are normalised by; analyze need not open headers
    files = [{"path": "images/train/b.png", "sha256": "0", "width": 400, "height": 200}]
    (hand_built / "manifest.json").write_text(json.dumps({"files": files}))
    result = analyze.measure(compose_config(overrides(tmp_path, "train.imgsz=auto")))
    # b is 400x200 px now: the longest side caps Algorithm 4's 1920 at 416 instead of 224
    assert result.facts.max_side == 400 and result.splits[0].max_side == 400
    assert result.imgsz == 416


def test_analyze_reads_what_prepare_writes(tmp_path):
    from pipeline.data import prepare

    cfg = compose_config(
        [
            "data.synthetic.images=24",
            "data.synthetic.size=64",
            f"paths.prepared={tmp_path / 'prepared'}",
            f"paths.analysis={tmp_path / 'analysis'}",
        ]
    )
    prepare.run(cfg)
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    result = analyze.run(cfg)
    for split in result.splits:
        expected = manifest["splits"][split.name]
        assert (split.images, split.instances) == (expected["images"], expected["boxes"])
        assert split.background_images == expected["backgrounds"]
        assert split.class_instances == expected["per_class"]
    assert result.facts.max_side == 64 and load_facts(tmp_path / "analysis" / "recommendations.json")


# ---- label reading -------------------------------------------------------------------------------


def test_blank_lines_and_missing_final_newlines_keep_boxes_with_their_files(tmp_path):
    texts = {
        "a": "0 0.1 0.1 0.1 0.1\n\n1 0.2 0.2 0.2 0.2",  # a blank line, no final newline
        "b": "\n  \n",
        "c": "1 0.3 0.3 0.3 0.3\r\n",
        "d": "0 0.4 0.4 0.4 0.4\r1 0.5 0.5 0.5 0.5\r",  # old Mac line ends: two boxes on no LF
    }
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text, newline="")
    table = read_labels([str(tmp_path / f"{n}.txt") for n in (*texts, "missing")], num_classes=2)
    assert table.file_index.tolist() == [0, 0, 2, 3, 3]
    assert table.classes.tolist() == [0, 1, 1, 0, 1]
    assert table.boxes[:, 0].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert table.missing.tolist() == [False, False, False, False, True]


@pytest.mark.parametrize("text", ["1\t0.3 0.3 0.3 0.3\n", "1  0.3 0.3 0.3 0.3 \n", " 1 0.3 0.3 0.3 0.3\n"])
def test_tabs_and_extra_spaces_parse_like_whitespace(tmp_path, text):
    (tmp_path / "a.txt").write_text("0 0.1 0.1 0.1 0.1\n")
    (tmp_path / "b.txt").write_text(text)
    table = read_labels([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], num_classes=2)
    assert table.classes.tolist() == [0, 1] and table.file_index.tolist() == [0, 1]
    assert table.boxes[1].tolist() == [0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0 0.5 0.5 0.1", "has 4 fields"),
        ("0 0.5 0.5 0.1 0.1 0.2 0.2", "has 7 fields"),
        ("0 0.5 0.5 0.1 x", "not a number"),
        ("2 0.5 0.5 0.1 0.1", "names only 2 classes"),
        ("0.5 0.5 0.5 0.1 0.1", "not a non-negative integer"),
    ],
)
def test_a_bad_label_line_is_reported_with_its_file_and_line(tmp_path, line, problem):
    good = tmp_path / "good.txt"
    good.write_text("0 0.5 0.5 0.1 0.1\n")
    bad = tmp_path / "bad.txt"
    bad.write_text(f"1 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DataError, match=rf"bad\.txt:2: .*{problem}"):
        read_labels([str(good), str(bad)], num_classes=2)


# ---- outputs -------------------------------------------------------------------------------------


def test_facts_contract_round_trips_through_load_facts(tmp_path, hand_built):
    result = analyze.run(compose_config(overrides(tmp_path, "train.imgsz=320")))
    path = tmp_path / "analysis" / "recommendations.json"
    facts = json.loads(path.read_text())["facts"]
    assert set(facts) == {f.name for f in dataclasses.fields(DatasetFacts)}
    assert facts["class_images"] == [3, 1] and isinstance(facts["train_images"], int)
    assert load_facts(path) == result.facts


def test_imbalanced_set_warns_and_a_balanced_one_does_not(tmp_path, hand_built):
    warnings = analyze.measure(compose_config(overrides(tmp_path))).warnings
    assert any("severe class imbalance: 6:1" in w for w in warnings)
    assert any("1000-image minimum per class: cat (3), dog (1)" in w for w in warnings)
    assert any("too few images per class for from-scratch" in w for w in warnings)
    balanced = {"a": ((64, 64), ["0 0.5 0.5 0.2 0.2", "1 0.3 0.3 0.2 0.2"])}
    write_yolo(tmp_path / "balanced", {"train": balanced}, ["cat", "dog"])
    cfg = compose_config(overrides(tmp_path, f"paths.prepared={tmp_path / 'balanced'}"))
    assert not any("imbalance" in w for w in analyze.measure(cfg).warnings)


def test_main_writes_metrics_recommendations_report_and_png_plots(tmp_path):
    write_synthetic(tmp_path / "data")
    params = write_params(tmp_path / "params.yaml", [*overrides(tmp_path)[:2], "classes=synthetic"])
    assert analyze.main(["--params", str(params)]) == 0
    out = tmp_path / "analysis"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["images"] == 30 and stats["val"]["images"] == 10
    assert stats["train"]["instances"] == sum(stats["train"]["class_instances"].values()) > 0
    recommendations = json.loads((out / "recommendations.json").read_text())
    keys = [r["key"] for r in recommendations["recommendations"]]
    assert keys == ["model_family", "max_scale", "model", "p2_head", "imgsz", "epochs", "lr0"]
    assert all(r["reason"] for r in recommendations["recommendations"])
    assert recommendations["plan"]["decisions"][0]["key"] == "epochs"
    report = (out / "report.md").read_text()
    assert "## Recommendations" in report and "source** resolution" in report
    for name in ANALYSIS_PLOTS:
        png = out / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        with Image.open(png) as image:
            assert image.size[0] > 300


def test_train_and_analyze_resolve_the_same_plan(tmp_path, hand_built):
    from pipeline.core.rules import resolve_plan

    cfg = compose_config(overrides(tmp_path))
    result = analyze.run(cfg)
    again = resolve_plan(cfg, load_facts(tmp_path / "analysis" / "recommendations.json"))
    assert again.as_dict() == result.plan.as_dict()


def test_missing_prepared_data_names_the_stage_to_run(tmp_path):
    with pytest.raises(MissingDependencyError, match="run the prepare stage"):
        analyze.measure(compose_config(overrides(tmp_path)))


# ---- the real dataset ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_thermal_dogs_people_layout(tmp_path):
    root = require_shared_dataset("thermal_dogs_people")
    cfg = compose_config(
        ["classes=thermal_dogs_people", f"paths.prepared={root}", f"paths.analysis={tmp_path / 'analysis'}"]
    )
    result = analyze.run(cfg)
    train, val = result.splits  # its data.yaml lists train and val (Roboflow's ../train/images form)
    # PROVENANCE.md: train 142 images, 181 boxes (84 dog, 97 person), 11 background; valid 41/49/5.
    assert (train.images, train.instances, train.background_images) == (142, 181, 11)
    assert train.class_instances == {"dog": 84, "person": 97}
    assert (val.images, val.instances, val.background_images) == (41, 49, 5)
    assert result.facts.max_side == 416 and result.imgsz == 416  # capped at the 416 px frames
    assert load_facts(tmp_path / "analysis" / "recommendations.json") == result.facts
