"""The guide's rules, pinned against its own tables (../shared/seeds/000, sections 4.4, 7, 13, 14.5)."""

from __future__ import annotations

import pytest

from pipeline.core import rules
from pipeline.core.compose import compose_config
from pipeline.core.errors import ConfigError, GuardrailError
from pipeline.core.rules import DatasetFacts, resolve_plan


def facts(train_images=5000, fraction_small=0.1, max_side=1280, classes=3):
    return DatasetFacts(train_images, tuple([train_images // 2] * classes), fraction_small, max_side)


@pytest.mark.parametrize(("classes", "table24"), [(1, 750), (3, 860), (5, 935), (10, 1074), (20, 1270)])
def test_thermal_epochs_follow_table_24(classes, table24):
    # The table rounds 1270.8 down and 859.8 up; the rule rounds to nearest.
    assert rules.epochs_for_classes(600, 150, classes)[0] == pytest.approx(table24, abs=1)


@pytest.mark.parametrize(("classes", "table25"), [(1, 330), (5, 429), (10, 503), (20, 608)])
def test_rgb_epochs_follow_table_25(classes, table25):
    assert rules.epochs_for_classes(250, 80, classes)[0] == table25


def sensor(name: str):
    return compose_config([f"sensor={name}"]).sensor


@pytest.mark.parametrize(
    ("classes", "rgb", "thermal"),
    [(1, 0.010, 0.008), (5, 0.008, 0.006), (10, 0.006, 0.005), (20, 0.004, 0.003)],
)
def test_lr0_follows_table_26(classes, rgb, thermal):
    # Table 26 rounds 0.01/sqrt(C/3) to one significant digit, so allow that rounding.
    assert rules.lr0_rule(sensor("rgb"), classes, "SGD")[0] == pytest.approx(rgb, abs=6e-4)
    assert rules.lr0_rule(sensor("thermal"), classes, "SGD")[0] == pytest.approx(thermal, abs=7e-4)


@pytest.mark.parametrize("classes", [1, 5, 20])
def test_adaptive_optimizers_skip_the_thermal_lr_factor_and_say_why(classes):
    sgd = rules.lr0_rule(sensor("thermal"), classes, "SGD")[0]
    adamw, reason = rules.lr0_rule(sensor("thermal"), classes, "AdamW")
    assert adamw == rules.lr0_rule(sensor("rgb"), classes, "AdamW")[0] > sgd
    assert "not applied" in reason and "synthetic_thermal" in reason


@pytest.mark.parametrize(
    ("images", "sensor", "band"),
    [
        (700, "rgb", (800, 1500)),
        (2000, "thermal", (1200, 2000)),
        (10000, "thermal", (500, 900)),
        (20000, "rgb", (100, 200)),
    ],
)
def test_dataset_size_epochs_follow_table_10_with_buffer(images, sensor, band):
    value, reason = rules.epochs_for_dataset_size(compose_config([f"sensor={sensor}"]).sensor, images)
    assert band[1] * 1.15 == pytest.approx(value, abs=1)
    assert f"{band[0]}-{band[1]}" in reason


def test_real_production_example_single_class_thermal_10k():
    """Section 4.4.3: single-class thermal, 10k images -> about 1000 epochs, patience about 300."""
    cfg = compose_config(["sensor=thermal", "classes.names=[animal]", "hardware=rtx5090"])
    plan = resolve_plan(cfg, facts(train_images=10000, classes=1))
    assert 900 <= plan.value("epochs") <= 1100
    assert 250 <= plan.value("patience") <= 330


@pytest.mark.parametrize(("small", "expected"), [(0.1, 640), (0.3, 1280), (0.6, 1920)])
def test_resolution_follows_algorithm_4(small, expected):
    assert rules.imgsz_rule(facts(fraction_small=small, max_side=4000))[0] == expected


def test_resolution_never_exceeds_the_source_frames():
    value, reason = rules.imgsz_rule(facts(fraction_small=0.6, max_side=416))
    assert value == 416 and "416 px source" in reason


@pytest.mark.parametrize(("images", "ceiling"), [(1000, "n"), (5000, "s"), (10000, "m"), (20000, "x")])
def test_scale_ceiling_follows_algorithm_3(images, ceiling):
    assert rules.max_scale_for_dataset(images) == ceiling


def test_batch_comes_from_the_hardware_table_and_scales_with_area():
    table = compose_config(["hardware=rtx3080"]).hardware.batch
    assert rules.batch_rule(table, "m", 640, "rtx3080")[0] == 8  # Table 13: 8-12
    assert rules.batch_rule(table, "n", 1280, "rtx3080")[0] == 16  # Table 13: 16-24
    assert rules.batch_rule(table, "n", 320, "rtx3080")[0] == 128  # 32 x (640/320)^2


def test_explain_example_from_the_issue():
    sgd = "train.optimizer=SGD"
    cfg = compose_config(["sensor=thermal", "classes.names=[a,b,c,d,e]", "hardware.max_epochs=null", sgd])
    plan = resolve_plan(cfg)
    rgb = resolve_plan(compose_config(["sensor=rgb", "classes.names=[a,b,c,d,e]", sgd]))
    assert plan.value("epochs") == 935
    assert "600 + 150 x sqrt(5)" in next(d.reason for d in plan.decisions if d.key == "epochs")
    assert plan.value("lr0") < rgb.value("lr0")


def test_thermal_augmentation_has_no_colour_and_no_mixup():
    plan = resolve_plan(compose_config(["sensor=thermal"]))
    assert plan.value("hsv_h") == plan.value("hsv_s") == plan.value("mixup") == 0.0
    assert plan.value("hsv_v") > 0 and plan.value("mosaic") > 0


def test_small_object_datasets_get_gentler_scale_and_mosaic():
    plan = resolve_plan(compose_config(["sensor=rgb"]), facts(fraction_small=0.4))
    assert plan.value("scale") == 0.2 and plan.value("mosaic") == 0.7
    assert "lowered from the guide's 0.3" in plan.decision("scale").reason


def test_small_object_settings_follow_the_size_the_network_sees():
    # Every box is a tenth of its frame: 128 px at 1280, 12.8 px at 128 (under 64).
    large_at_source = DatasetFacts(5000, (2500, 2500, 2500), 0.0, 1280, relative_sides=(0.1,) * 101)
    at_128 = resolve_plan(compose_config(["sensor=rgb", "train.imgsz=128"]), large_at_source)
    at_1280 = resolve_plan(compose_config(["sensor=rgb", "train.imgsz=1280"]), large_at_source)
    assert (at_128.value("scale"), at_128.value("mosaic")) == (0.2, 0.7)
    assert "100% of objects under 64 px at 128 px" in at_128.decision("scale").reason
    assert at_1280.value("scale") == compose_config(["sensor=rgb"]).sensor.augmentation["scale"]


def test_copy_paste_is_off_and_says_why_box_labels_cannot_use_it():
    # Ultralytics' CopyPaste returns an image without segment polygons untouched; prepared labels are boxes
    for plan in (
        resolve_plan(compose_config(["sensor=rgb"]), facts(fraction_small=0.4)),
        resolve_plan(compose_config([])),
    ):
        assert plan.value("copy_paste") == 0.0 and "segment polygons" in plan.decision("copy_paste").reason
        assert not any("copy_paste" in w for w in plan.warnings)
    asked = resolve_plan(compose_config(["train.copy_paste=0.4"]))
    assert asked.value("copy_paste") == 0.4
    assert any(w.startswith("train.copy_paste=0.4 does nothing") for w in asked.warnings)


@pytest.mark.parametrize("key", ["hsv_h", "hsv_s", "mixup"])
def test_thermal_guardrail_names_the_key(key):
    with pytest.raises(GuardrailError) as error:
        resolve_plan(compose_config(["sensor=thermal", f"train.{key}=0.1"]))
    assert f"train.{key}=0.1" in str(error.value) and "allow_unsafe_augmentation" in str(error.value)


def test_explicit_override_lets_unsafe_augmentation_through():
    cfg = compose_config(["sensor=thermal", "train.hsv_h=0.015", "train.allow_unsafe_augmentation=true"])
    decision = next(d for d in resolve_plan(cfg).decisions if d.key == "hsv_h")
    assert decision.value == 0.015 and decision.source == "explicit"


def test_rgb_allows_colour_jitter():
    assert resolve_plan(compose_config(["sensor=rgb", "train.hsv_h=0.02"])).value("hsv_h") == 0.02


def test_explicit_values_win_over_auto():
    plan = resolve_plan(compose_config(["train.epochs=7", "train.lr0=0.02", "train.imgsz=96"]), facts())
    assert (plan.value("epochs"), plan.value("lr0"), plan.value("imgsz")) == (7, 0.02, 96)


def test_jetson_nano_with_a_medium_model_warns_and_strict_mode_refuses():
    plan = resolve_plan(compose_config(["hardware=jetson_nano", "model=yolo11m"]))
    assert any("jetson_nano" in warning and "max s" in warning for warning in plan.warnings)
    with pytest.raises(GuardrailError):
        resolve_plan(
            compose_config(["hardware=jetson_nano", "model=yolo11m", "train.strict_guardrails=true"])
        )


def test_model_too_large_for_the_dataset_warns():
    plan = resolve_plan(compose_config(["model=yolo11l", "hardware=rtx5090"]), facts(train_images=2000))
    assert any("Table 5" in warning for warning in plan.warnings)


def test_batch_above_the_table_warns():
    plan = resolve_plan(
        compose_config(["hardware=rtx3080", "model=yolo11m", "train.imgsz=640", "train.batch=64"])
    )
    assert any("out of memory" in warning for warning in plan.warnings)


def test_training_batch_is_capped_by_the_nominal_batch_and_the_dataset_size():
    cfg = compose_config(["hardware=cpu", "model=yolo11n"])
    assert rules.batch_rule(cfg.hardware.batch, "n", 160, "cpu")[0] == 256  # memory alone: 16 x 4^2
    assert rules.training_batch_rule(cfg, 160, None)[0] == 64
    value, reason = rules.training_batch_rule(cfg, 160, facts(train_images=280))
    assert value == 16 and ">= 16 batches" in reason
    dgx = compose_config(["hardware=dgx_spark", "model=yolo11l"])
    assert rules.training_batch_rule(dgx, 640, facts(train_images=50000))[0] == 128  # template 12.4


def test_a_short_run_steps_the_optimizer_every_batch():
    """142 images for 20 epochs at batch 16: Ultralytics' nbs 64 leaves 3 steps an epoch, 60 in all."""
    value, reason = rules.nominal_batch_rule(16, 1, facts(train_images=142), 20)
    assert value == 16 and "180 optimizer steps instead of 60" in reason
    assert rules.nominal_batch_rule(16, 1, facts(train_images=50000), 300)[0] == 64  # 234,600 steps
    assert rules.nominal_batch_rule(16, 1, None, 20)[0] == 64  # no analyze: the size is unknown
    assert rules.nominal_batch_rule(128, 1, facts(train_images=142), 20)[0] == 64  # one step a batch already
    value, reason = rules.nominal_batch_rule(64, 8, facts(train_images=1000), 20)
    assert value == 8 and "320 optimizer steps instead of 40" in reason  # Ultralytics' nbs is per device


def test_an_explicit_nominal_batch_wins_and_a_bad_one_names_its_key():
    assert resolve_plan(compose_config(["train.nbs=64"]), facts(train_images=142)).value("nbs") == 64
    with pytest.raises(ConfigError, match=r"train\.nbs"):
        compose_config(["train.nbs=0"])


def test_the_cpu_profile_caps_epochs_by_count_not_by_clock():
    """Two machines of different speed train the same model from the same commit."""
    cfg = compose_config(["sensor=thermal", "classes.names=[a,b,c,d,e]"])
    plan = resolve_plan(cfg)
    epochs = next(d for d in plan.decisions if d.key == "epochs")
    assert (epochs.value, epochs.source) == (cfg.hardware.max_epochs, "profile")
    assert "935" in epochs.reason and plan.value("time") is None
    explicit = resolve_plan(compose_config(["sensor=thermal", "train.epochs=40"]))
    assert explicit.value("epochs") == 40


def test_training_batch_gives_every_gpu_at_least_one_image():
    """Ultralytics divides the batch by the world size: 16 images on 8 GPUs would cap it at 1."""
    dgx = compose_config(["hardware=dgx_spark", "model=yolo11n"])
    value, reason = rules.training_batch_rule(dgx, 640, facts(train_images=16))
    assert value == 8 and "floored at 8" in reason


def imbalanced(class_images):
    return DatasetFacts(5000, class_images, 0.1, 1280)


@pytest.mark.parametrize(
    ("class_images", "expected", "why"),
    [((600, 100, 90), 0.5, "6.667:1 (> 5, guide 14.2)"), ((500, 100, 100), 0.0, "5:1 (<= 5)")],
)
def test_severe_imbalance_sets_class_weights_with_the_reason(class_images, expected, why):
    plan = resolve_plan(compose_config(["hardware=cpu"]), imbalanced(class_images))
    decision = next(d for d in plan.decisions if d.key == "cls_pw")
    assert decision.value == expected and why in decision.reason
    explicit = resolve_plan(compose_config(["hardware=cpu", "train.cls_pw=0.2"]), imbalanced(class_images))
    assert explicit.value("cls_pw") == 0.2


def test_class_weight_power_outside_zero_to_one_is_refused():
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.cls_pw.*\[0, 1\]"):
        compose_config(["train.cls_pw=1.5"])


def test_the_plan_states_what_ultralytics_really_runs_on_cpu():
    """Ultralytics sets workers=0 on CPU and warns that its RAM cache is not deterministic."""
    cpu = resolve_plan(compose_config(["hardware=cpu"]), facts(train_images=100, max_side=640))
    assert cpu.value("workers") == 0 and "0 workers" in cpu.decision("workers").reason
    assert cpu.value("cache") is False and "not deterministic" in cpu.decision("cache").reason
    gpu = resolve_plan(compose_config(["hardware=rtx5090"]), facts())
    assert gpu.value("workers") == compose_config(["hardware=rtx5090"]).hardware.workers
    assert compose_config(["train.cache=true"]).train.cache is True  # still the user's to choose


@pytest.mark.parametrize(
    ("epochs", "expected", "words"), [(3450, 10, "last 10 of 3450"), (25, 2, "last 2 of 25")]
)
def test_close_mosaic_reason_names_its_real_share(epochs, expected, words):
    value, reason = rules.close_mosaic_rule(epochs)
    assert value == expected and words in reason


def test_warmup_keeps_a_short_run_from_starting_at_full_rate_without_eating_it():
    """Caps of 5 %, 15 % and 40 % (1, 3 and 8 epochs at 20) lost to 10 epochs (benchmark_plans)."""
    assert rules.warmup_rule(10, 20) == (10, "sensor default 10 (guide 4.3, 5.4.5)")
    assert (
        rules.warmup_rule(10, 16)[0] == 8.0 and "capped at 50% of 16 epochs" in rules.warmup_rule(10, 16)[1]
    )
    assert rules.warmup_rule(8, 20) == (8, "sensor default 8 (guide 4.3, 5.4.5)")
    assert rules.warmup_rule(5, 8)[0] == 4.0
    assert rules.warmup_rule(10, 300) == (10, "sensor default 10 (guide 4.3, 5.4.5)")
    assert rules.warmup_rule(10, 1)[0] == 1.0  # never under one epoch


def test_patience_never_stops_a_short_from_scratch_run_in_its_noise_phase():
    """The guide's 30 % would give 6 at 20 epochs: the benchmark saw that fire on noise."""
    assert rules.patience_rule(20, 0.3)[0] == 20 and "the whole run" in rules.patience_rule(20, 0.3)[1]
    assert rules.patience_rule(100, 0.3)[0] == rules.PATIENCE_FLOOR == 50
    assert rules.patience_rule(300, 0.3) == (90, "30% of 300 epochs (guide 4.4.3, 5.4.4)")
