"""What `analyze` recommends beside the plan: model family, scale, P2 head and data sufficiency.

Guide sections 2.8, 3.4.2, 13.1-13.2, 14.1-14.2 and 17.1. These recommend; they never change a
configured value (the plan's rules are in `pipeline.core.rules`).
"""

from __future__ import annotations

import math

from pipeline.core.config import SensorConfig
from pipeline.core.config_checks import SCALES

# The sensor-specific tables (Table 10's epoch column, patience fraction, per-class image need) are
# in conf/sensor/<name>.yaml, so a new sensor is YAML only.
from pipeline.core.rules import (
    SCALE_MIN_IMAGES,
    SEVERE_IMBALANCE,
    SMALL_OBJECT_PX,
    DatasetFacts,
    imbalance_ratio,
    max_scale_for_dataset,
)

# Guide 13.1.1's object-size buckets, by the side sqrt(w*h) at the training size. Named by their
# limits, not "small/medium/large": COCO's AP_small/medium/large in evaluate are areas at the
# source resolution (32^2 and 96^2 px), a different split of the same objects.
SIZE_BUCKETS = (
    ("side_under_32px", 32.0),
    ("side_32_to_96px", 96.0),
    ("side_96_to_320px", 320.0),
    ("side_over_320px", math.inf),
)
TINY_OBJECT_PX = 32
SMALL_DATA_IMAGES = 3000  # Algorithm 3: below this, "consider data collection"; Table 6: v9
SMALL_OBJECT_V12_FRACTION = 0.3  # 13.2.1: more than 30 % of objects under 64 px -> v12
P2_TINY_FRACTION = 0.5  # 13.2.2: "majority objects < 32 px"
P2_SMALL_FRACTION = 0.5  # Algorithm 4: p_small >= 0.5 -> 1920 px "OR P2 head"
ALGORITHM4_TOP_IMGSZ = 1920
MIN_CLASS_IMAGES = 1000  # 14.2.4: minimum images per class regardless of dataset size
BACKBONE_IMAGES = 3000  # eq. 21: N_backbone
EDGE_PLATFORM_PREFIX = "jetson"


def is_edge(platform: str) -> bool:
    return platform.startswith(EDGE_PLATFORM_PREFIX)


def model_family_rule(
    fraction_small: float, train_images: int, platform: str, sensor: str = "rgb"
) -> tuple[str, str]:
    """Guide 2.8 and Table 6 (v11 default, v9 for small data), 13.2.1 (v12 for many small objects).
    Small data comes first: v12 needs the most data of all (Table 6: 5x), v9 the least (2.5x)."""
    share = f"{fraction_small:.0%} of objects under {SMALL_OBJECT_PX} px at the training size"
    if train_images < SMALL_DATA_IMAGES:
        return "yolov9", (
            f"{train_images} training images (< {SMALL_DATA_IMAGES}): v9's auxiliary gradients suit small "
            f"datasets{', thermal' if sensor == 'thermal' else ''} and small objects (guide 2.3.3, 2.8, "
            f"Table 6); {share}"
        )
    if fraction_small <= SMALL_OBJECT_V12_FRACTION:
        return "yolo11", f"{train_images} images, {share}: v11 is the balanced default (guide 2.8)"
    if is_edge(platform):
        return "yolo11", f"{share} would favour v12 (13.2.1), but Table 6 rates v12 poor on edge ({platform})"
    return "yolo12", f"{share} (> 30 %): v12 leads on small objects (guide 13.2.1, Table 19)"


def scale_rule(train_images: int, hardware_max_scale: str, hardware: str) -> tuple[str, str]:
    """The largest sensible scale: Algorithm 3 from dataset size, capped by the platform (Algorithm 1)."""
    by_data = max_scale_for_dataset(train_images)
    reason = f"Algorithm 3: {train_images} training images support up to {by_data}"
    if SCALES.index(hardware_max_scale) < SCALES.index(by_data):
        return hardware_max_scale, f"{reason}; {hardware} runs at most {hardware_max_scale} (Algorithm 1)"
    return by_data, reason + f" (Table 5: {by_data} wants >= {SCALE_MIN_IMAGES[by_data]} images)"


def p2_head_rule(fraction_tiny: float, fraction_small: float, imgsz: int, platform: str) -> tuple[bool, str]:
    """Section 13.2.2: a stride-4 head for mostly tiny objects (+10-15 % small mAP, +40 % compute);
    also Algorithm 4's alternative to 1920 px when the resolution stays below it."""
    tiny = f"{fraction_tiny:.0%} of objects under {TINY_OBJECT_PX} px at {imgsz} px"
    if is_edge(platform):
        return False, f"{tiny}; P2 costs ~40 % more compute and 13.2.2 reserves it for non-Jetson targets"
    if fraction_tiny > P2_TINY_FRACTION:
        return True, f"{tiny} (a majority): P2 adds ~10-15 % mAP on small objects (guide 13.2.2)"
    if fraction_small >= P2_SMALL_FRACTION and imgsz < ALGORITHM4_TOP_IMGSZ:
        return True, (
            f"{fraction_small:.0%} under {SMALL_OBJECT_PX} px: Algorithm 4 asks {ALGORITHM4_TOP_IMGSZ} px "
            f"or a P2 head, and training runs at {imgsz} px"
        )
    return False, f"{tiny}: 13.2.2 wants a majority before paying ~40 % more compute"


def data_warnings(
    sensor: SensorConfig,
    names: list[str],
    facts: DatasetFacts,
    class_instances: dict[str, int],
) -> list[str]:
    """Data sufficiency for from-scratch training (Table 5, 3.4.2, 14.1-14.2) and class balance (17.1)."""
    warnings = []
    n, classes = facts.train_images, len(names)
    if n < SCALE_MIN_IMAGES["n"]:
        warnings.append(
            f"{n} training images: below Table 5's {SCALE_MIN_IMAGES['n']} minimum even for scale n from "
            "scratch; consider data collection (Algorithm 3) or pretrained weights"
        )
    per_class = sensor.images_per_class
    needed = BACKBONE_IMAGES + classes * per_class
    if n < needed:
        warnings.append(
            f"too few images per class for from-scratch training: {n} training images for {classes} "
            f"{sensor.name} classes; N_backbone {BACKBONE_IMAGES} + {classes} x {per_class} per class "
            f"= {needed} "
            "(guide 3.4.2, eq. 20-23)"
        )
    warnings += _class_warnings(sensor, names, facts.class_images, class_instances)
    return warnings


def _class_warnings(
    sensor: SensorConfig,
    names: list[str],
    class_images: tuple[int, ...],
    class_instances: dict[str, int],
) -> list[str]:
    warnings = []
    absent = [name for name in names if class_instances.get(name, 0) == 0]
    if absent:
        warnings.append(f"no training instance of {', '.join(absent)} (the model cannot learn them)")
    ratio = imbalance_ratio(class_instances)
    if ratio is not None and ratio > SEVERE_IMBALANCE:
        warnings.append(
            f"severe class imbalance: {ratio:g}:1 (max/min instances > {SEVERE_IMBALANCE:g}, guide 17.1); "
            "collect more minority data (14.2.4); 14.2.1's copy-paste cannot help here: it pastes "
            "segment polygons, and detection labels are boxes"
        )
    minority = _classes_between(names, class_images, 1, MIN_CLASS_IMAGES)
    if minority:
        warnings.append(
            f"classes below the {MIN_CLASS_IMAGES}-image minimum per class: {minority} "
            "(guide 14.2.4: minority classes need it regardless of dataset size)"
        )
    per_class = sensor.images_per_class
    short = _classes_between(names, class_images, MIN_CLASS_IMAGES, per_class)
    if short:
        warnings.append(
            f"classes below {per_class} images, the {sensor.name} per-class need from scratch: {short} "
            "(guide eq. 23: thermal needs 5-7x the RGB data per class)"
        )
    return warnings


def _classes_between(names: list[str], images: tuple[int, ...], low: int, high: int) -> str:
    """'name (count), ...' for the classes with low <= images < high."""
    pairs = zip(names, images, strict=True)
    return ", ".join(f"{name} ({count})" for name, count in pairs if low <= count < high)
