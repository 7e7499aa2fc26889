"""openvino-int8: NNCF post-training quantization of the tiny trained model, through the export stage."""

from __future__ import annotations

import pytest

from pipeline.core.io import read_json
from pipeline.deploy import export
from pipeline.model import parity
from pipeline.model.inference import format_of
from pipeline.model.info import read_model_info


def test_int8_export_is_quantized_gated_and_records_the_float_head(project, tmp_path):
    # a bound of 1 holds for any two mAPs in [0, 1]: the verdict cannot depend on what the tiny model learnt
    params = project.params(tmp_path, "export.formats=[openvino-int8]", "export.max_map_drop_int8=1.0")
    assert export.main(["--params", str(params)]) == 0

    folder = tmp_path / "export" / "models" / "model_int8_openvino_model"
    assert format_of(folder) == "openvino-int8"
    assert "FakeQuantize" in next(folder.glob("*.xml")).read_text()  # NNCF's INT8 quantize-dequantize pairs
    meta = read_json(folder.with_name(f"{folder.name}.json"))
    assert meta["format"] == "openvino-int8" and "nncf" in meta["versions"]
    kept = meta["quantization"]["higher_precision_ops"]
    assert kept and any("Sigmoid" in name or "dfl" in name for name in kept)
    assert meta["quantization"]["calibration_images"] > 0
    entry = read_json(tmp_path / "export" / "parity.json")["formats"]["openvino-int8"]
    assert entry["passed"] and entry["max_abs_diff"] is not None  # reported, not bounded

    from pipeline.deploy import benchmark

    timed, _ = benchmark.candidates(project.config(tmp_path))
    assert "openvino-int8" in [candidate.name for candidate in timed]  # the benchmark stage times it too


def test_int8_gate_bounds_only_the_map_with_its_own_key(project, tmp_path):
    tolerance = export.tolerance(project.config(tmp_path, "export.max_map_drop_int8=0.01"), "openvino-int8")
    assert tolerance.max_abs_diff is None
    assert parity.judge("pytorch", 4, diff=0.5, expected=0.40, produced=0.395, tolerance=tolerance) is None
    failure = parity.judge("pytorch", 4, diff=0.5, expected=0.40, produced=0.30, tolerance=tolerance)
    assert "differs by 0.1000 (tolerance 0.01) [export.max_map_drop_int8=0.01]" in failure
    assert (
        export.tolerance(project.config(tmp_path), "openvino").max_abs_diff == 0.01
    )  # float formats keep it


# ---- accuracy control: nncf.quantize_with_accuracy_control on the project's own mAP ----------------

CONTROLLED = ("export.formats=[openvino-int8]", "export.int8.accuracy_control=true")


def test_accuracy_control_records_the_float_layers_and_the_accuracy_before_and_after(project, tmp_path):
    # max_drop 1 holds for any two mAPs: NNCF stops after its first validation and reverts nothing
    params = project.params(tmp_path, *CONTROLLED, "export.max_map_drop_int8=1.0")
    assert export.main(["--params", str(params)]) == 0

    folder = tmp_path / "export" / "models" / "model_int8_openvino_model"
    meta = read_json(folder.with_name(f"{folder.name}.json"))["quantization"]
    assert meta["method"] == "nncf.quantize_with_accuracy_control" and meta["preset"] == "mixed"
    control = meta["accuracy_control"]
    assert control["metric"] == "mAP50-95" and control["max_drop"] == 1.0
    assert control["validation_images"] == 4  # the tiny val split holds 4 images ...
    assert control["overlaps_parity_images"] is True  # ... all of them also parity images, and it says so
    assert 0.0 <= control["map_float"] <= 1.0 and 0.0 <= control["map_int8"] <= 1.0
    assert control["drop"] == round(control["map_float"] - control["map_int8"], 6)
    assert control["reached"] is True and control["reverted_layers"] == []
    # read off the saved graph: the DFL convolution (head scope) is the one layer left in float
    assert [name for name in meta["higher_precision_layers"] if "dfl" in name] == meta[
        "higher_precision_layers"
    ]
    assert meta["int8_layers"] > 0 and meta["seconds"] > 0
    entry = read_json(tmp_path / "export" / "parity.json")["formats"]["openvino-int8"]
    assert entry["passed"] and entry["map_candidate"] is not None


def test_an_impossible_bound_refuses_the_controlled_int8_model(project, tmp_path, monkeypatch):
    """A negative bound no pair of mAPs can meet (the config refuses one, so it is set on the stage's
    tolerance): the parity gate must refuse, name its numbers and its key, and publish nothing."""
    real = export.tolerance

    def impossible(cfg, fmt):
        bound = real(cfg, fmt)
        return parity.Tolerance(None, -1.0, bound.source) if fmt == export.INT8 else bound

    monkeypatch.setattr(export, "tolerance", impossible)
    params = project.params(tmp_path, *CONTROLLED, "export.max_map_drop_int8=1.0")
    with pytest.raises(export.ParityError) as refused:
        export.main(["--params", str(params)])
    message = str(refused.value)
    assert "openvino-int8 (model_int8_openvino_model): mAP50-95" in message
    assert "(tolerance -1.0) [export.max_map_drop_int8=1.0, also accuracy control's max_drop]" in message
    assert not (tmp_path / "export" / "models" / "model_int8_openvino_model").exists()
    assert read_json(tmp_path / "export" / "parity.json")["formats"]["openvino-int8"]["passed"] is False


def test_accuracy_control_that_falls_short_refuses_with_its_numbers():
    passed = parity.Parity("openvino-int8", "m", "pytorch", 4, 0.1, 0.5, 0.49, failure=None)
    short = {
        "validation_images": 16,
        "map_float": 0.5,
        "map_int8": 0.45,
        "drop": 0.05,
        "max_drop": 0.01,
        "max_reverted_layers": 2,
        "reverted_layers": ["a", "b"],
        "reached": False,
    }
    failure = export.accuracy_control_failure(passed, {"accuracy_control": short}).failure
    assert failure == (
        "accuracy control left mAP50-95 0.4500 vs float 0.5000 on 16 validation images, a drop of 0.0500 "
        "(max_drop 0.01) after reverting 2 layer(s) (export.int8.max_reverted_layers=2)"
    )
    assert export.accuracy_control_failure(passed, {"accuracy_control": {**short, "reached": True}}) is passed
    assert export.accuracy_control_failure(passed, {"accuracy_control": None}) is passed


def test_the_validation_function_scores_with_the_project_protocol(project, tmp_path):
    """On the float OpenVINO model NNCF's validation function gives what the parity check measures."""
    import openvino as ov

    from pipeline.deploy import int8
    from pipeline.model.inference import open_runner
    from pipeline.model.scoring import measure_map

    params = project.params(tmp_path, "export.formats=[openvino]")
    assert export.main(["--params", str(params)]) == 0
    folder = tmp_path / "export" / "models" / "model_openvino_model"
    cfg = project.config(tmp_path, "export.int8.accuracy_control=true", "export.int8.validation_images=3")
    info = read_model_info(project.train / "weights" / "best.pt")
    control = int8.accuracy_control(cfg, info.channels)
    assert len(control.samples) == 3 and control.max_drop == cfg.export.max_map_drop_int8
    compiled = ov.compile_model(next(folder.glob("*.xml")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = list(zip(control.samples, control.images, strict=True))
    overall, per_item = int8.validation_function(info)(compiled, items)
    expected = measure_map(open_runner(folder, threads=2), control.samples, control.images, info)
    assert overall == pytest.approx(expected.map50_95, abs=1e-6) and len(per_item) == 3
