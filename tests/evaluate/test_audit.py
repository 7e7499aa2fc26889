"""The audit: cleanlab's scores on hand-built cases, the review page in a real Chromium, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.artifacts import CORRECTIONS_FORMAT, AuditFiles
from pipeline.core.errors import ConfigError
from pipeline.data.corrections import apply_corrections, read_corrections
from pipeline.evaluate.audit import KINDS, ImageLabels, Issue, check_split, find_issues
from pipeline.evaluate.review_page import write_review_page
from pipeline.model.inference import Detections

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
A, B = [10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 150.0, 150.0]


def labels(name: str, *boxes: tuple[int, list[float]]) -> ImageLabels:
    return ImageLabels(
        name, np.array([c for c, _ in boxes], dtype=int), np.array([b for _, b in boxes]).reshape(-1, 4)
    )


def predictions(*boxes: tuple[int, list[float], float]) -> Detections:
    return Detections(
        np.array([b for _, b, _ in boxes]).reshape(-1, 4),
        np.array([s for _, _, s in boxes]),
        np.array([c for c, _, _ in boxes], dtype=int),
    )


def planted() -> tuple[list[ImageLabels], list[Detections]]:
    """Five clean images and four with one certain error each (kind in the name)."""
    clean = [
        (labels(f"clean{i}.png", (0, A), (1, B)), predictions((0, A, 0.99), (1, B, 0.98))) for i in range(5)
    ]
    wrong = [
        (labels("overlooked.png", (0, A)), predictions((0, A, 0.99), (1, B, 0.99))),
        (labels("swapped.png", (0, A), (1, B)), predictions((1, A, 0.99), (1, B, 0.99))),
        (labels("badly_located.png", (0, A), (1, B)), predictions((0, [30, 10, 70, 50], 0.99), (1, B, 0.99))),
        (labels("spurious.png", (0, A), (1, B)), predictions((1, B, 0.99))),
    ]
    pairs = clean + wrong
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_each_planted_error_is_found_with_its_kind_at_the_top():
    given, found = planted()
    issues = find_issues(given, found, num_classes=2)
    top = {(Path(i.image).stem, i.kind) for i in issues[:4]}
    assert top == {(kind, kind) for kind in KINDS}
    assert all(i.image.startswith(tuple(KINDS)) for i in issues), "a clean image was reported"
    assert [i.kind for i in issues][-1] == "spurious", "spurious labels are listed last"
    assert [i.score for i in issues[:-1]] == sorted(i.score for i in issues[:-1])
    swapped = next(i for i in issues if i.kind == "swapped")
    assert (swapped.label_class, swapped.predicted_class, swapped.label_box) == (0, 1, A)
    overlooked = next(i for i in issues if i.kind == "overlooked")
    assert (overlooked.label_index, overlooked.predicted_class, overlooked.predicted_box) == (None, 1, B)


def test_an_overlooked_object_names_its_own_box_whatever_order_the_model_gave():
    """cleanlab scores predicted boxes class by class; a detector lists them by confidence. The
    overlooked class-1 box comes first here, before the class-0 box on the label."""
    found = predictions((1, B, 0.99), (0, A, 0.9))
    issues = find_issues([labels("overlooked.png", (0, A))], [found], num_classes=2)
    overlooked = [i for i in issues if i.kind == "overlooked"]
    assert [(i.predicted_class, i.predicted_box, i.confidence) for i in overlooked] == [(1, B, 0.99)]


def test_train_split_needs_folds_and_folds_need_the_train_split():
    with pytest.raises(ConfigError, match="not be honest"):
        check_split("train", None)
    with pytest.raises(ConfigError, match=r"--folds 3 with --split val: .* drop --folds"):
        check_split("val", 3)
    with pytest.raises(ConfigError, match=r"--folds 1: .* at least 2 folds .*; pass --folds 2 or more"):
        check_split("train", 1)
    check_split("val", None)
    check_split("train", 2)


def test_folds_outside_the_train_split_are_refused_by_the_command(project, tmp_path, capsys):
    from pipeline.__main__ import main

    params = str(project.params(tmp_path))
    assert main(["audit", "--params", params, "--split", "test", "--folds", "2"]) == 2
    assert "--folds 2 with --split test" in capsys.readouterr().err
    assert main(["audit", "--params", params, "--split", "train", "--folds", "0"]) == 2
    assert "--folds 0: out-of-fold auditing needs at least 2 folds" in capsys.readouterr().err
    assert main(["audit", "--params", params, "--split", "train"]) == 2
    assert "pass --folds K for out-of-fold models" in capsys.readouterr().err


def test_accepted_corrections_fix_the_labels_and_rejected_ones_do_not(tmp_path):
    corrections = {
        "format": CORRECTIONS_FORMAT,
        "corrections": [
            {
                "image": "a.png",
                "kind": "swapped",
                "label_class": 0,
                "label_box": [0.1, 0.1, 0.5, 0.5],
                "predicted_class": 1,
                "predicted_box": [0.1, 0.1, 0.5, 0.5],
                "decision": "accept",
            },
            {
                "image": "a.png",
                "kind": "overlooked",
                "label_class": None,
                "label_box": None,
                "predicted_class": 2,
                "predicted_box": [0.6, 0.6, 0.9, 0.9],
                "decision": "accept",
            },
            {
                "image": "a.png",
                "kind": "spurious",
                "label_class": 1,
                "label_box": [0.0, 0.0, 0.2, 0.2],
                "predicted_class": None,
                "predicted_box": None,
                "decision": "reject",
            },
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(corrections))
    boxes = np.array([[0, 0.1, 0.1, 0.5, 0.5], [1, 0.0, 0.0, 0.2, 0.2]])
    fixed = apply_corrections("a.png", boxes, read_corrections(tmp_path / "c.json"))
    np.testing.assert_allclose(
        fixed, [[1, 0.1, 0.1, 0.5, 0.5], [1, 0.0, 0.0, 0.2, 0.2], [2, 0.6, 0.6, 0.9, 0.9]]
    )
    np.testing.assert_allclose(
        apply_corrections("other.png", boxes, read_corrections(tmp_path / "c.json")), boxes
    )


# ---- the review page in a real browser ----------------------------------------------------------


def review_page(tmp_path: Path) -> tuple[Path, list[Issue]]:
    import cv2

    given, found = planted()
    for item in given:  # the page embeds thumbnails of real files
        image = np.full((200, 200, 3), 90, np.uint8)
        cv2.imwrite(str(tmp_path / item.image), image)
    given = [ImageLabels(str(tmp_path / g.image), g.classes, g.boxes) for g in given]
    issues = find_issues(given, found, num_classes=2)
    return write_review_page(tmp_path / "audit", issues, given, found, ("person", "dog"), KINDS), issues


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install the distribution's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_review_page_saves_accept_and_reject_decisions(tmp_path, browser):
    page_file, issues = review_page(tmp_path)
    page = browser.new_page()
    page.goto(page_file.as_uri())
    assert page.locator(".card").count() == len(issues)
    assert page.locator(".card svg rect").count() > 0, "no boxes drawn"
    page.select_option("#kind-filter", "swapped")
    visible = page.locator(".card:visible")
    assert visible.count() == 1
    visible.locator("button.accept").click()
    page.select_option("#kind-filter", "")
    page.select_option("#class-filter", "dog")  # the overlooked object is a dog
    page.locator(".card:visible[data-kind=overlooked] button.reject").click()
    with page.expect_download() as download:
        page.click("#save")
    saved = json.loads(Path(download.value.path()).read_text())
    assert download.value.suggested_filename == "corrections.json"
    assert saved["format"] == CORRECTIONS_FORMAT
    decisions = {c["kind"]: c["decision"] for c in saved["corrections"]}
    assert decisions == {"swapped": "accept", "overlooked": "reject"}
    swap = next(c for c in saved["corrections"] if c["kind"] == "swapped")
    assert (swap["image"], swap["label_class"], swap["predicted_class"]) == ("swapped.png", 0, 1)
    assert swap["label_box"] == [0.05, 0.05, 0.25, 0.25]  # A in a 200 px image
    fixed = apply_corrections(
        "swapped.png",
        np.array([[0, 0.05, 0.05, 0.25, 0.25]]),
        read_corrections(Path(shutil.copy(download.value.path(), tmp_path / "corrections.json"))),
    )
    np.testing.assert_allclose(fixed, [[1, 0.05, 0.05, 0.25, 0.25]])


# ---- end to end on the tiny trained project -------------------------------------------------------


def test_audit_command_on_the_tiny_project(project, tmp_path):
    from mlflow import MlflowClient

    from pipeline.__main__ import main

    out = tmp_path / "audit"
    assert (
        main(["audit", "--params", str(project.params(tmp_path)), "--out", str(out), "--max-score", "1.0"])
        == 0
    )
    issues = json.loads(AuditFiles(out).issues.read_text())
    assert isinstance(issues, list)
    assert all(i["kind"] in KINDS and 0 <= i["score"] <= 1 and Path(i["image"]).exists() for i in issues)
    ranked = [(i["kind"] == "spurious", i["score"]) for i in issues]
    assert ranked == sorted(ranked)
    page = AuditFiles(out).page.read_text()
    embedded = page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    cards = json.loads(embedded)["cards"]
    run_id = json.loads((project.train_report / "run.json").read_text())["run_id"]
    logged = MlflowClient(project.tracking_uri).get_run(run_id)
    assert logged.data.metrics["audit/val/issues"] == len(issues)
    assert "audit/index.html" in {
        a.path for a in MlflowClient(project.tracking_uri).list_artifacts(run_id, "audit")
    }
    assert [(c["image"], c["kind"], c["score"]) for c in cards] == [
        (i["image"], i["kind"], i["score"]) for i in issues
    ]


def test_audit_of_an_empty_split_is_a_clear_error(project, tmp_path, capsys):
    from pipeline.__main__ import main

    prepared = tmp_path / "prepared"
    shutil.copytree(project.prepared, prepared)
    shutil.rmtree(prepared / "images" / "test")
    (prepared / "images" / "test").mkdir()
    params = project.params(tmp_path, f"paths.prepared={prepared}")
    assert main(["audit", "--params", str(params), "--split", "test", "--out", str(tmp_path / "a")]) == 2
    assert "audit needs images in the test split" in capsys.readouterr().err


def test_audit_without_a_trained_model_is_a_clear_error(project, tmp_path, capsys):
    from pipeline.__main__ import main

    params = project.params(tmp_path, f"paths.train={tmp_path / 'untrained'}")
    assert main(["audit", "--params", str(params), "--out", str(tmp_path / "a")]) == 2
    assert "best.pt not found: run the train stage first" in capsys.readouterr().err
