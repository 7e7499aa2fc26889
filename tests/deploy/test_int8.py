"""openvino-int8: NNCF post-training quantization of the tiny trained model, through the export stage."""

from __future__ import annotations

from pipeline.core.io import read_json
from pipeline.deploy import export
from pipeline.model import parity
from pipeline.model.inference import format_of


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
