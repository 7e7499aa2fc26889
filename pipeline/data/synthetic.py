"""Deterministic synthetic detection data: the embedded default dataset.

Thermal frames are 16-bit radiometric counts, as an uncooled LWIR core delivers them: a cool
scene with a vertical gradient, low-frequency temperature variation, column fixed-pattern noise
and temporal noise, and warm objects (people, animals, vehicles with a hot engine) at varied sizes,
some small, some overlapping, some frames empty. `prepare` normalises them to 8 bit like a real
thermal pipeline. The RGB variant draws the same scenes in colour on a textured background.

Frames come in sequences (`seq007_night_f03`): consecutive frames of one sequence share the scene and
move objects a little, so a random split would leak; `prepare` splits by sequence. The middle of
the name is the sequence's lighting (odd sequences are `night`), an attribute for evaluate.slices,
and the pixels show it: by day the sun warms the background towards the objects' temperature
(solar loading: less thermal contrast); at night an RGB camera runs at high gain (a darker picture
with more noise). So the default demo's per-slice metrics differ for a reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CLASSES = ("person", "animal", "vehicle")
FRAMES_PER_SEQUENCE = 8
EMPTY_FRAME_RATE = 0.08
LIGHTING = ("day", "night")  # by sequence parity: in the file name and in the pixels
SOLAR_LOADING = 0.6  # thermal by day: object heat contrast x this
NIGHT_GAIN = 0.35  # rgb at night: brightness x this ...
NOISE_SD = {"day": 4.0, "night": 10.0}  # ... and the noise that high gain brings (0-255 levels)
# (height, width) in pixels at a 160 px frame, before the per-object random scale
CLASS_SHAPES = {0: (26.0, 10.0), 1: (14.0, 26.0), 2: (18.0, 34.0)}
RGB_COLOURS = {0: (200, 60, 50), 1: (150, 100, 40), 2: (40, 80, 200)}


@dataclass(frozen=True)
class SyntheticFrame:
    name: str  # file stem, e.g. seq003_night_f05
    group: str  # the sequence it belongs to
    image: np.ndarray  # thermal: (H, W) uint16 counts; rgb: (H, W, 3) uint8
    boxes: np.ndarray  # (N, 5) float32: class, cx, cy, w, h normalised to [0, 1]


@dataclass(frozen=True)
class _Object:
    cls: int
    cx: float
    cy: float
    h: float
    w: float
    vx: float
    vy: float
    heat: float


def generate(sensor: str, images: int, size: int, seed: int) -> Iterator[SyntheticFrame]:
    """Yield `images` frames; the same arguments always yield identical frames."""
    rng = np.random.default_rng(seed)
    sequences = -(-images // FRAMES_PER_SEQUENCE)
    produced = 0
    for seq in range(sequences):
        scene = _scene(rng, sensor, size)
        objects = _objects(rng, size)
        for index in range(FRAMES_PER_SEQUENCE):
            if produced == images:
                return
            visible = [] if rng.random() < EMPTY_FRAME_RATE else _moved(objects, index, size)
            image, boxes = _render(rng, sensor, scene, visible, size, LIGHTING[seq % 2])
            yield SyntheticFrame(
                f"seq{seq:03d}_{LIGHTING[seq % 2]}_f{index:02d}", f"seq{seq:03d}", image, boxes
            )
            produced += 1


def _scene(rng: np.random.Generator, sensor: str, size: int) -> np.ndarray:
    """A float background: counts for thermal, 0-255 RGB for rgb."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    low_freq = sum(
        rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy))
        for _ in range(3)
    )
    if sensor == "thermal":
        base = rng.uniform(26000, 30000)  # a cool scene, in raw 14/16-bit counts
        gradient = rng.uniform(-800, 800) * yy
        column_fpn = rng.normal(0, 40, size)[None, :]
        return base + gradient + 250 * low_freq + column_fpn
    ground = rng.uniform(60, 170, size=3)
    texture = 25 * low_freq[..., None] + rng.normal(0, 6, (size, size, 3))
    return ground[None, None, :] + texture


def _objects(rng: np.random.Generator, size: int) -> list[_Object]:
    count = int(rng.integers(1, 6))
    objects = []
    for _ in range(count):
        cls = int(rng.integers(0, len(CLASSES)))
        h, w = CLASS_SHAPES[cls]
        scale = rng.uniform(0.35, 1.6) * size / 160  # some objects are tiny (under 8 px)
        objects.append(
            _Object(
                cls=cls,
                cx=rng.uniform(0.1, 0.9) * size,
                cy=rng.uniform(0.1, 0.9) * size,
                h=h * scale,
                w=w * scale,
                vx=rng.normal(0, 1.5),
                vy=rng.normal(0, 1.0),
                heat=rng.uniform(900, 2500),
            )
        )
    return objects


def _moved(objects: list[_Object], index: int, size: int) -> list[_Object]:
    return [
        _Object(
            o.cls,
            float(np.clip(o.cx + o.vx * index, 0, size - 1)),
            float(np.clip(o.cy + o.vy * index, 0, size - 1)),
            o.h,
            o.w,
            o.vx,
            o.vy,
            o.heat,
        )
        for o in objects
    ]


def _render(
    rng: np.random.Generator,
    sensor: str,
    scene: np.ndarray,
    objects: list[_Object],
    size: int,
    lighting: str,
) -> tuple[np.ndarray, np.ndarray]:
    canvas = scene.copy()
    contrast = SOLAR_LOADING if sensor == "thermal" and lighting == "day" else 1.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    boxes = []
    for obj in objects:
        mask = _shape_mask(obj, xx, yy)
        if not mask.any():
            continue
        _paint(canvas, mask, obj, sensor, xx, yy, contrast)
        rows, cols = np.nonzero(mask)
        x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
        boxes.append(
            [obj.cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size]
        )
    if sensor == "thermal":
        noisy = canvas + rng.normal(0, 30, canvas.shape)  # temporal noise (NETD)
        image = np.clip(noisy, 0, 65535).astype(np.uint16)
    else:
        gain = NIGHT_GAIN if lighting == "night" else 1.0
        noisy = canvas * gain + rng.normal(0, NOISE_SD[lighting], canvas.shape)
        image = np.clip(noisy, 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 5)


def _shape_mask(obj: _Object, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    dx, dy = (xx - obj.cx) / (obj.w / 2), (yy - obj.cy) / (obj.h / 2)
    if obj.cls == 2:  # vehicle: a rectangle
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    return dx**2 + dy**2 <= 1  # person (tall) and animal (wide): ellipses


def _paint(
    canvas: np.ndarray,
    mask: np.ndarray,
    obj: _Object,
    sensor: str,
    xx: np.ndarray,
    yy: np.ndarray,
    contrast: float,
) -> None:
    if sensor == "thermal":
        canvas[mask] += obj.heat * contrast
        if obj.cls == 2:  # the engine runs hot at the front of the vehicle
            engine = mask & (xx > obj.cx + obj.w / 6)
            canvas[engine] += obj.heat * contrast
        return
    canvas[mask] = RGB_COLOURS[obj.cls]
    if obj.cls == 2:
        windows = mask & (np.abs(yy - obj.cy + obj.h / 5) < obj.h / 6)
        canvas[windows] = (200, 220, 240)
