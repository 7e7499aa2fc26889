"""The prepare stage on tiny generated datasets: every reader, every finding kind under each of its
policies, thermal normalisation, group splits and leakage, the output layout and its atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.core.compose import compose_config, write_params
from pipeline.core.data_config import FINDING_ACTIONS
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import read_json
from pipeline.data.frames import labels_frame
from pipeline.data.prepare import run
from pipeline.data.split import split_groups
from pipeline.data.validation import near_pairs
from pipeline.data.write import failed_report_dir
from pipeline.model.images import load_image

BOX = "0 0.500000 0.500000 0.250000 0.250000"  # a clean box, as prepare writes it
SIZE = (64, 48)  # (width, height) of generated images


# ---- builders ----------------------------------------------------------------------------------


def pattern(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smooth random RGB picture: distinct seeds give perceptually distinct images."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return np.asarray(coarse.resize(size, Image.Resampling.BICUBIC))


def seed_of(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def save_image(path: Path, pixels: np.ndarray | None = None, **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern(seed_of(path.stem)) if pixels is None else pixels).save(path, **save_args)
    return path


def yolo_tree(
    root: Path,
    splits: dict[str, dict[str, str | None]],
    names: tuple[str, ...] = ("cat", "dog"),
    suffix: str = ".png",
) -> Path:
    """images/<split>/<stem><suffix> and labels/<split>/<stem>.txt (None: no label file) + data.yaml."""
    for split, files in splits.items():
        for stem, label in files.items():
            save_image(root / "images" / split / f"{stem}{suffix}")
            if label is not None:
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"{stem}.txt").write_text(label)
    doc = {s: f"images/{s}" for s in splits} | {"names": list(names)}
    (root / "data.yaml").write_text(yaml.safe_dump(doc))
    return root


def clean(**train: str | None) -> dict[str, dict[str, str | None]]:
    """Two clean training images and one validation image, plus the given training files."""
    return {"train": {"a": BOX, "b": BOX, **train}, "val": {"v": BOX}}


def prepare(
    tmp_path: Path, source: Path, *overrides: str, data: str = "yolo_dir", classes: str = "[cat,dog]"
):
    """Run the stage; return (PrepareResult or the DataError, report.json, output folder)."""
    out = tmp_path / "prepared"
    base = [f"data={data}", f"data.path={source}", f"classes.names={classes}", f"paths.prepared={out}"]
    cfg = compose_config([*base, "sensor=rgb", *overrides])
    try:
        result = run(cfg)
    except DataError as exc:
        result = exc
    reports = out if not isinstance(result, DataError) else failed_report_dir(out)
    return result, read_json(reports / "report.json"), out


def found(report: dict, kind: str) -> list[tuple[str, int | None]]:
    return [(f["file"], f["line"]) for f in report["findings"] if f["kind"] == kind]


def label_lines(out: Path, stem: str) -> list[str] | None:
    """The boxes of an image's output label file as lines of fixed precision (the file may be the
    source's own, linked, or written by prepare), or None when the image is not in the output."""
    hits = list(out.glob(f"labels/*/{stem}.txt"))
    if not hits:
        return None
    rows = (line.split() for line in hits[0].read_text().splitlines())
    return [" ".join([cls, *(f"{float(v):.6f}" for v in values)]) for cls, *values in rows]


def split_of(out: Path, stem: str) -> str | None:
    hits = [p for p in out.glob("images/*/*") if p.stem == stem]
    return hits[0].parent.name if hits else None


def assert_failed(result, out: Path, kind: str) -> None:
    assert isinstance(result, DataError), result
    reports = failed_report_dir(out)
    assert kind in str(result) and str(reports / "report.md") in str(result)
    assert read_json(reports / "report.json")["status"] == "failed"
    assert (reports / "report.md").exists() and not (reports / "data.yaml").exists()
    assert not (reports / "images").exists() and not out.exists()  # no earlier dataset: none appears


def actions(kind: str) -> list[str]:
    return list(FINDING_ACTIONS[kind])


# ---- the embedded default ----------------------------------------------------------------------


def test_default_synthetic_thermal_is_prepared_fast_and_split_by_sequence(tmp_path):
    out = tmp_path / "prepared"
    cfg = compose_config([f"paths.prepared={out}"])
    started = time.perf_counter()
    result = run(cfg)
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"400 frames took {elapsed:.1f} s"  # a few seconds; the bound allows a busy CI box
    assert sum(result.images.values()) == 400 and result.split_mode == "group"
    assert result.images["train"] > result.images["val"] > 0 and result.images["test"] > 0
    assert not any(action == "error" for action in result.actions.values())
    splits_of_sequence: dict[str, set[str]] = {}
    for image in out.glob("images/*/*.png"):
        splits_of_sequence.setdefault(image.stem.split("_")[0], set()).add(image.parent.name)
    assert len(splits_of_sequence) == 50 and all(len(s) == 1 for s in splits_of_sequence.values())
    path = next(out.glob("images/train/*.png"))
    sample = Image.open(path)  # grey stays one channel on disk, a third of the bytes ...
    assert sample.mode == "L" and sample.size == (160, 160)
    as_trained = load_image(path, 3)  # ... and Ultralytics' cv2.imread gives the model three equal ones
    assert as_trained.shape == (160, 160, 3) and (as_trained == as_trained[..., :1]).all()
    pixels = np.asarray(sample)
    assert pixels.max() == 255 and pixels.min() == 0


def test_output_is_the_layout_ultralytics_reads(tmp_path):
    out = tmp_path / "prepared"
    run(compose_config(["data.synthetic.images=24", "data.synthetic.size=64", f"paths.prepared={out}"]))
    doc = yaml.safe_load((out / "data.yaml").read_text())
    assert doc["train"] == "images/train" and doc["val"] == "images/val" and doc["test"] == "images/test"
    assert "path" not in doc and doc["names"] == {0: "person", 1: "animal", 2: "vehicle"}
    from pipeline.core.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    checked = check_det_dataset(str(out / "data.yaml"))
    assert Path(checked["train"]) == (out / "images/train").resolve() and checked["nc"] == 3
    images = sorted(p.stem for p in out.glob("images/*/*.png"))
    assert images == sorted(p.stem for p in out.glob("labels/*/*.txt")) and len(images) == 24


def test_manifest_hash_is_the_content_identity(tmp_path):
    source = yolo_tree(tmp_path / "src", clean())
    first, _, out = prepare(tmp_path, source)
    manifest = read_json(out / "manifest.json")
    assert manifest["dataset_hash"] == first.dataset_hash
    listing = "".join(f"{f['path']}\t{f['sha256']}\n" for f in manifest["files"])
    assert first.dataset_hash == hashlib.sha256(listing.encode()).hexdigest()
    for entry in manifest["files"]:
        assert hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["splits"]["train"]["images"] == 2 and manifest["per_class"] == {"cat": 3, "dog": 0}
    again, _, _ = prepare(tmp_path, source)
    assert again.dataset_hash == first.dataset_hash
    (source / "labels/train/a.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    changed, _, _ = prepare(tmp_path, source)
    assert changed.dataset_hash != first.dataset_hash


def test_unconverted_images_are_hard_linked_and_the_source_is_untouched(tmp_path):
    source = yolo_tree(tmp_path / "src", clean(), suffix=".jpg")
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    _, _, out = prepare(tmp_path, source)
    linked = out / "images/train/a.jpg"
    assert os.stat(linked).st_ino == os.stat(source / "images/train/a.jpg").st_ino
    assert read_json(out / "manifest.json")["placed"] == {"hardlink": 3}
    assert before == {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    _, _, out = prepare(tmp_path, source, "data.link=copy")
    assert os.stat(out / "images/train/a.jpg").st_ino != os.stat(source / "images/train/a.jpg").st_ino


def test_label_files_prepare_leaves_as_they_are_are_linked_the_others_written(tmp_path):
    """A source label file that already holds what prepare would write is linked, with its own
    digits (no disk, no rewrite); CRLF, a clipped box or a remapped class are written anew."""
    exact = "0 0.6237980769230769 0.5 0.25 0.25\n"
    files = {
        "exact": exact,
        "crlf": BOX + "\r\n",
        "clipped": "0 0.5 0.5 0.25 1.005\n",
        "dog": "1 0.5 0.5 0.2 0.2\n",
    }
    source = yolo_tree(tmp_path / "src", clean(**files), suffix=".jpg")
    _, _, out = prepare(tmp_path, source)

    def same_file(stem: str) -> bool:
        return (out / f"labels/train/{stem}.txt").stat().st_ino == (
            source / f"labels/train/{stem}.txt"
        ).stat().st_ino

    assert same_file("exact") and same_file("a") and same_file("dog")
    assert (out / "labels/train/exact.txt").read_text() == exact
    assert not same_file("crlf") and label_lines(out, "crlf") == [BOX]
    assert not same_file("clipped") and label_lines(out, "clipped") == [
        "0 0.500000 0.500000 0.250000 1.000000"
    ]
    assert read_json(out / "manifest.json")["labels"] == {"linked": 5, "written": 2}
    _, _, out = prepare(tmp_path, source, classes="[dog,cat]")  # dog's id 1 becomes 0
    assert not same_file("dog") and label_lines(out, "dog") == ["0 0.500000 0.500000 0.200000 0.200000"]


def test_an_interrupted_run_leaves_the_previous_dataset_whole(tmp_path, monkeypatch):
    source = yolo_tree(tmp_path / "src", clean())
    result, _, out = prepare(tmp_path, source)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.data.write.write_data_yaml", interrupted)  # halfway through writing
    (source / "labels/train/a.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, source)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert read_json(out / "manifest.json")["dataset_hash"] == result.dataset_hash
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_main_prints_a_summary_and_errors_exit_2_naming_the_report(tmp_path, capsys):
    from pipeline.__main__ import main as cli

    params = tmp_path / "params.yaml"
    out = tmp_path / "prepared"
    write_params(params, ["data.synthetic.images=16", "data.synthetic.size=64", f"paths.prepared={out}"])
    assert cli(["prepare", "--params", str(params)]) == 0
    printed = capsys.readouterr().out
    assert "prepared 16 images" in printed and "dataset_hash" in printed and "report.md" in printed
    source = yolo_tree(tmp_path / "src", clean(c="0 0.5 0.5 0.2\n"))
    overrides = ["data=yolo_dir", f"data.path={source}", "classes.names=[cat,dog]", f"paths.prepared={out}"]
    write_params(params, overrides)
    assert cli(["prepare", "--params", str(params)]) == 2
    error = capsys.readouterr().err
    assert "bad_line" in error and "labels/train/c.txt:1" in error
    assert (
        str(failed_report_dir(out) / "report.md") in error and f"previous dataset in {out} was kept" in error
    )
    assert read_json(out / "manifest.json")["images"] == 16  # the last good dataset survives the failure


def test_a_policy_that_cannot_apply_to_a_kind_is_refused():
    with pytest.raises(ConfigError, match="out_of_bounds"):
        compose_config(["data.validation.policy.out_of_bounds=warn"])


# ---- one test per finding kind, under each of its policies --------------------------------------


@pytest.mark.parametrize("action", actions("unreadable_image"))
def test_unreadable_image(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(t=BOX, g=BOX), suffix=".jpg")
    truncated = source / "images/train/t.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (source / "images/train/g.jpg").write_bytes(b"not an image at all")
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.unreadable_image={action}")
    assert found(report, "unreadable_image") == [("images/train/g.jpg", None), ("images/train/t.jpg", None)]
    if action == "error":
        assert_failed(result, out, "unreadable_image")
    else:
        assert (
            label_lines(out, "t") is None and label_lines(out, "g") is None and label_lines(out, "a") == [BOX]
        )


def exif_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A 64x32 stored JPEG whose EXIF says: show it rotated (6: 90 degrees clockwise)."""
    pixels = pattern(seed_of(path.stem), (64, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    save_image(path, pixels, exif=exif.tobytes(), quality=95)
    return pixels


@pytest.mark.parametrize("action", actions("exif_orientation"))
def test_exif_orientation(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(r="0 0.25 0.25 0.2 0.2\n"))
    (source / "images/train/r.png").unlink()
    exif_jpeg(source / "images/train/r.jpg", 6)
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.exif_orientation={action}")
    assert found(report, "exif_orientation") == [("images/train/r.jpg", None)]
    assert "displayed frame (data.validation.exif_labels_frame)" in report["findings"][0]["message"]
    if action == "error":
        return assert_failed(result, out, "exif_orientation")
    written = list(out.glob("images/train/r.*"))
    if action == "drop":
        assert written == []
    elif action == "fix":  # the pixels are rotated as a viewer shows them, and the tag is gone
        fixed = Image.open(written[0])
        assert written[0].suffix == ".png" and fixed.size == (32, 64) and 0x0112 not in fixed.getexif()
        assert label_lines(out, "r") == ["0 0.250000 0.250000 0.200000 0.200000"]
    else:
        assert written[0].suffix == ".jpg"  # kept as it is


def test_exif_labels_frame_follows_the_annotations_stated_size():
    rules = compose_config([]).data.validation
    assert labels_frame((32, 64), (64, 32), (32, 64), rules)[0] == "displayed"
    assert labels_frame((64, 32), (64, 32), (32, 64), rules)[0] == "stored"
    assert labels_frame(None, (64, 32), (32, 64), rules) == ("displayed", "data.validation.exif_labels_frame")


def voc_xml(name: str, size: tuple[int, int] | None, objects: list[tuple[str, tuple[int, ...]]]) -> str:
    parts = [f"<annotation>\r\n  <filename>{name}</filename>\r\n"]
    if size:
        parts.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>\r\n")
    for label, (x0, y0, x1, y1) in objects:
        box = f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        parts.append(
            f"  <object>\r\n    <name>{label}</name>\r\n    <bndbox>{box}</bndbox>\r\n  </object>\r\n"
        )
    return "".join(parts) + "</annotation>\r\n"


def voc_tree(root: Path, files: dict[str, str | None], lists: dict[str, list[str]] | None = None) -> Path:
    """JPEGImages/<stem>.png, Annotations/<stem>.xml (text or None), ImageSets/Main/<split>.txt (CRLF)."""
    for stem, xml in files.items():
        save_image(root / "JPEGImages" / f"{stem}.png")
        if xml is not None:
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{stem}.xml").write_text(xml, newline="")
    for split, stems in (lists or {}).items():
        (root / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets/Main" / f"{split}.txt").write_bytes("".join(f"{s}\r\n" for s in stems).encode())
    return root


def clean_voc(**extra: str | None) -> dict[str, str | None]:
    files = {stem: voc_xml(f"{stem}.png", SIZE, [("cat", (17, 13, 48, 36))]) for stem in ("a", "b", "v")}
    return files | extra


def test_voc_reads_split_lists_with_crlf_and_one_based_pixels(tmp_path):
    source = voc_tree(tmp_path / "voc", clean_voc(), {"train": ["a", "b"], "val": ["v"]})
    result, report, out = prepare(tmp_path, source, data="voc_xml")
    assert report["findings"] == [] and result.split_mode == "source"
    assert (split_of(out, "a"), split_of(out, "v")) == ("train", "val")
    assert label_lines(out, "a") == [
        "0 0.492188 0.489583 0.484375 0.479167"
    ]  # x 16..47 of 64, y 12..35 of 48


@pytest.mark.parametrize("action", actions("zero_based_voc"))
def test_zero_based_voc(tmp_path, action):
    """A 0-based exporter under the default data.voc.one_based=true: a box at pixel 0 gives it away."""
    files = {stem: voc_xml(f"{stem}.png", SIZE, [("cat", (16, 12, 47, 35))]) for stem in ("a", "b", "v")}
    files["z"] = voc_xml("z.png", SIZE, [("cat", (0, 0, 31, 23))])
    source = voc_tree(tmp_path / "voc", files, {"train": ["a", "b", "z"], "val": ["v"]})
    policy = f"data.validation.policy.zero_based_voc={action}"
    result, report, out = prepare(tmp_path, source, policy, data="voc_xml")
    assert [file for file, _ in found(report, "zero_based_voc")] == ["Annotations/z.xml"]
    if action == "error":
        assert_failed(result, out, "zero_based_voc")
    elif action == "fix":  # every file read as 0-based: x 16..47 of 64, y 12..35 of 48; z stays inside
        assert label_lines(out, "a") == ["0 0.492188 0.489583 0.484375 0.479167"]
        assert found(report, "slightly_out_of_bounds") == []
    else:  # warn: kept 1-based, so z's box at -1 px overhangs the frame
        overhangs = found(report, "slightly_out_of_bounds") + found(report, "out_of_bounds")
        assert [file for file, _ in overhangs] == ["Annotations/z.xml"]


@pytest.mark.parametrize("action", actions("size_mismatch"))
def test_size_mismatch(tmp_path, action):
    files = clean_voc(m=voc_xml("m.png", (128, 96), [("cat", (33, 25, 96, 72))]))
    source = voc_tree(tmp_path / "voc", files, {"train": ["a", "b", "m"], "val": ["v"]})
    result, report, out = prepare(
        tmp_path, source, f"data.validation.policy.size_mismatch={action}", data="voc_xml"
    )
    assert found(report, "size_mismatch") == [("Annotations/m.xml", None)]
    if action == "error":
        assert_failed(result, out, "size_mismatch")
    elif action == "drop":
        assert label_lines(out, "m") is None
    else:  # warn: the pixel coordinates are read against the annotation's own size
        assert label_lines(out, "m") == ["0 0.496094 0.494792 0.492188 0.489583"]  # x 32..95 of 128


@pytest.mark.parametrize("action", actions("bad_line"))
def test_bad_line(tmp_path, action):
    polygon = "1 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6"
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n0 0.5 0.5 0.2\n0 a b c d\n{polygon}\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.bad_line={action}")
    expected = [("labels/train/c.txt", 2), ("labels/train/c.txt", 3), ("labels/train/c.txt", 4)]
    assert found(report, "bad_line") == expected
    if action == "error":
        assert_failed(result, out, "bad_line")
    elif action == "drop":
        assert label_lines(out, "c") == [BOX]
    else:  # fix: the polygon becomes its bounding box; lines that are not polygons cannot be repaired
        assert label_lines(out, "c") == [BOX, "1 0.300000 0.400000 0.400000 0.400000"]


def test_a_voc_file_that_does_not_parse_is_a_bad_line_and_drops_its_image(tmp_path):
    broken = "<annotation>\r\n  <object>\r\n    <name>cat</name>\r\n  </objct>\r\n</annotation>\r\n"
    source = voc_tree(tmp_path / "voc", clean_voc(x=broken), {"train": ["a", "b", "x"], "val": ["v"]})
    _, report, out = prepare(tmp_path, source, "data.validation.policy.bad_line=drop", data="voc_xml")
    assert found(report, "bad_line") == [("Annotations/x.xml", 4)]
    assert label_lines(out, "x") is None and label_lines(out, "a") is not None


@pytest.mark.parametrize("action", actions("class_out_of_range"))
def test_class_out_of_range(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n5 0.5 0.5 0.2 0.2\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.class_out_of_range={action}")
    assert found(report, "class_out_of_range") == [("labels/train/c.txt", 2)]
    if action == "error":
        assert_failed(result, out, "class_out_of_range")
    else:
        assert label_lines(out, "c") == [BOX]


@pytest.mark.parametrize("action", actions("unknown_class"))
def test_unknown_class_and_the_class_map(tmp_path, action):
    labels = f"{BOX}\n2 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.3 0.3\n4 0.2 0.2 0.1 0.1\n"
    source = yolo_tree(tmp_path / "src", clean(c=labels), names=("cat", "dog", "lynx", "kitten", "DontCare"))
    overrides = [
        f"data.validation.policy.unknown_class={action}",
        "+data.class_map={kitten: cat, DontCare: null}",
    ]
    result, report, out = prepare(tmp_path, source, *overrides)
    assert found(report, "unknown_class") == [
        ("labels/train/c.txt", 2)
    ]  # lynx; DontCare is dropped on purpose
    assert "'lynx'" in report["findings"][0]["message"]
    if action == "error":
        assert_failed(result, out, "unknown_class")
    else:  # kitten merged into cat; lynx and DontCare gone
        assert label_lines(out, "c") == [BOX, "0 0.500000 0.500000 0.300000 0.300000"]
        assert read_json(out / "manifest.json")["dropped_by_class_map"] == 1


@pytest.mark.parametrize("action", actions("out_of_bounds"))
def test_out_of_bounds(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n0 1.2 0.5 0.2 0.2\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.out_of_bounds={action}")
    assert found(report, "out_of_bounds") == [("labels/train/c.txt", 2)]
    if action == "error":
        assert_failed(result, out, "out_of_bounds")
    else:
        assert label_lines(out, "c") == [BOX]


@pytest.mark.parametrize("action", actions("slightly_out_of_bounds"))
def test_slightly_out_of_bounds(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n0 0.995 0.5 0.02 0.2\n"))  # 0.005 past the edge
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.slightly_out_of_bounds={action}")
    assert found(report, "slightly_out_of_bounds") == [("labels/train/c.txt", 2)]
    if action == "error":
        assert_failed(result, out, "slightly_out_of_bounds")
    elif action == "drop":
        assert label_lines(out, "c") == [BOX]
    else:  # clipped to the frame
        assert label_lines(out, "c") == [BOX, "0 0.992500 0.500000 0.015000 0.200000"]


@pytest.mark.parametrize("action", actions("degenerate_box"))
def test_degenerate_box(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n0 0.5 0.5 0 0.3\n1 0.5 0.5 0.2 -0.1\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.degenerate_box={action}")
    assert found(report, "degenerate_box") == [("labels/train/c.txt", 2), ("labels/train/c.txt", 3)]
    if action == "error":
        assert_failed(result, out, "degenerate_box")
    else:
        assert label_lines(out, "c") == [BOX]


@pytest.mark.parametrize("action", actions("tiny_box"))
def test_tiny_box(tmp_path, action):
    tiny = "1 0.500000 0.500000 0.010000 0.200000"  # 0.64 px wide in a 64 px image
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n{tiny}\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.tiny_box={action}")
    assert found(report, "tiny_box") == [("labels/train/c.txt", 2)]
    if action == "error":
        assert_failed(result, out, "tiny_box")
    else:
        assert label_lines(out, "c") == ([BOX, tiny] if action == "warn" else [BOX])


@pytest.mark.parametrize("action", actions("duplicate_box"))
def test_duplicate_box(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n{BOX}\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.duplicate_box={action}")
    assert found(report, "duplicate_box") == [("labels/train/c.txt", 2)]
    if action == "error":
        assert_failed(result, out, "duplicate_box")
    else:
        assert label_lines(out, "c") == ([BOX, BOX] if action == "warn" else [BOX])


@pytest.mark.parametrize("action", actions("near_duplicate_box"))
def test_near_duplicate_box(tmp_path, action):
    near = "0 0.510000 0.500000 0.250000 0.250000"  # IoU 0.92 with BOX
    other_class = "1 0.500000 0.500000 0.250000 0.250000"  # same place, another class: not a duplicate
    source = yolo_tree(tmp_path / "src", clean(c=f"{BOX}\n{near}\n{other_class}\n"))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.near_duplicate_box={action}")
    assert found(report, "near_duplicate_box") == [("labels/train/c.txt", 2)]
    if action == "error":
        assert_failed(result, out, "near_duplicate_box")
    else:
        assert label_lines(out, "c") == ([BOX, near, other_class] if action == "warn" else [BOX, other_class])


@pytest.mark.parametrize("action", actions("missing_label"))
def test_missing_label(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(n=None))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.missing_label={action}")
    assert found(report, "missing_label") == [("images/train/n.png", None)]
    if action == "error":
        assert_failed(result, out, "missing_label")
    else:
        assert label_lines(out, "n") == ([] if action == "warn" else None)


def test_missing_label_is_a_background_only_when_the_config_says_so(tmp_path):
    source = yolo_tree(tmp_path / "src", clean(n=None))
    _, report, out = prepare(tmp_path, source, "data.validation.missing_label_is_background=true")
    assert report["findings"] == [] and label_lines(out, "n") == []


@pytest.mark.parametrize("action", actions("background_image"))
def test_background_image(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(e=""))
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.background_image={action}")
    assert found(report, "background_image") == [("labels/train/e.txt", None)]
    if action == "error":
        assert_failed(result, out, "background_image")
    else:
        assert label_lines(out, "e") == ([] if action == "warn" else None)


@pytest.mark.parametrize("action", actions("orphan_label"))
def test_orphan_label(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean())
    (source / "labels/train/ghost.txt").write_text(BOX)
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.orphan_label={action}")
    assert found(report, "orphan_label") == [("labels/train/ghost.txt", None)]
    if action == "error":
        assert_failed(result, out, "orphan_label")
    else:
        assert label_lines(out, "ghost") is None and label_lines(out, "a") == [BOX]


@pytest.mark.parametrize("action", actions("unlisted_image"))
def test_unlisted_image(tmp_path, action):
    files = clean_voc(u=voc_xml("u.png", SIZE, [("cat", (17, 13, 48, 36))]))
    source = voc_tree(tmp_path / "voc", files, {"train": ["a", "b", "ghost"], "val": ["v"]})
    result, report, out = prepare(
        tmp_path, source, f"data.validation.policy.unlisted_image={action}", data="voc_xml"
    )
    assert found(report, "unlisted_image") == [("JPEGImages/u.png", None)]
    assert found(report, "orphan_label") == [("ImageSets/Main/train.txt", 3)]  # 'ghost' names nothing
    if action == "error":
        assert_failed(result, out, "unlisted_image")
    else:
        assert split_of(out, "u") == ("train" if action == "warn" else None)


def sequence_tree(root: Path, sequences: int, frames: int, extra: tuple[str, ...] = ()) -> Path:
    """A flat YOLO folder (no splits) of seqNN_fMM frames; frames of one sequence look alike."""
    for seq in range(sequences):
        base = pattern(1000 + seq)
        for index in range(frames):
            stem = f"seq{seq:02d}_f{index:02d}"
            moved = np.roll(base, index, axis=1)
            save_image(root / "images" / f"{stem}.png", moved)
            write_label(root / "labels" / f"{stem}.txt", f"{seq % 2} 0.5 0.5 0.25 0.25\n")
    for stem in extra:
        save_image(root / "images" / f"{stem}.png")
        write_label(root / "labels" / f"{stem}.txt", BOX + "\n")
    return root


def write_label(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("action", actions("no_group"))
def test_no_group(tmp_path, action):
    source = sequence_tree(tmp_path / "src", 4, 3, extra=("other",))
    overrides = [r"data.split.group_pattern='^(seq\d+)_'", f"data.validation.policy.no_group={action}"]
    result, report, out = prepare(tmp_path, source, *overrides)
    assert found(report, "no_group") == [("images/other.png", None)]
    if action == "error":
        assert_failed(result, out, "no_group")
    else:
        assert split_of(out, "other") is not None


@pytest.mark.parametrize("action", actions("duplicate_image"))
def test_duplicate_image(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=BOX))
    (source / "images/train/c.png").write_bytes((source / "images/train/a.png").read_bytes())
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.duplicate_image={action}")
    assert found(report, "duplicate_image") == [("images/train/c.png", None)]
    if action == "error":
        assert_failed(result, out, "duplicate_image")
    else:
        assert (label_lines(out, "c") is not None) == (action == "warn") and label_lines(out, "a") == [BOX]


def near_copy(source: Path, original: Path, copy: Path) -> None:
    """Slightly different pixels (a few grey levels of noise): a near-duplicate, not identical."""
    pixels = np.asarray(Image.open(original)).astype(int)
    noise = np.random.default_rng(0).integers(-3, 4, pixels.shape)
    save_image(copy, np.clip(pixels + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("action", actions("near_duplicate_image"))
def test_near_duplicate_image(tmp_path, action):
    source = yolo_tree(tmp_path / "src", clean(c=BOX))
    near_copy(source, source / "images/train/a.png", source / "images/train/c.png")
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.near_duplicate_image={action}")
    assert found(report, "near_duplicate_image") == [("images/train/c.png", None)]
    assert "near-duplicate (phash distance" in report["findings"][0]["message"]
    if action == "error":
        assert_failed(result, out, "near_duplicate_image")
    else:
        assert (split_of(out, "c") is not None) == (action == "warn")


@pytest.mark.parametrize("action", actions("split_leakage"))
def test_split_leakage(tmp_path, action):
    source = yolo_tree(tmp_path / "src", {"train": {"a": BOX, "b": BOX}, "val": {"v": BOX, "w": BOX}})
    near_copy(source, source / "images/train/a.png", source / "images/val/w.png")
    result, report, out = prepare(tmp_path, source, f"data.validation.policy.split_leakage={action}")
    assert found(report, "split_leakage") == [("images/val/w.png", None)]
    assert "in val: a near-duplicate" in report["findings"][0]["message"]
    if action == "error":
        return assert_failed(result, out, "split_leakage")
    expected = {"fix": "val", "drop": None, "warn": "val"}[action]  # fix keeps a source's own split
    assert split_of(out, "w") == expected and split_of(out, "v") == "val"


def test_identical_images_in_two_splits_are_leakage_then_a_duplicate(tmp_path):
    source = yolo_tree(tmp_path / "src", {"train": {"a": BOX, "b": BOX}, "val": {"v": BOX, "w": BOX}})
    (source / "images/val/w.png").write_bytes((source / "images/train/a.png").read_bytes())
    _, report, out = prepare(tmp_path, source, "data.split.move_source_images=true")
    assert found(report, "split_leakage") == [("images/val/w.png", None)]
    assert "identical pixels" in report["findings"][0]["message"]
    assert found(report, "duplicate_image") == [("images/val/w.png", None)]  # moved to train, then dropped
    assert split_of(out, "w") is None and split_of(out, "a") == "train"


# ---- splits ------------------------------------------------------------------------------------


def test_groups_never_straddle_splits_and_planted_near_duplicates_are_caught(tmp_path):
    planted = {f"copy{seq:02d}": seq for seq in range(0, 12, 2)}  # each its own group by the pattern
    source = sequence_tree(tmp_path / "src", 12, 4)
    for copy, seq in planted.items():
        near_copy(source, source / f"images/seq{seq:02d}_f01.png", source / f"images/{copy}.png")
        write_label(source / f"labels/{copy}.txt", f"{seq % 2} 0.5 0.5 0.25 0.25\n")
    overrides = [r"data.split.group_pattern='^(seq\d+)_'", "data.split.mode=group"]
    result, report, out = prepare(tmp_path, source, *overrides, "data.validation.policy.split_leakage=warn")
    assert result.split_mode == "group" and all(n > 0 for n in result.images.values())
    assert_groups_whole(out)
    leaks = {f for f, _ in found(report, "split_leakage")}
    crossing = 0
    for copy, seq in planted.items():
        apart = split_of(out, copy) != split_of(out, f"seq{seq:02d}_f01")
        crossing += apart
        assert apart == any(copy in f or f"seq{seq:02d}_f01" in f for f in leaks), copy
    assert crossing > 0  # the planted copies did land in other splits, so the check was exercised
    _, report, out = prepare(tmp_path, source, *overrides)  # policy fix: each copy joins its sequence
    assert_groups_whole(out)
    assert all(split_of(out, c) == split_of(out, f"seq{s:02d}_f01") for c, s in planted.items())


def assert_groups_whole(out: Path) -> None:
    splits: dict[str, set[str]] = {}
    for image in out.glob("images/*/seq*.png"):
        splits.setdefault(image.stem.split("_")[0], set()).add(image.parent.name)
    assert splits and all(len(s) == 1 for s in splits.values()), splits


def test_group_split_is_deterministic_stratified_and_follows_the_ratios():
    from collections import Counter

    from pipeline.data.frames import Item

    def item(group: str, cls: int) -> Item:
        boxes = np.array([[cls, 0.1, 0.1, 0.2, 0.2]])
        bits = np.zeros((8, 8), bool)
        return Item(group, group, None, group, boxes, (8, 8), "", group, bits, "copy", False, 0)

    # 100 groups of one frame; class 1 is rare (10 groups)
    items = [item(f"g{i:03d}", 1 if i % 10 == 0 else 0) for i in range(100)]
    ratios = compose_config([]).data.split  # the defaults of conf/data/common/prepare.yaml: 70/15/15
    where = split_groups(items, ratios, seed=0)
    assert where == split_groups(items, ratios, seed=0)
    assert where != split_groups(items, ratios, seed=1)
    assert Counter(where.values()) == {"train": 70, "val": 15, "test": 15}
    rare = Counter(where[f"g{i:03d}"] for i in range(0, 100, 10))
    assert rare["train"] == 7 and rare["val"] >= 1 and rare["test"] >= 1


def test_without_source_splits_even_three_groups_fill_train_val_and_test(tmp_path):
    source = sequence_tree(tmp_path / "src", 3, 2)
    result, _, out = prepare(tmp_path, source, r"data.split.group_pattern='^(seq\d+)_'")
    assert result.split_mode == "group" and result.images == {"train": 2, "val": 2, "test": 2}
    assert_groups_whole(out)


def test_near_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[50] = hashes[7] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[90] = hashes[7]
    brute = {}
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            distance = int(np.bitwise_count(hashes[i] ^ hashes[j]))
            if distance <= 4:
                brute[(i, j)] = distance
    assert near_pairs(hashes, 4) == brute and brute[(7, 50)] == 3 and brute[(7, 90)] == 0


# ---- readers -----------------------------------------------------------------------------------


def test_roboflow_data_yaml_with_relative_paths_and_an_unlisted_test_folder(tmp_path):
    root = tmp_path / "roboflow"
    for split, stems in {"train": ["a", "b"], "valid": ["v"], "test": ["t"]}.items():
        for stem in stems:
            save_image(root / split / "images" / f"{stem}.jpg")
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            (root / split / "labels" / f"{stem}.txt").write_text("1 0.5 0.5 0.25 0.25")  # no final newline
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\n\nnc: 2\nnames: ['cat', 'dog']"
    )
    result, report, out = prepare(tmp_path, root)
    assert result.split_mode == "source" and result.images == {"train": 2, "val": 1, "test": 1}
    assert report["findings"] == [] and label_lines(out, "t") == ["1 0.500000 0.500000 0.250000 0.250000"]


def test_yolo_without_data_yaml_reads_folders_and_classes_txt(tmp_path):
    root = tmp_path / "plain"
    for split, stem in (("train", "a"), ("train", "b"), ("val", "v")):
        save_image(root / "images" / split / f"{stem}.png")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{stem}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "classes.txt").write_text("dog\ncat\n")  # the source's id 0 is dog, the target's id 1
    result, report, out = prepare(tmp_path, root)
    assert result.split_mode == "source" and report["findings"] == []
    assert label_lines(out, "a") == ["1 0.500000 0.500000 0.250000 0.250000"]


def coco_doc(
    image_rows: list[tuple[int, str]], box_rows: list[tuple[int, int, int, list]], **keys: str
) -> dict:
    """COCO JSON; `keys` renames keys the way some exporters do (annotations -> annotation ...)."""
    k = {"images": "images", "annotations": "annotations", "file_name": "file_name"} | keys
    return {
        k["images"]: [
            {"id": i, k["file_name"]: name, "width": SIZE[0], "height": SIZE[1]} for i, name in image_rows
        ],
        k["annotations"]: [
            {"id": a, "image_id": i, "category_id": c, "bbox": bbox, "iscrowd": 0}
            for a, i, c, bbox in box_rows
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def test_coco_json_per_split_with_backgrounds_and_orphans(tmp_path):
    root = tmp_path / "coco"
    for stem in ("a", "b", "e", "v", "loose"):
        save_image(root / "images" / f"{stem}.png")
    train = coco_doc(
        [(1, "a.png"), (2, "b.png"), (3, "e.png"), (4, "gone.png")],
        [
            (10, 1, 2, [16, 12, 32, 24]),
            (11, 2, 1, [0, 0, 8, 8]),
            (12, 9, 1, [0, 0, 4, 4]),
            (13, 4, 1, [1, 1, 2, 2]),
        ],
    )
    val = coco_doc([(1, "v.png")], [(20, 1, 1, [16, 12, 32, 24]), (21, 1, 7, [1, 1, 9, 9])])
    (root / "annotations").mkdir()
    (root / "annotations/instances_train.json").write_text(json.dumps(train))
    (root / "annotations/instances_val.json").write_text(json.dumps(val))
    policy = "data.validation.policy.class_out_of_range=drop"
    result, report, out = prepare(tmp_path, root, policy, data="coco_json")
    assert result.split_mode == "source" and result.images["train"] == 3 and result.images["val"] == 1
    assert label_lines(out, "a") == ["1 0.500000 0.500000 0.500000 0.500000"]  # bbox x,y,w,h in pixels
    assert found(report, "background_image") == [("annotations/instances_train.json", None)]
    assert found(report, "missing_label") == [("images/loose.png", None)]
    orphans = [f["message"] for f in report["findings"] if f["kind"] == "orphan_label"]
    assert any("gone.png" in m for m in orphans) and any("image_id=9" in m for m in orphans)
    assert [f["message"] for f in report["findings"] if f["kind"] == "class_out_of_range"] == [
        "annotation id=21: class id 7 not in 1..2"
    ]


def test_coco_with_only_val_and_test_says_why_it_resplits_and_maps_its_splits_without_a_plus(tmp_path):
    """A published dataset with official val and test JSON and no train: re-split by group with the
    reason in the split summary; mapped with data.coco.files, the source's splits are kept."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, first in (("val", 1), ("test", 4)):
        rows = [(i, f"{split}{i}.png") for i in range(first, first + 3)]
        for _, name in rows:
            save_image(root / "images" / name)
        boxes = [(i, i, 1, [16, 12, 32, 24]) for i, _ in rows]
        (root / f"annotations/instances_{split}.json").write_text(json.dumps(coco_doc(rows, boxes)))
    result, _, _ = prepare(tmp_path, root, data="coco_json")
    assert result.split_mode == "group"
    assert "the source's own splits (test, val) lack train or val" in result.split_origins["train"]
    assert "data.coco.files={train: a.json, val: b.json}" in result.split_origins["train"]
    with pytest.raises(DataError, match=r"\(found: test, val\)\. To train on the source's own splits"):
        base = [
            "data=coco_json",
            f"data.path={root}",
            "classes.names=[cat,dog]",
            f"paths.prepared={tmp_path}/p",
        ]
        run(compose_config([*base, "sensor=rgb", "data.split.mode=source"]))
    mapping = "data.coco.files={train: annotations/instances_test.json, val: annotations/instances_val.json}"
    kept, _, _ = prepare(tmp_path, root, mapping, data="coco_json")
    assert kept.split_mode == "source" and kept.images["train"] == 3 and kept.images["val"] == 3


def test_coco_images_in_per_split_folders_follow_their_json_and_a_wrong_folder_fails(tmp_path):
    """test.json's images in test/, mapped to train: found there, not looked for in train/. Most of a
    JSON's images missing is a wrong folder: an error, not `status: ok` on the few found."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, first in (("val", 1), ("test", 4)):
        rows = [(i, f"{split}{i}.png") for i in range(first, first + 3)]
        for _, name in rows:
            save_image(root / split / name)
        boxes = [(i, i, 1, [16, 12, 32, 24]) for i, _ in rows]
        (root / f"annotations/{split}.json").write_text(json.dumps(coco_doc(rows, boxes)))
    mapping = "data.coco.files={train: annotations/test.json, val: annotations/val.json}"
    result, report, _ = prepare(tmp_path, root, mapping, data="coco_json")
    assert result.split_mode == "source" and (result.images["train"], result.images["val"]) == (3, 3)
    assert found(report, "orphan_label") == []
    wrong = [
        "data=coco_json",
        f"data.path={root}",
        mapping,
        "data.coco.image_dir=val",
        "classes.names=[cat,dog]",
    ]
    with pytest.raises(
        DataError, match=r"test\.json: 3 of the 3 images it lists were not found in data\.coco"
    ):
        run(compose_config([*wrong, "sensor=rgb", f"paths.prepared={tmp_path}/p"]))


def test_coco_json_with_renamed_keys_and_zero_based_ids_without_categories(tmp_path):
    root = tmp_path / "export"
    names = [f"f{i}.png" for i in range(6)]
    for name in names:
        save_image(root / name)
    doc = coco_doc(
        list(enumerate(names)),
        [(i, i, i % 2, [8, 8, 16, 16]) for i in range(6)],
        annotations="annotation",
        file_name="filename",
    )
    del doc["categories"]  # ids then index classes.names, from category_id_base
    (root / "export.json").write_text(json.dumps(doc))
    overrides = [
        "data.coco.keys.annotations=annotation",
        "data.coco.keys.file_name=filename",
        "data.coco.category_id_base=0",
    ]
    result, report, out = prepare(tmp_path, root / "export.json", *overrides, data="coco_json")
    assert report["findings"] == [] and result.split_mode == "group" and sum(result.images.values()) == 6
    assert result.per_class == {"cat": 3, "dog": 3}
    assert label_lines(out, "f1") == ["1 0.250000 0.333333 0.250000 0.333333"]


def test_coco_json_with_unexpected_keys_names_the_setting(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"imgs": [], "annotations": []}))
    with pytest.raises(DataError, match=r"data\.coco\.keys\.images"):
        run(
            compose_config(
                ["data=coco_json", f"data.path={tmp_path / 'x.json'}", f"paths.prepared={tmp_path}/p"]
            )
        )


def test_voc_without_split_lists_is_split_by_group(tmp_path):
    files = {f"s{i}": voc_xml(f"s{i}.png", SIZE, [("cat", (5, 5, 20, 20))]) for i in range(6)}
    source = voc_tree(tmp_path / "voc", files)
    result, report, _ = prepare(tmp_path, source, data="voc_xml")
    assert result.split_mode == "group" and report["findings"] == [] and all(result.images.values())


def test_voc_split_lists_can_be_named_and_a_missing_one_is_named_in_the_error(tmp_path):
    """A VOC export with only val.txt and test.txt: data.voc.lists trains on its test list."""
    source = voc_tree(tmp_path / "voc", clean_voc(), {"test": ["a", "b"], "val": ["v"]})
    result, _, _ = prepare(tmp_path, source, data="voc_xml")
    assert result.split_mode == "group" and "data.voc.lists=" in result.split_origins["train"]
    lists = "data.voc.lists={train: test.txt, val: val.txt}"
    result, report, out = prepare(tmp_path, source, lists, data="voc_xml")
    assert result.split_mode == "source" and report["findings"] == []
    assert (split_of(out, "a"), split_of(out, "b"), split_of(out, "v")) == ("train", "train", "val")
    with pytest.raises(DataError, match=r"data.voc.lists names train: tets.txt, not found .*'test.txt'"):
        wrong = "data.voc.lists={train: tets.txt, val: val.txt}"
        run(compose_config(["data=voc_xml", f"data.path={source}", wrong, f"paths.prepared={tmp_path}/p"]))


# ---- thermal frames ----------------------------------------------------------------------------


def thermal_tree(root: Path, frames: dict[str, np.ndarray], suffix: str = ".png") -> Path:
    for index, (stem, counts) in enumerate(frames.items()):
        split = "val" if index == len(frames) - 1 else "train"
        Image.fromarray(counts).save(save_dir(root / "images" / split) / f"{stem}{suffix}")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{stem}.txt").write_text(BOX + "\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [cat, dog]\n")
    return root


def save_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def ramp(low: int, high: int, seed: int) -> np.ndarray:
    """A 16-bit frame whose counts span low..high, with a seeded texture so frames differ."""
    rng = np.random.default_rng(seed)
    values = np.linspace(low, high, SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0])
    return rng.permuted(values, axis=1).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_frames_become_8_bit_grey_by_percentile_stretch_per_frame(tmp_path, suffix):
    frames = {"cold": ramp(20000, 21000, 1), "warm": ramp(30000, 31000, 2), "v": ramp(25000, 26000, 3)}
    source = thermal_tree(tmp_path / "src", frames, suffix)
    _, _, out = prepare(tmp_path, source, "sensor=thermal")
    cold, warm = (load_image(out / f"images/train/{s}.png", 3) for s in ("cold", "warm"))  # as trained
    assert cold.dtype == np.uint8 and cold.shape == (SIZE[1], SIZE[0], 3)
    assert (cold[..., 0] == cold[..., 2]).all() and cold.min() == 0 and cold.max() == 255
    assert Image.open(out / "images/train/cold.png").mode == "L"  # stored as one grey channel
    assert abs(cold.mean() - warm.mean()) < 2  # each frame stretched on its own (like a camera's AGC)
    manifest = read_json(out / "manifest.json")
    assert manifest["placed"] == {"converted": 3} and manifest["normalize"]["frames"] == 3


def test_dataset_scope_keeps_frames_comparable_and_fixed_range_maps_counts(tmp_path):
    frames = {"cold": ramp(20000, 21000, 1), "warm": ramp(30000, 31000, 2), "v": ramp(25000, 26000, 3)}
    source = thermal_tree(tmp_path / "src", frames)
    _, _, out = prepare(tmp_path, source, "sensor=thermal", "data.normalize.scope=dataset")
    cold, warm = (np.asarray(Image.open(out / f"images/train/{s}.png")) for s in ("cold", "warm"))
    assert warm.mean() - cold.mean() > 150
    fixed = [
        "data.normalize.method=fixed",
        "data.normalize.fixed_low=20000",
        "data.normalize.fixed_high=40000",
    ]
    _, _, out = prepare(tmp_path, source, "sensor=thermal", *fixed)
    cold = np.asarray(Image.open(out / "images/train/cold.png"))
    assert cold.min() == 0 and cold.max() == round(1000 * 255 / 20000)


def test_single_channel_sensor_writes_grey_images_and_says_so_in_data_yaml(tmp_path):
    source = thermal_tree(
        tmp_path / "src", {"a": ramp(0, 4000, 1), "b": ramp(0, 4000, 2), "v": ramp(0, 9, 3)}
    )
    _, _, out = prepare(tmp_path, source, "sensor=thermal", "sensor.channels=1")
    assert Image.open(out / "images/train/a.png").mode == "L"
    assert yaml.safe_load((out / "data.yaml").read_text())["channels"] == 1
