"""The audit's review page: one self-contained index.html a person opens in a browser.

Each suggestion is a card: the image (an inline JPEG thumbnail) with its label boxes in green and
the model's predictions in orange, the boxes of the suggestion drawn thick. Filters by class and
kind; Accept / Reject per card; "Save corrections.json" downloads every decision, each carrying the
exact correction `prepare` applies (pipeline/data/corrections.py), with boxes normalised to [0, 1].
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.artifacts import CORRECTIONS_FILE, CORRECTIONS_FORMAT, AuditFiles
from pipeline.core.io import write_text
from pipeline.model.inference import Detections

if TYPE_CHECKING:
    from pipeline.evaluate.audit import ImageLabels, Issue

THUMBNAIL_SIDE = 320
SHOWN_CONF = 0.25  # predictions drawn for context (the issue's own box is drawn whatever its confidence)
JPEG_QUALITY = 80


def thumbnail(path: Path) -> tuple[str, int, int]:
    """(data URI, width, height) of the image scaled to fit THUMBNAIL_SIDE."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))))
    _, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode(), width, height


def normalised(box: Sequence[float] | None, width: int, height: int) -> list[float] | None:
    if box is None:
        return None
    return [round(v / s, 6) for v, s in zip(box, (width, height, width, height), strict=True)]


def correction(issue: Issue, width: int, height: int) -> dict:
    """What `prepare` applies when the suggestion is accepted (see pipeline/data/corrections.py)."""
    return {
        "image": Path(issue.image).name,
        "kind": issue.kind,
        "label_class": issue.label_class,
        "label_box": normalised(issue.label_box, width, height),
        "predicted_class": issue.predicted_class,
        "predicted_box": normalised(issue.predicted_box, width, height),
    }


def card_data(
    issues: Sequence[Issue],
    labels: Sequence[ImageLabels],
    detections: Sequence[Detections],
    names: Sequence[str],
) -> list[dict]:
    by_image = {item.image: (item, found) for item, found in zip(labels, detections, strict=True)}
    thumbnails = {image: thumbnail(Path(image)) for image in {issue.image for issue in issues}}
    cards = []
    for number, issue in enumerate(issues):
        item, found = by_image[issue.image]
        uri, width, height = thumbnails[issue.image]
        shown = found.scores >= SHOWN_CONF
        classes = {c for c in (issue.label_class, issue.predicted_class) if c is not None}
        cards.append(
            {
                "id": number,
                "image": issue.image,
                "kind": issue.kind,
                "score": issue.score,
                "classes": sorted(names[c] for c in classes),
                "title": title(issue, names),
                "thumbnail": uri,
                "size": [width, height],
                "labels": normalised_all(item.boxes, width, height),
                "predictions": normalised_all(found.boxes[shown], width, height),
                "label_box": normalised(issue.label_box, width, height),
                "predicted_box": normalised(issue.predicted_box, width, height),
                "correction": correction(issue, width, height),
            }
        )
    return cards


def normalised_all(boxes: np.ndarray, width: int, height: int) -> list[list[float]]:
    return [normalised(box, width, height) for box in boxes.tolist()]


def title(issue: Issue, names: Sequence[str]) -> str:
    label = None if issue.label_class is None else names[issue.label_class]
    predicted = None if issue.predicted_class is None else names[issue.predicted_class]
    text = {
        "overlooked": f"unlabelled {predicted} (confidence {issue.confidence})",
        "swapped": f"labelled {label}, looks like {predicted}",
        "badly_located": f"{label} box misplaced",
        "spurious": f"{label} label on nothing the model sees",
    }[issue.kind]
    return text if issue.fold is None else f"{text}; fold {issue.fold} model"


def render(cards: list[dict], names: Sequence[str], kinds: Sequence[str], note: str = "") -> str:
    """The page; `note` (where the scores come from, e.g. out-of-fold models) under its heading."""
    options = lambda values: "".join(  # noqa: E731
        f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values
    )
    payload = json.dumps({"cards": cards, "file": CORRECTIONS_FILE, "format": CORRECTIONS_FORMAT})
    return (
        TEMPLATE.replace("@NOTE@", f"<p><b>{html.escape(note)}</b></p>" if note else "")
        .replace("@CLASSES@", options(names))
        .replace("@KINDS@", options(kinds))
        .replace("@DATA@", payload.replace("</", "<\\/"))
    )


def write_review_page(
    out: Path,
    issues: Sequence[Issue],
    labels: Sequence[ImageLabels],
    detections: Sequence[Detections],
    names: Sequence[str],
    kinds: Sequence[str],
    note: str = "",
) -> Path:
    page = render(card_data(issues, labels, detections, names), names, kinds, note)
    return write_text(AuditFiles(Path(out)).page, page)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Label audit</title>
<style>
body { font-family: sans-serif; margin: 1em; }
#cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ccc; padding: 6px; width: 330px; }
.card.accepted { border-color: #2a2; background: #efe; }
.card.rejected { border-color: #a22; background: #fee; opacity: 0.6; }
.frame { position: relative; display: inline-block; }
.frame svg { position: absolute; left: 0; top: 0; }
.legend span { padding: 0 6px; }
</style></head><body>
<h1>Label audit</h1>
@NOTE@
<p class="legend"><span style="color:#0a0">&#9632; labels</span>
<span style="color:#f80">&#9632; predictions</span>
thick boxes: the suggestion. Lower score = more likely wrong.</p>
<label>class <select id="class-filter"><option value="">all</option>@CLASSES@</select></label>
<label>kind <select id="kind-filter"><option value="">all</option>@KINDS@</select></label>
<button id="save">Save corrections.json</button> <span id="decided"></span>
<div id="cards"></div>
<script id="data" type="application/json">@DATA@</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const decisions = {};
const svgNS = "http://www.w3.org/2000/svg";
function rect(svg, box, w, h, colour, width) {
  if (!box) return;
  const r = document.createElementNS(svgNS, "rect");
  r.setAttribute("x", box[0] * w); r.setAttribute("y", box[1] * h);
  r.setAttribute("width", (box[2] - box[0]) * w); r.setAttribute("height", (box[3] - box[1]) * h);
  r.setAttribute("fill", "none"); r.setAttribute("stroke", colour); r.setAttribute("stroke-width", width);
  svg.appendChild(r);
}
function decide(card, element, decision) {
  decisions[card.id] = decision;
  element.classList.remove("accepted", "rejected");
  element.classList.add(decision === "accept" ? "accepted" : "rejected");
  document.getElementById("decided").textContent = Object.keys(decisions).length + " decided";
}
function build(card) {
  const element = document.createElement("div");
  element.className = "card"; element.dataset.id = card.id;
  element.dataset.kind = card.kind; element.dataset.classes = JSON.stringify(card.classes);
  const frame = document.createElement("div"); frame.className = "frame";
  const img = document.createElement("img"); img.src = card.thumbnail;
  frame.appendChild(img);
  img.onload = () => {
    const w = img.width, h = img.height, svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    card.labels.forEach(b => rect(svg, b, w, h, "#0a0", 1));
    card.predictions.forEach(b => rect(svg, b, w, h, "#f80", 1));
    rect(svg, card.label_box, w, h, "#0a0", 3); rect(svg, card.predicted_box, w, h, "#f80", 3);
    frame.appendChild(svg);
  };
  const text = document.createElement("div");
  text.textContent = `${card.kind} (score ${card.score}): ${card.title} - ${card.image.split("/").pop()}`;
  const accept = document.createElement("button"); accept.textContent = "Accept"; accept.className = "accept";
  const reject = document.createElement("button"); reject.textContent = "Reject"; reject.className = "reject";
  accept.onclick = () => decide(card, element, "accept");
  reject.onclick = () => decide(card, element, "reject");
  element.append(frame, text, accept, reject);
  return element;
}
function filter() {
  const cls = document.getElementById("class-filter").value;
  const kind = document.getElementById("kind-filter").value;
  document.querySelectorAll(".card").forEach(e => {
    const show = (!kind || e.dataset.kind === kind) && (!cls || JSON.parse(e.dataset.classes).includes(cls));
    e.style.display = show ? "" : "none";
  });
}
function corrections() {
  return {format: data.format, corrections: data.cards.filter(c => c.id in decisions)
    .map(c => ({...c.correction, decision: decisions[c.id], score: c.score}))};
}
function save() {
  const blob = new Blob([JSON.stringify(corrections(), null, 2)], {type: "application/json"});
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = data.file;
  document.body.appendChild(a); a.click(); a.remove();
}
const container = document.getElementById("cards");
data.cards.forEach(c => container.appendChild(build(c)));
document.getElementById("class-filter").onchange = filter;
document.getElementById("kind-filter").onchange = filter;
document.getElementById("save").onclick = save;
</script></body></html>
"""
