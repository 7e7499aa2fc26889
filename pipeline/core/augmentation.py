"""The plan's augmentation: the sensor's strengths, section 13.4.1's small-object values, the
thermal guardrails (5.3.1), and copy-paste, which box labels cannot use.

Pure functions, each value with its reason, as in `rules`; `rules.resolve_plan` calls them.
"""

from __future__ import annotations

from pipeline.core.config import PipelineConfig
from pipeline.core.config_checks import AUTO
from pipeline.core.errors import GuardrailError
from pipeline.core.facts import SMALL_OBJECT_PX, DatasetFacts

# Section 13.4.1's values, and where this project measured otherwise, the evidence.
SMALL_OBJECT_AUGMENTATION = {"scale": 0.2, "mosaic": 0.7}
SMALL_OBJECT_EVIDENCE = {
    "scale": (
        "; scale lowered from the guide's 0.3 to 0.2: at 20 epochs, 128 px from scratch 0.282 against "
        "0.274 mAP50-95 on bccd, 0.508 against 0.502 on synthetic_thermal, 0.122 against 0.122 on "
        "thermal_dogs_people (5 seeds each, each within the seed noise; scripts/benchmark_plans.py)"
    )
}
# From this share of objects under 64 px on: Algorithm 4's first step up from 640 px, where small
# objects start to matter (not "dominate", which is its 0.5 step).
SMALL_OBJECT_SHARE = 0.2
# Ultralytics' CopyPaste pastes segment polygons and hands an image without them back untouched
# (ultralytics/data/augment.py); `prepare` writes boxes only, a polygon becomes its bounding box.
COPY_PASTE_INERT = (
    "copy-paste pastes segment polygons and the prepared labels are boxes, so Ultralytics skips it "
    "on every image; the guide's 0.2-0.4 (5.3.2, 12.2, 13.4.1, 14.2.1) assumes instance masks"
)
FORBIDDEN_WHY = {
    "hsv_h": "a thermal frame has no hue; shifting it invents colours the sensor cannot produce",
    "hsv_s": "saturation is undefined for a single-channel temperature image",
    "mixup": "blending two frames creates physically impossible temperatures",
}


def augmentation_rule(
    cfg: PipelineConfig, key: str, facts: DatasetFacts | None, imgsz: int
) -> tuple[float, str]:
    """The sensor's augmentation, or section 13.4.1's small-object values when enough objects are
    small in the frames the network sees: an object large at the source is small at a low imgsz."""
    if key == "copy_paste":
        return 0.0, f"0: {COPY_PASTE_INERT}"
    sensor = cfg.sensor
    small = None if facts is None else facts.fraction_small_at(imgsz)
    if small is not None and small >= SMALL_OBJECT_SHARE and key in SMALL_OBJECT_AUGMENTATION:
        at = f"at {imgsz} px" if facts.relative_sides else "at the source resolution"
        return SMALL_OBJECT_AUGMENTATION[key], (
            f"small-object setting: {small:.0%} of objects under {SMALL_OBJECT_PX} px {at}, at least "
            f"{SMALL_OBJECT_SHARE:.0%} (guide 13.4.1)" + SMALL_OBJECT_EVIDENCE.get(key, "")
        )
    value = sensor.augmentation.get(key, 0.0)
    if key in sensor.forbidden_augmentation:
        return value, f"off for {sensor.name}: forbidden by guide 5.3.1"
    return value, f"{sensor.name} default (guide {'5.3.2' if sensor.name == 'thermal' else '12.2'})"


def copy_paste_warning(copy_paste: float) -> list[str]:
    """An explicit copy_paste above 0 is trained with, and changes nothing: say so."""
    return [f"train.copy_paste={copy_paste:g} does nothing: {COPY_PASTE_INERT}"] if copy_paste > 0 else []


def check_sensor_guardrails(cfg: PipelineConfig) -> None:
    """Section 5.3.1: hue, saturation and mixup are physically wrong on thermal frames."""
    if cfg.train.allow_unsafe_augmentation:
        return
    for key in cfg.sensor.forbidden_augmentation:
        value = getattr(cfg.train, key)
        if value != AUTO and value > 0:
            raise GuardrailError(
                f"train.{key}={value} is not allowed for sensor={cfg.sensor.name}: "
                f"{FORBIDDEN_WHY.get(key, 'the guide forbids it for this sensor')} (guide 5.3.1). "
                f"Set train.{key}=0 (or auto), or train.allow_unsafe_augmentation=true to override."
            )
