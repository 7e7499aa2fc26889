"""The synthetic generator: deterministic, and its day/night attribute is in the pixels, not only
in the file names (so the default demo's per-slice metrics differ for a reason)."""

from __future__ import annotations

import numpy as np

from pipeline.data.synthetic import generate


def frames(sensor: str, images: int = 800, size: int = 48, seed: int = 3) -> list:
    return list(generate(sensor, images, size, seed))


def object_contrast(frame) -> float | None:
    """Mean counts inside the boxes minus the mean outside them."""
    height, width = frame.image.shape[:2]
    inside = np.zeros((height, width), dtype=bool)
    for _, cx, cy, w, h in frame.boxes:
        x0, x1 = int((cx - w / 2) * width), int(np.ceil((cx + w / 2) * width))
        y0, y1 = int((cy - h / 2) * height), int(np.ceil((cy + h / 2) * height))
        inside[y0:y1, x0:x1] = True
    if not inside.any() or inside.all():
        return None
    return float(frame.image[inside].mean() - frame.image[~inside].mean())


def by_light(items: list, value) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {"day": [], "night": []}
    for frame in items:
        measured = value(frame)
        if measured is not None:
            result["day" if "_day_" in frame.name else "night"].append(measured)
    return result


def test_the_same_arguments_give_the_same_frames():
    first, again = frames("thermal", 9), frames("thermal", 9)
    assert [f.name for f in first] == [f.name for f in again]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)


def test_thermal_objects_stand_out_less_by_day_solar_loading():
    contrast = by_light(frames("thermal"), object_contrast)
    day, night = np.median(contrast["day"]), np.median(contrast["night"])
    assert day > 0 and night > 0
    assert day < 0.8 * night  # well below night, beyond what the random heat of objects gives


def test_rgb_night_frames_are_darker_and_noisier():
    brightness = by_light(frames("rgb"), lambda f: float(f.image.mean()))
    day, night = np.mean(brightness["day"]), np.mean(brightness["night"])
    assert night < 0.6 * day
