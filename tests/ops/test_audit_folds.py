"""Out-of-fold auditing of the train split: the fold assignment, and one real run with two folds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from pipeline.core.artifacts import Artifacts, AuditFiles
from pipeline.core.compose import compose_config
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_text
from pipeline.data.prepare import run as prepare
from pipeline.evaluate.audit import KINDS
from pipeline.model.scoring import split_images
from pipeline.ops.audit_folds import assign_folds
from tests.conftest import tiny_overrides

SEQUENCE = r"^(seq\d+)_"


def frames(sequences: int, per_sequence: int) -> list[Path]:
    return [Path(f"seq{s:03d}_day_f{f:02d}.png") for s in range(sequences) for f in range(per_sequence)]


def test_every_image_is_in_exactly_one_fold_and_the_folds_are_balanced():
    images = [Path(f"img{i}.png") for i in range(23)]
    folds = assign_folds(images, 4, seed=0, group_pattern=None)
    assert sorted(p for fold in folds for p in fold) == sorted(images)
    assert sorted(len(fold) for fold in folds) == [5, 6, 6, 6]


def test_the_assignment_is_seeded():
    images = [Path(f"img{i}.png") for i in range(40)]
    assert assign_folds(images, 3, 7, None) == assign_folds(list(reversed(images)), 3, 7, None)
    assert assign_folds(images, 3, 7, None) != assign_folds(images, 3, 8, None)


def test_frames_of_one_sequence_stay_in_one_fold():
    images = frames(sequences=7, per_sequence=5)
    folds = assign_folds(images, 3, seed=1, group_pattern=SEQUENCE)
    assert sorted(p for fold in folds for p in fold) == sorted(images)
    sequence_folds = {}
    for k, fold in enumerate(folds):
        for image in fold:
            sequence_folds.setdefault(re.match(SEQUENCE, image.stem).group(1), set()).add(k)
    assert len(sequence_folds) == 7 and all(len(found) == 1 for found in sequence_folds.values())
    assert all(fold for fold in folds)


def test_too_many_folds_and_too_few_are_clear_errors():
    with pytest.raises(
        ConfigError, match=r"--folds 4: the train split has 3 image\(s\).*pass --folds 3 or fewer"
    ):
        assign_folds([Path(f"{i}.png") for i in range(3)], 4, 0, None)
    with pytest.raises(ConfigError, match=r"10 image\(s\) in 2 sequence\(s\) of data.split.group_pattern"):
        assign_folds(frames(2, 5), 3, 0, SEQUENCE)
    with pytest.raises(ConfigError, match="audit val or test instead"):
        assign_folds(frames(1, 5), 2, 0, SEQUENCE)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        assign_folds(frames(4, 2), 1, 0, None)


def test_two_fold_audit_of_the_train_split_end_to_end(tmp_path, capsys):
    """Structure only, at 32 px and one epoch per fold model: what the tiny models find means nothing."""
    from pipeline.__main__ import main

    overrides = [
        *tiny_overrides(tmp_path, images=32, size=32),
        "audit.fold_epochs=1",
        f"data.split.group_pattern='{SEQUENCE}'",
        f"paths.audit={tmp_path / 'audit'}",
    ]
    cfg = compose_config(overrides)
    prepare(cfg)
    params = write_text(tmp_path / "params.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    argv = ["audit", "--params", str(params), "--split", "train", "--folds", "2", "--max-score", "1.0"]
    assert main(argv) == 0
    assert "from 2 scaled-down out-of-fold models" in capsys.readouterr().out

    out = Artifacts.of(cfg).audit
    issues = json.loads(out.issues.read_text())
    train = {str(p) for p in split_images(Path(cfg.paths.prepared), "train")}
    assert issues, "with --max-score 1.0 a one-epoch model confirms almost no label"
    assert all(i["image"] in train and i["kind"] in KINDS for i in issues)
    assert {i["fold"] for i in issues} <= {0, 1}
    for issue in issues:  # the model that scored an image never trained on it
        trained_on = set(AuditFiles(out.folder).fold(issue["fold"]).listing.read_text().split())
        assert str(Path(issue["image"]).resolve()) not in trained_on
    listings = [set(AuditFiles(out.folder).fold(k).listing.read_text().split()) for k in (0, 1)]
    assert not listings[0] & listings[1] and len(listings[0] | listings[1]) == len(train)
    ranked = [(i["kind"] == "spurious", i["score"]) for i in issues]
    assert ranked == sorted(ranked)
    assert "2 scaled-down out-of-fold models" in out.page.read_text()

    client = MlflowClient(cfg.track.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.track.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.runName` = 'audit'")
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(run.data.tags["audit.fold"] for run in children) == ["0", "1"]
    assert parent.data.metrics["audit/train/issues"] == len(issues)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "audit")} == {
        "audit/issues.json",
        "audit/index.html",
    }
