"""What `analyze` measured about a dataset that the plan's rules need, and how `train` reads it back
(the `facts` block of analyze's recommendations.json)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from pipeline.core.io import read_json

SMALL_OBJECT_PX = 64  # Algorithm 4 uses the share of objects under 64 px


@dataclass(frozen=True)
class DatasetFacts:
    """What `analyze` measured that the rules need (all counts on the training split)."""

    train_images: int
    class_images: tuple[int, ...]  # images containing each class
    fraction_small: float  # share of boxes under 64 px at the source resolution
    max_side: int  # longest side of the source frames, px
    # Percentiles 0..100 of box side / its frame's long side: the share of small boxes at any
    # training size (Ultralytics resizes the long side to imgsz). Empty in analyses made before it.
    relative_sides: tuple[float, ...] = ()

    def fraction_small_at(self, imgsz: int) -> float:
        """Share of boxes under SMALL_OBJECT_PX once the frames are resized to imgsz (to 1 %)."""
        if not self.relative_sides:
            return self.fraction_small
        return bisect.bisect_left(self.relative_sides, SMALL_OBJECT_PX / imgsz) / len(self.relative_sides)


def facts_from_dict(payload: dict[str, Any]) -> DatasetFacts:
    return DatasetFacts(
        train_images=int(payload["train_images"]),
        class_images=tuple(int(n) for n in payload["class_images"]),
        fraction_small=float(payload["fraction_small"]),
        max_side=int(payload["max_side"]),
        relative_sides=tuple(float(q) for q in payload.get("relative_sides", ())),
    )


def load_facts(path) -> DatasetFacts:
    """The `facts` block of analyze's recommendations.json."""
    return facts_from_dict(read_json(path)["facts"])
