"""What `analyze` writes: stats.json, recommendations.json, report.md and plots/*.png."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import advice, rules
from pipeline.core.artifacts import ANALYSIS_PLOTS, Artifacts
from pipeline.core.config import PipelineConfig
from pipeline.core.io import atomic_path, write_json, write_text

if TYPE_CHECKING:
    from pipeline.data.analyze import AnalyzeResult, SplitStats


def write_outputs(cfg: PipelineConfig, result: AnalyzeResult) -> None:
    files = Artifacts.of(cfg)
    write_json(files.stats, {"imgsz": result.imgsz, **{s.name: s.metrics() for s in result.splits}})
    write_json(files.recommendations, recommendations_payload(cfg, result))
    write_plots(result, files.analysis_plots)
    write_text(files.analysis_report, report_markdown(cfg, result))


def recommendations_payload(cfg: PipelineConfig, result: AnalyzeResult) -> dict:
    """`facts` holds exactly the DatasetFacts fields: `train` reads it with facts.load_facts."""
    return {
        "facts": {**dataclasses.asdict(result.facts), "class_images": list(result.facts.class_images)},
        "classes": list(cfg.classes.names),
        "imgsz": result.imgsz,
        "configured": {"model": cfg.model.name, "sensor": cfg.sensor.name, "hardware": cfg.hardware.name},
        "recommendations": [d.__dict__ for d in result.recommendations],
        "warnings": list(result.warnings),
        "plan": result.plan.as_dict(),
    }


# ---- report.md -----------------------------------------------------------------------------------


def report_markdown(cfg: PipelineConfig, result: AnalyzeResult) -> str:
    facts, imgsz = result.facts, result.imgsz
    lines = [
        f"# Dataset analysis: {cfg.paths.prepared}",
        "",
        f"Object sizes below are at the training image size, **{imgsz} px** (the long side of every "
        "image resized to it, as Ultralytics does). The resolution itself comes from "
        f"`train.imgsz`, or from Algorithm 4 when it is `auto`, which reads the share of small objects "
        f"at the **source** resolution: {facts.fraction_small:.1%} of training objects are under "
        f"{rules.SMALL_OBJECT_PX} px in frames up to {facts.max_side} px.",
        "",
        "## Splits",
        "",
        *_split_table(result.splits),
        "",
        "## Classes (instances / images containing the class)",
        "",
        *_class_table(cfg.classes.names, result.splits),
        "",
        "## Recommendations",
        "",
        "| key | value | reason |",
        "|---|---|---|",
        *(f"| {d.key} | {d.value} | {d.reason} |" for d in result.recommendations),
        "",
        "## Warnings",
        "",
        *([f"- {w}" for w in result.warnings] or ["None."]),
        "",
        "## Training plan (what `train` will use)",
        "",
        "```",
        result.plan.table(),
        "```",
        "",
        "## Plots",
        "",
        *(f"![{name}](plots/{name})" for name in ANALYSIS_PLOTS),
    ]
    return "\n".join(lines) + "\n"


def _split_table(splits: tuple[SplitStats, ...]) -> list[str]:
    rows = {
        "images": lambda s: s.images,
        "instances": lambda s: s.instances,
        "background images": lambda s: s.background_images,
        "missing label files": lambda s: s.missing_label_files,
        "boxes per image (mean / p95 / max)": lambda s: _triple(s.boxes_per_image, ("mean", "p95", "max")),
        "imbalance ratio (max/min instances)": lambda s: s.imbalance_ratio,
        "aspect ratio w/h (p5 / median / p95)": lambda s: _triple(s.aspect_ratio, ("p5", "median", "p95")),
        **{
            f"side {_bucket_range(i)} at training size": lambda s, name=name: _count_share(
                s.size_buckets[name], s.instances
            )
            for i, (name, _) in enumerate(advice.SIZE_BUCKETS)
        },
        "under 64 px at training size": lambda s: f"{s.fraction_small:.1%}",
        "under 64 px at source size": lambda s: f"{s.fraction_small_source:.1%}",
        "longest image side (px)": lambda s: s.max_side,
    }
    header = ["| | " + " | ".join(s.name for s in splits) + " |", "|---" * (len(splits) + 1) + "|"]
    return header + [
        f"| {label} | " + " | ".join(str(get(s)) for s in splits) + " |" for label, get in rows.items()
    ]


def _class_table(names: list[str], splits: tuple[SplitStats, ...]) -> list[str]:
    header = ["| class | " + " | ".join(s.name for s in splits) + " |", "|---" * (len(splits) + 1) + "|"]
    cells = (" | ".join(f"{s.class_instances[n]} / {s.class_images[n]}" for s in splits) for n in names)
    return header + [f"| {name} | {row} |" for name, row in zip(names, cells, strict=True)]


def _triple(values: dict[str, float], keys: tuple[str, str, str]) -> str:
    return " / ".join(f"{values[k]:g}" for k in keys)


def _count_share(count: int, total: int) -> str:
    return f"{count} ({count / total:.1%})" if total else "0"


def _bucket_range(index: int) -> str:
    low = advice.SIZE_BUCKETS[index - 1][1] if index else 0
    high = advice.SIZE_BUCKETS[index][1]
    return f">= {low:g} px" if high == float("inf") else f"{low:g}-{high:g} px" if low else f"< {high:g} px"


# ---- plots ---------------------------------------------------------------------------------------


def write_plots(result: AnalyzeResult, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers = (plot_object_sizes, plot_class_counts, plot_boxes_per_image, plot_box_centres)
    written = []
    for name, draw in zip(ANALYSIS_PLOTS, drawers, strict=True):
        figure, axes = plt.subplots(figsize=(8, 5), constrained_layout=True)
        try:
            draw(axes, result)
            with atomic_path(folder / name) as tmp:
                figure.savefig(tmp, format="png", dpi=100)
        finally:
            plt.close(figure)
        written.append(folder / name)
    return written


def plot_object_sizes(axes, result: AnalyzeResult) -> None:
    sides = [s.sides[s.sides > 0] for s in result.splits]
    present = [v for v in sides if v.size]
    low = min([8.0, *(float(v.min()) for v in present)]) * 0.9
    high = max([400.0, *(float(v.max()) for v in present)]) * 1.1
    bins = np.geomspace(low, high, 60)
    for split, values in zip(result.splits, sides, strict=True):
        axes.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{split.name} ({values.size})")
    lower = low
    for name, limit in advice.SIZE_BUCKETS:
        upper = min(limit, high)
        middle = float(np.sqrt(lower * upper))
        label = name.removeprefix("side_").replace("_to_", "-").replace("_", " ")
        axes.text(middle, 0.98, label, transform=axes.get_xaxis_transform(), ha="center", va="top")
        if limit < high:
            axes.axvline(limit, color="black", linewidth=1)
        lower = upper
    axes.axvline(rules.SMALL_OBJECT_PX, color="red", linestyle="--", label="64 px (Algorithm 4)")
    axes.set_xscale("log")
    axes.set_xlim(low, high)
    axes.set_xlabel("object size: sqrt(box area) in pixels")
    axes.set_ylabel("objects")
    axes.set_title(f"Object sizes at the {result.imgsz} px training size (guide 13.1.1 buckets)")
    axes.legend(loc="upper left", bbox_to_anchor=(0, 0.93))


def plot_class_counts(axes, result: AnalyzeResult) -> None:
    names = list(result.splits[0].class_instances)
    positions = np.arange(len(names))
    width = 0.8 / len(result.splits)
    for i, split in enumerate(result.splits):
        counts = [split.class_instances[n] for n in names]
        bars = axes.bar(positions + i * width, counts, width, label=f"{split.name} instances")
        axes.bar_label(bars, fontsize=8)
    axes.set_xticks(positions + width * (len(result.splits) - 1) / 2, names, rotation=30, ha="right")
    axes.set_ylabel("instances")
    ratio = result.splits[0].imbalance_ratio
    axes.set_title(f"Class counts (train imbalance max/min: {ratio if ratio is not None else 'n/a'})")
    axes.legend()


def plot_boxes_per_image(axes, result: AnalyzeResult) -> None:
    largest = max(int(s.per_image.max()) if s.per_image.size else 0 for s in result.splits)
    bins = np.arange(largest + 2) - 0.5
    for split in result.splits:
        axes.hist(split.per_image, bins=bins, histtype="step", linewidth=1.5, label=split.name)
    axes.set_xlabel("boxes per image (0 = background image)")
    axes.set_ylabel("images")
    axes.set_title("Boxes per image")
    axes.legend()


def plot_box_centres(axes, result: AnalyzeResult) -> None:
    train = result.splits[0]
    image = axes.imshow(train.centres, extent=(0, 1, 1, 0), cmap="inferno", interpolation="nearest")
    axes.figure.colorbar(image, ax=axes, label="box centres")
    axes.set_xlabel("x (normalised)")
    axes.set_ylabel("y (normalised, top = 0)")
    axes.set_title(f"Box centres in train ({train.instances} boxes)")
