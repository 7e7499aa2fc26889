"""evaluate's report.md: the numbers, the warnings in plain words, and where the plots are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.core.markdown import table

if TYPE_CHECKING:
    from pipeline.evaluate.results import Evaluation


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_section(e: Evaluation) -> list[str]:
    rows = [
        ["precision", fmt(e.precision)],
        ["recall", fmt(e.recall)],
        ["mAP50", fmt(e.map50)],
        ["mAP50-95", fmt(e.map50_95)],
        ["mAP50-95 (COCO, faster-coco-eval)", fmt(e.coco_map50_95)],
    ]
    return [
        "## Summary",
        "",
        f"Evaluated on {e.split_note}: {e.images} images, {e.instances} objects.",
        "",
        *table(["metric", "value"], rows),
        "",
        "Precision and recall are at the confidence with the best mean F1 (Ultralytics' convention); "
        "the COCO figure uses 101-point interpolation, so it can differ slightly from Ultralytics' mAP50-95.",
    ]


def warnings_section(e: Evaluation) -> list[str]:
    lines = ["## Warnings", ""]
    return lines + (
        [f"- {w}" for w in e.warnings]
        if e.warnings
        else ["None: no weak localisation, weak class or swapped pair of classes found."]
    )


def classes_section(e: Evaluation) -> list[str]:
    rows = [
        [
            c.name,
            str(c.instances),
            fmt(c.precision),
            fmt(c.recall),
            fmt(c.ap50),
            fmt(c.ap50_95),
            fmt(t.conf),
            t.rule,
        ]
        for c, t in zip(e.classes, e.thresholds, strict=True)
    ]
    header = ["class", "instances", "P", "R", "AP50", "AP50-95", "threshold", "threshold rule"]
    return ["## Per class", "", *table(header, rows), "", "Thresholds are in thresholds.json for deployment."]


def size_section(e: Evaluation) -> list[str]:
    rows = [[size, fmt(value)] for size, value in e.by_size.items()]
    return [
        "## AP50-95 by object size (faster-coco-eval)",
        "",
        *table(["size (COCO: small < 32², medium < 96² px)", "AP50-95"], rows),
        "",
        "n/a: the split has no object of that size.",
    ]


def true_by_predicted(confusion: tuple[tuple[float, ...], ...]) -> list[list[float]]:
    """Ultralytics keeps (predicted, true); people read a confusion matrix by its true rows."""
    return [list(column) for column in zip(*confusion, strict=True)]


def slices_section(e: Evaluation) -> list[str]:
    if not e.slices:
        return [
            "## Per slice",
            "",
            "No slices: set evaluate.slices (a regex with named groups) or evaluate.slices_csv.",
        ]
    rows = [
        [s.attribute, s.value, str(s.images), str(s.instances), fmt(s.map50), fmt(s.map50_95), fmt(s.recall)]
        for s in e.slices
    ]
    header = ["attribute", "value", "images", "instances", "mAP50", "mAP50-95", "recall@0.5"]
    return [
        "## Per slice",
        "",
        *table(header, rows),
        "",
        "A slice far below the rest is listed under Warnings.",
    ]


def confusion_section(e: Evaluation) -> list[str]:
    names = [c.name for c in e.classes] + ["background"]
    counts = true_by_predicted(e.confusion)
    rows = [[names[t], *map(str, counts[t])] for t in range(len(names))]
    return [
        "## Confusion matrix at the per-class thresholds",
        "",
        "Rows are the true class, columns the predicted one; 'background' means missed (row) or a false "
        "detection (column). Normalised view: plots/confusion_matrix_normalized.png.",
        "",
        *table(["true \\ predicted", *names], rows),
    ]


def plots_section() -> list[str]:
    plots = ["pr_curve", "f1_curve", "precision_curve", "recall_curve", "confusion_matrix"]
    plots += ["confusion_matrix_normalized", "ap_per_class"]
    return ["## Plots", "", *(f"- [{name}](plots/{name}.png)" for name in plots)]


def render(e: Evaluation, model: str, run_id: str, version: str, alias: str) -> str:
    sections = [
        ["# Evaluation report"],
        summary_section(e),
        warnings_section(e),
        classes_section(e),
        size_section(e),
        slices_section(e),
        confusion_section(e),
        plots_section(),
        [
            "## Tracking",
            "",
            f"MLflow run `{run_id}`; registered as `{model}` version {version}, alias `{alias}`.",
        ],
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
