"""Damaged or hostile YOLO sources: paths that leave the dataset, declared splits with no images,
label files written by Windows editors (BOM, CRLF). Each dataset is built here, a few 8 px images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from pipeline.core.compose import compose_config
from pipeline.core.data_config import FINDING_ACTIONS
from pipeline.core.errors import DataError
from pipeline.data.labels import read_labels
from pipeline.data.prepare_report import policy_choices
from pipeline.data.readers import read_source


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)
    return path


def dataset(root: Path, yaml_text: str, splits: tuple[str, ...] = ("train", "val")) -> Path:
    for split in splits:
        image(root / "images" / split / f"{split}0.png")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{split}0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml_text)
    return root


def read(root: Path, **options) -> list:
    """The YOLO reader on `root`, with conf/'s data options and `options` over them."""
    data = replace(compose_config(["data=yolo_dir", f"data.path={root}"]).data, **options)
    source = read_source(data, ["a"])
    return list(source.entries())


@pytest.mark.parametrize("climbs", [False, True])
def test_split_outside_the_dataset_is_refused_naming_file_key_and_value(tmp_path, climbs):
    root = tmp_path / "ds"
    train = "../" * len(root.parts) + "etc" if climbs else "/etc"  # `..` enough to reach / from here
    dataset(root, f"train: {train}\nval: images/val\nnames: [a]\n")
    with pytest.raises(DataError) as raised:
        read(root)
    message = str(raised.value)
    assert str(root / "data.yaml") in message and "train" in message and repr(train) in message
    assert "data.allow_outside_paths=true" in message


def test_declared_split_with_no_images_is_an_error_naming_it(tmp_path):
    root = dataset(tmp_path / "ds", "train: empty\nval: images/val\nnames: [a]\n", splits=("val",))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"data\.yaml: train: declares the train split .* holds no images"):
        read(root)


def test_image_list_leaving_the_dataset_is_refused_unless_allowed(tmp_path):
    outside = image(tmp_path / "elsewhere" / "images" / "x.png")
    root = dataset(tmp_path / "ds", "train: train.txt\nval: images/val\nnames: [a]\n")
    (root / "train.txt").write_text("images/train/train0.png\n../elsewhere/images/x.png\n")
    with pytest.raises(DataError, match=r"train\.txt:2: '\.\./elsewhere/images/x\.png' resolves to"):
        read(root)
    (root / "train.txt").write_text(f"images/train/train0.png\n{outside}\n")
    with pytest.raises(DataError, match="outside the dataset folder"):
        read(root)
    assert len(read(root, allow_outside_paths=True)) == 3  # two listed + one val


def test_symlinked_image_leaving_the_dataset_is_refused(tmp_path):
    outside = image(tmp_path / "secret.png")
    root = dataset(tmp_path / "ds", "train: images/train\nval: images/val\nnames: [a]\n")
    (root / "images" / "train" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"link\.png.*outside the dataset folder.*allow_outside_paths"):
        read(root)


def test_bom_and_crlf_label_files_read_as_plain_ones(tmp_path):
    root = dataset(tmp_path / "ds", "train: images/train\nval: images/val\nnames: [a, b, c]\n")
    label = root / "labels" / "train" / "train0.txt"
    label.write_bytes(b"\xef\xbb\xbf2 0.5 0.5 0.2 0.2\r\n1 0.3 0.3 0.1 0.1\r\n")
    train = next(e for e in read(root) if e.split == "train")
    assert [r.cls for r in train.labels] == ["2", "1"]
    assert train.labels[1].values == ("0.3", "0.3", "0.1", "0.1")
    table = read_labels([str(label)], num_classes=3)  # analyze's fast reader
    assert table.classes.tolist() == [2, 1]
    assert table.boxes[1].tolist() == [0.3, 0.3, 0.1, 0.1]


def test_policy_choices_offer_only_accepted_actions_and_the_fix_that_keeps_boxes():
    advice = policy_choices(["class_out_of_range", "unknown_class", "orphan_label"])
    assert "data.validation.policy.class_out_of_range=drop;" in advice  # warn is refused for this kind
    assert "unknown_class: add the class to classes.names or map it" in advice
    assert "data.class_map" in advice and "policy.unknown_class=drop" in advice
    assert "data.validation.policy.orphan_label=warn" in advice
    for kind, accepted in FINDING_ACTIONS.items():
        offered = policy_choices([kind]).rsplit("=", 1)[1].split("|")
        assert set(offered) <= set(accepted) - {"error"}
